//! Statistical and structural properties of assignment (DESIGN.md,
//! "Assignment"): stickiness, uniformity, independence across layers,
//! exclusivity inside a layer, monotone ramps, and enrollment that weight
//! changes cannot move.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use abmesh_filter::{Assignment, Plan};
use common::{two_variants, Req};
use proptest::prelude::*;

fn plan(json: &str) -> Plan {
    Plan::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{json}"))
}

fn single(traffic: f64, weights: &[f64]) -> Plan {
    let variants: Vec<String> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!(r#"{{"name": "v{i}", "weight": {w}}}"#))
        .collect();
    plan(&format!(
        r#"{{"experiments": [{{"name": "exp", "traffic_percent": {traffic}, "variants": [{}]}}]}}"#,
        variants.join(",")
    ))
}

fn assign(plan: &Plan, id: &[u8]) -> Vec<Assignment> {
    let mut d = plan.decisions();
    plan.assign_user(id, &mut d);
    d.assignments().to_vec()
}

/// Upper/lower critical values of chi-square with `df` degrees of freedom at
/// tail probability 1e-4 (Wilson–Hilferty; accurate to <0.1 % for large df).
fn chi2_bounds(df: f64) -> (f64, f64) {
    let z = 3.719; // Φ⁻¹(1 − 1e-4)
    let c = |z: f64| df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
    (c(-z), c(z))
}

fn chi2(observed: &[u64], expected: &[f64]) -> f64 {
    observed
        .iter()
        .zip(expected)
        .map(|(&o, &e)| (o as f64 - e).powi(2) / e)
        .sum()
}

#[test]
fn buckets_and_variants_are_uniform_over_a_million_ids() {
    use abmesh_filter::hash::{BucketKey, Purpose, BUCKETS};
    const N: u64 = 1_000_000;
    let key = BucketKey::derive(Purpose::Variant, "exp");
    let weights = [20.0, 30.0, 50.0];
    let p = single(100.0, &weights);
    let mut buckets = vec![0u64; BUCKETS as usize];
    let mut variants = [0u64; 3];
    let mut d = p.decisions();
    for i in 0..N {
        let id = format!("user-{i}");
        buckets[key.bucket(id.as_bytes()) as usize] += 1;
        p.assign_user(id.as_bytes(), &mut d);
        variants[d.assignments()[0].variant().unwrap()] += 1;
    }
    let expected = vec![N as f64 / f64::from(BUCKETS); BUCKETS as usize];
    let (lo, hi) = chi2_bounds(f64::from(BUCKETS - 1));
    let x = chi2(&buckets, &expected);
    assert!(lo < x && x < hi, "bucket chi2 {x} outside ({lo}, {hi})");

    let expected: Vec<f64> = weights.iter().map(|w| N as f64 * w / 100.0).collect();
    let x = chi2(&variants, &expected);
    let (_, hi) = chi2_bounds(2.0);
    assert!(x < hi, "variant chi2 {x} >= {hi}: {variants:?}");
}

#[test]
fn traffic_share_is_respected() {
    const N: u64 = 200_000;
    let p = single(12.5, &[1.0, 1.0]);
    let enrolled = (0..N)
        .filter(|i| {
            assign(&p, format!("u{i}").as_bytes())[0]
                .variant()
                .is_some()
        })
        .count() as f64;
    let expected = N as f64 * 0.125;
    let sd = (N as f64 * 0.125 * 0.875).sqrt();
    assert!(
        (enrolled - expected).abs() < 5.0 * sd,
        "{enrolled} vs {expected}"
    );
}

#[test]
fn experiments_in_different_layers_are_independent() {
    const N: u64 = 200_000;
    let p = plan(&format!(
        r#"{{"experiments": [
            {{"name": "a", "layer": {{"name": "one"}}, "variants": {v}}},
            {{"name": "b", "layer": {{"name": "two"}}, "variants": {v}}},
            {{"name": "c", "variants": {v}}}]}}"#,
        v = two_variants((1.0, 1.0))
    ));
    // 2x2 tables of (a, b) and (a, c); chi-square test of independence.
    let mut ab = [[0u64; 2]; 2];
    let mut ac = [[0u64; 2]; 2];
    for i in 0..N {
        let a = assign(&p, format!("user:{i}").as_bytes());
        let (x, y, z) = (
            a[0].variant().unwrap(),
            a[1].variant().unwrap(),
            a[2].variant().unwrap(),
        );
        ab[x][y] += 1;
        ac[x][z] += 1;
    }
    for table in [ab, ac] {
        let n = N as f64;
        let rows = [table[0][0] + table[0][1], table[1][0] + table[1][1]];
        let cols = [table[0][0] + table[1][0], table[0][1] + table[1][1]];
        let mut x = 0.0;
        for r in 0..2 {
            for c in 0..2 {
                let e = rows[r] as f64 * cols[c] as f64 / n;
                x += (table[r][c] as f64 - e).powi(2) / e;
            }
        }
        let (_, hi) = chi2_bounds(1.0);
        assert!(x < hi, "dependence chi2 {x} >= {hi}: {table:?}");
    }
}

#[test]
fn experiments_in_one_layer_are_exclusive_and_split_the_layer() {
    const N: u64 = 100_000;
    let p = plan(&format!(
        r#"{{"experiments": [
            {{"name": "a", "layer": {{"name": "l", "range_percent": [0, 30]}}, "variants": {v}}},
            {{"name": "b", "layer": {{"name": "l", "range_percent": [30, 60]}}, "variants": {v}}},
            {{"name": "c", "layer": {{"name": "l", "range_percent": [60, 100]}}, "traffic_percent": 50, "variants": {v}}}]}}"#,
        v = two_variants((1.0, 1.0))
    ));
    let mut counts = [0u64; 3];
    for i in 0..N {
        let a = assign(&p, format!("{i}").as_bytes());
        let ins: Vec<usize> = (0..3).filter(|&k| a[k].variant().is_some()).collect();
        assert!(ins.len() <= 1, "user {i} is in several experiments: {a:?}");
        for k in ins {
            counts[k] += 1;
        }
    }
    for (k, share) in [(0, 0.3), (1, 0.3), (2, 0.2)] {
        let e = N as f64 * share;
        let sd = (N as f64 * share * (1.0 - share)).sqrt();
        assert!(
            (counts[k] as f64 - e).abs() < 5.0 * sd,
            "experiment {k}: {} vs {e}",
            counts[k]
        );
    }
}

fn layered_config(traffic: f64, w: (f64, f64)) -> Plan {
    plan(&format!(
        r#"{{"experiments": [
            {{"name": "a", "traffic_percent": {traffic}, "layer": {{"name": "l", "range_percent": [0, 50]}}, "variants": {v}}},
            {{"name": "b", "traffic_percent": {traffic}, "variants": {v}}}]}}"#,
        v = two_variants(w)
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The same id gets the same answer, from fresh buffers, from the CLI
    /// path and from the request path (header or cookie).
    #[test]
    fn sticky(id in proptest::collection::vec(any::<u8>(), 1..64)) {
        let p = plan(&format!(
            r#"{{"identity": [{{"header": "x-user-id"}}, {{"cookie": "uid"}}],
                "experiments": [{{"name": "a", "traffic_percent": 60, "variants": {v}}},
                                {{"name": "b", "layer": {{"name": "l", "range_percent": [10, 70]}}, "variants": {v}}}]}}"#,
            v = two_variants((3.0, 7.0))));
        let first = assign(&p, &id);
        prop_assert_eq!(&first, &assign(&p, &id));
        let mut d = p.decisions();
        p.decide(&Req(&[("x-user-id", &id)]), &mut d);
        prop_assert_eq!(&first[..], d.assignments());
        // Through the cookie (ids without cookie delimiters or the blanks
        // around them, which cookie parsing trims).
        if id.iter().all(|b| !b";= \t\r\n\x0c\"".contains(b)) {
            let mut cookie = b"theme=dark; uid=".to_vec();
            cookie.extend_from_slice(&id);
            p.decide(&Req(&[("cookie", &cookie)]), &mut d);
            prop_assert_eq!(&first[..], d.assignments());
        }
    }

    /// Raising traffic 10 → 20 → 50 → 100 % keeps everyone already enrolled,
    /// in the same variant.
    #[test]
    fn monotone_ramp(ids in proptest::collection::vec("[a-z0-9]{1,16}", 64)) {
        let steps = [10.0, 20.0, 50.0, 100.0];
        let plans: Vec<Plan> = steps.iter().map(|&t| layered_config(t, (1.0, 1.0))).collect();
        for id in &ids {
            for w in plans.windows(2) {
                let (before, after) = (assign(&w[0], id.as_bytes()), assign(&w[1], id.as_bytes()));
                for (b, a) in before.iter().zip(&after) {
                    if b.variant().is_some() {
                        prop_assert_eq!(b, a);
                    }
                }
            }
        }
    }

    /// Changing weights never changes who is enrolled.
    #[test]
    fn weights_do_not_move_enrollment(
        ids in proptest::collection::vec("[a-z0-9]{1,16}", 64),
        traffic in 1u32..100,
        w1 in (1u32..100, 1u32..100),
        w2 in (1u32..100, 1u32..100),
    ) {
        let t = f64::from(traffic);
        let p1 = layered_config(t, (f64::from(w1.0), f64::from(w1.1)));
        let p2 = layered_config(t, (f64::from(w2.0), f64::from(w2.1)));
        for id in &ids {
            let (a, b) = (assign(&p1, id.as_bytes()), assign(&p2, id.as_bytes()));
            for (x, y) in a.iter().zip(&b) {
                prop_assert_eq!(x.variant().is_some(), y.variant().is_some());
            }
        }
    }
}

#[test]
fn ramp_keeps_users_over_many_ids() {
    // The exhaustive version of `monotone_ramp` over 50 000 ids.
    let steps = [10.0, 20.0, 50.0];
    let plans: Vec<Plan> = steps
        .iter()
        .map(|&t| layered_config(t, (1.0, 1.0)))
        .collect();
    let mut kept = 0;
    for i in 0..50_000 {
        let id = format!("ramp-{i}");
        let a: Vec<Vec<Assignment>> = plans.iter().map(|p| assign(p, id.as_bytes())).collect();
        for step in a.windows(2) {
            for (before, after) in step[0].iter().zip(&step[1]) {
                if before.variant().is_some() {
                    assert_eq!(before, after, "{id} changed variant when traffic rose");
                    kept += 1;
                }
            }
        }
    }
    assert!(
        kept > 5_000,
        "too few enrolled users to mean anything: {kept}"
    );
}
