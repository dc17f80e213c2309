//! ns per decision for the assignment core, native.
//!
//! `decide` is what the filter runs per request (identity lookup, match
//! conditions, hashing, force header); `decide+apply` adds the header
//! writes into a sink that only counts them; `decide+halts` is `decide`
//! with one variant of each experiment halted by the sidecar (its users
//! routed like control).
//!
//! Native only (criterion is not a wasm32 dependency); on wasm32 this is an
//! empty program so `cargo clippy --all-targets --target wasm32-wasip1`
//! builds.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
criterion::criterion_main!(native::benches);

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use abmesh_filter::{Halts, HeaderSink, Plan, RequestHeaders, Slot};
    use criterion::{black_box, criterion_group, BenchmarkId, Criterion};

    struct Req<'a> {
        headers: &'a [(&'a str, &'a [u8])],
    }

    impl RequestHeaders for Req<'_> {
        fn get(&self, _slot: Slot, name: &str) -> Option<&[u8]> {
            self.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
        }
    }

    struct Count(usize);
    impl HeaderSink for Count {
        fn set(&mut self, _: &str, v: &[u8]) {
            self.0 += v.len();
        }
        fn remove(&mut self, _: &str) {
            self.0 += 1;
        }
    }

    const ONE: &str = r#"{"experiments": [
  {"name": "ranker", "variants": [
    {"name": "control", "weight": 50, "cluster": "ranker-v1"},
    {"name": "treatment", "weight": 50, "cluster": "ranker-v2"}]}]}"#;

    const THREE: &str = r#"{"experiments": [
  {"name": "ranker", "layer": {"name": "models", "range_percent": [0, 50]},
   "variants": [
    {"name": "control", "weight": 50, "cluster": "ranker-v1"},
    {"name": "treatment", "weight": 50, "cluster": "ranker-v2"}]},
  {"name": "reranker", "layer": {"name": "models", "range_percent": [50, 100]},
   "variants": [
    {"name": "control", "weight": 1, "cluster": "ranker-v1"},
    {"name": "treatment", "weight": 1, "cluster": "ranker-v3"}]},
  {"name": "banner", "traffic_percent": 80,
   "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}, {"name": "c", "weight": 1}]}]}"#;

    fn bench(c: &mut Criterion) {
        let mut g = c.benchmark_group("decision");
        let ids: Vec<String> = (0..1024).map(|i| format!("user-{i:08}")).collect();
        for (label, json) in [("1 experiment", ONE), ("3 experiments", THREE)] {
            let plan = Plan::from_json(json.as_bytes()).unwrap();
            let mut d = plan.decisions();
            let mut path_buf = Vec::with_capacity(4096);
            g.bench_with_input(BenchmarkId::new("decide", label), &plan, |b, plan| {
                let mut i = 0usize;
                b.iter(|| {
                    let id = ids[i & 1023].as_bytes();
                    i += 1;
                    let headers = [(":path", &b"/predict"[..]), ("x-user-id", id)];
                    black_box(plan.decide(&Req { headers: &headers }, &mut d));
                })
            });
            let mut halts = Halts::new(&plan);
            for (e, exp) in plan.experiments().iter().enumerate() {
                halts.halt(e, (exp.control() + 1) % exp.variants().len());
            }
            g.bench_with_input(BenchmarkId::new("decide+halts", label), &plan, |b, plan| {
                let mut i = 0usize;
                b.iter(|| {
                    let id = ids[i & 1023].as_bytes();
                    i += 1;
                    let headers = [(":path", &b"/predict"[..]), ("x-user-id", id)];
                    black_box(plan.decide_with_halts(&Req { headers: &headers }, &halts, &mut d));
                })
            });
            g.bench_with_input(BenchmarkId::new("decide+apply", label), &plan, |b, plan| {
                let mut i = 0usize;
                let mut sink = Count(0);
                b.iter(|| {
                    let id = ids[i & 1023].as_bytes();
                    i += 1;
                    let headers = [(":path", &b"/predict"[..]), ("x-user-id", id)];
                    let req = Req { headers: &headers };
                    plan.decide(&req, &mut d);
                    plan.apply(&d, &req, &mut path_buf, &mut sink);
                });
                black_box(sink.0);
            });
        }
        g.finish();
    }

    criterion_group!(benches, bench);
}
