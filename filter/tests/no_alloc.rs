//! The per-request path allocates nothing: a counting global allocator sees
//! zero allocations across thousands of decisions (decide + apply) for a
//! config with 3 experiments in 2 layers, match conditions, cookie identity
//! fallback, the force header and an allowlist, with variants halted by the
//! sidecar (halted users routed like control), bandit weights of a later
//! period in force, and health counting.
#![cfg(not(target_arch = "wasm32"))]

use abmesh_filter::health::HealthTable;
use abmesh_filter::{
    Allocation, Assignment, Decisions, Halts, HeaderSink, Plan, RequestHeaders, Slot, Source,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(|c| c.get())
}

/// A proxy-wasm serialized header map, as the glue reads in bulk mode.
struct Serialized(Vec<u8>);
impl RequestHeaders for Serialized {
    fn get(&self, _: Slot, name: &str) -> Option<&[u8]> {
        abmesh_filter::header_map::find(&self.0, name.as_bytes())
    }
    fn cookie(&self, _: Slot, name: &str, cookie: &[u8]) -> Option<&[u8]> {
        abmesh_filter::header_map::values(&self.0, name.as_bytes())
            .find_map(|h| abmesh_filter::identity::cookie_value(h, cookie))
    }
}

fn serialize(pairs: &[(&str, &[u8])]) -> Serialized {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    Serialized(out)
}

struct Req<'a>(&'a [(&'a str, &'a [u8])]);
impl RequestHeaders for Req<'_> {
    fn get(&self, _: Slot, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
    fn cookie(&self, _: Slot, name: &str, cookie: &[u8]) -> Option<&[u8]> {
        self.0
            .iter()
            .filter(|(n, _)| *n == name)
            .find_map(|(_, v)| abmesh_filter::identity::cookie_value(v, cookie))
    }
}

/// Sums lengths so the writes are not optimized away; allocates nothing.
struct Sink(usize);
impl HeaderSink for Sink {
    fn set(&mut self, name: &str, value: &[u8]) {
        self.0 += name.len() + value.len();
    }
    fn remove(&mut self, name: &str) {
        self.0 += name.len();
    }
}

const CONFIG: &str = r#"{
  "identity": [{"header": "x-user-id"}, {"cookie": "uid"}],
  "force_header": "x-abmesh-force",
  "echo_header": "x-abmesh-assignment",
  "experiments": [
    {"name": "ranker", "layer": {"name": "models", "range_percent": [0, 50]},
     "match": {"path_prefix": "/v2/models/ranker/", "methods": ["POST", "GET"]},
     "allowlist": {"qa-user": "treatment"},
     "variants": [
       {"name": "control", "weight": 50, "cluster": "ranker-v1", "path_prefix": "/v2/models/ranker/versions/1/"},
       {"name": "treatment", "weight": 50, "cluster": "ranker-v2", "path_prefix": "/v2/models/ranker/versions/2/", "authority": "ranker-v2.models.svc"}]},
    {"name": "reranker", "layer": {"name": "models", "range_percent": [50, 100]},
     "match": {"headers": [{"name": "x-tier", "value": "gold"}]},
     "variants": [{"name": "a", "weight": 1, "cluster": "rr-a"}, {"name": "b", "weight": 1, "cluster": "rr-b"}]},
    {"name": "banner", "traffic_percent": 80, "bandit": {"metric": "click"},
     "variants": [{"name": "x", "weight": 1}, {"name": "y", "weight": 1}, {"name": "z", "weight": 2}]}
  ]
}"#;

#[test]
fn deciding_allocates_nothing() {
    let plan = Plan::from_json(CONFIG.as_bytes()).unwrap();
    assert_eq!(plan.experiments().len(), 3);
    let mut decisions = plan.decisions();
    let mut path_buf = Vec::with_capacity(8192);
    let mut echo_buf = Vec::with_capacity(256);
    let mut sink = Sink(0);

    // Ids and requests are built before counting starts.
    let ids: Vec<Vec<u8>> = (0..2000u32)
        .map(|i| {
            let mut id = format!("user-{i}").into_bytes();
            if i % 7 == 0 {
                id.push(0xff); // not UTF-8
            }
            id
        })
        .collect();
    let cookies: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| [&b"lang=en; uid="[..], id].concat())
        .collect();
    let long_path = format!("/v2/models/ranker/infer?{}", "q".repeat(4000));
    let serialized: Vec<Serialized> = ids
        .iter()
        .take(500)
        .map(|id| {
            serialize(&[
                (":path", b"/v2/models/ranker/infer"),
                (":method", b"POST"),
                ("user-agent", b"wrk"),
                ("x-tier", b"gold"),
                ("x-user-id", id),
            ])
        })
        .collect();

    let mut ring = abmesh_filter::exposures::ExposureRing::new(1000);
    let mut recent = abmesh_filter::exposures::RecentExposures::new(1024);
    let mut halts = Halts::new(&plan);
    assert!(halts.halt(0, 1)); // ranker's treatment
    assert!(halts.halt(2, 2)); // banner's z
    let mut allocation = Allocation::new(&plan);
    assert_eq!(allocation.set(2, 3, &[0.25, 0.6, 0.15]), Ok(true));
    let mut in_period = 0u64;
    let mut health = HealthTable::new(&plan);
    let mut packed = [0u16; 3];
    let mut halted = 0u64;
    let start = allocations();
    let mut decided = 0u64;
    for (i, (id, cookie)) in ids.iter().zip(&cookies).enumerate() {
        let path: &[u8] = if i % 3 == 0 {
            long_path.as_bytes()
        } else {
            b"/v2/models/ranker/infer"
        };
        let with_header: [(&str, &[u8]); 4] = [
            (":path", path),
            (":method", b"POST"),
            ("x-user-id", id),
            ("x-tier", b"gold"),
        ];
        // The identity is in the second of two `cookie` headers (HTTP/1.1).
        let with_cookie: [(&str, &[u8]); 5] = [
            (":path", b"/other"),
            (":method", b"GET"),
            ("cookie", b"theme=dark"),
            ("cookie", cookie),
            ("x-abmesh-force", b"banner=z, ranker=control"),
        ];
        let anonymous: [(&str, &[u8]); 2] = [(":path", path), (":method", b"POST")];
        for headers in [&with_header[..], &with_cookie[..], &anonymous[..]] {
            let req = Req(headers);
            plan.decide_with(&req, &halts, &allocation, &mut decisions);
            plan.apply(&decisions, &req, &mut path_buf, &mut sink);
            plan.write_echo(&decisions, &mut echo_buf);
            // Health, as the glue records it.
            for (e, v) in decisions.exposures() {
                health.record_request(e, v);
            }
            halted += decisions
                .assignments()
                .iter()
                .filter(|a| {
                    matches!(
                        a,
                        Assignment::Variant {
                            source: Source::Halted,
                            ..
                        }
                    )
                })
                .count() as u64;
            if decisions.has_exposure() {
                Decisions::pack_exposures(decisions.assignments(), &mut packed);
                for (e, &p) in packed.iter().enumerate() {
                    if p > 0 {
                        health.record_response(
                            e,
                            usize::from(p - 1),
                            200 + (i as u32 % 4) * 100,
                            i as u64 * 97,
                        );
                    }
                }
            }
            // What the glue does when exposures are shipped to the sidecar.
            if let Some(user) = plan.identity(&req) {
                for (e, a) in decisions.assignments().iter().enumerate() {
                    if let Some(v) = a.exposure() {
                        let period = decisions.period(e);
                        in_period += u64::from(period == 3);
                        if recent.first_time(e, v, period, user) {
                            ring.push_in_period(1, e, v, period, user);
                        }
                    }
                }
            }
            decided += 1;
        }
        let req = Req(&[("x-user-id", b"qa-user")]);
        plan.decide(&req, &mut decisions);
        plan.apply(&decisions, &req, &mut path_buf, &mut sink);
        // What `abmesh assign --weights` does.
        plan.assign_user_with(id, &allocation, &mut decisions);
        decided += 1;
    }
    for req in &serialized {
        plan.decide_with_halts(req, &halts, &mut decisions);
        plan.apply(&decisions, req, &mut path_buf, &mut sink);
        decided += 1;
    }
    let allocated = allocations() - start;
    assert!(sink.0 > 0);
    assert!(halted > 100, "the halted path ran ({halted})");
    assert!(in_period > 100, "the bandit's weights ran ({in_period})");
    assert!(!health.is_empty());
    assert!(ring.len() == 1000 && ring.dropped() > 0, "the ring wrapped");
    assert_eq!(
        allocated, 0,
        "{allocated} allocations over {decided} decisions"
    );
}

#[test]
fn the_counter_does_count() {
    // Guards against a counting allocator that silently sees nothing.
    let start = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert_eq!(allocations() - start, 1);
    drop(v);
}
