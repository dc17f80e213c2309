//! Bandit weights ([`Allocation`]): who moves when a period changes the
//! weights (exactly the share that changed hands, and only users of the
//! changed boundary ranges), stickiness within a period, monotonic periods,
//! and that requests, exposures and `abmesh assign` agree on it.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use abmesh_filter::hash::{BucketKey, Purpose, BUCKETS};
use abmesh_filter::{Allocation, AllocationError, Halts, Plan};
use common::Req;

/// `ranker`: control first (50 %), then a, b (12.5 % each) and c (25 %); a second
/// experiment without bandit after it.
const CONFIG: &str = r#"{"experiments": [
  {"name": "ranker", "bandit": {"metric": "purchase", "explore_floor_percent": 1},
   "variants": [{"name": "control", "weight": 4}, {"name": "a", "weight": 1},
                {"name": "b", "weight": 1}, {"name": "c", "weight": 2}]},
  {"name": "banner", "variants": [{"name": "x", "weight": 1}, {"name": "y", "weight": 1}]}]}"#;

const USERS: usize = 200_000;

fn plan() -> Plan {
    Plan::from_json(CONFIG.as_bytes()).unwrap()
}

/// Random-looking user ids (not sequential-looking strings only: a
/// splitmix64 stream formatted in hex, so the test has no RNG dependency).
fn users() -> Vec<String> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..USERS)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("user-{:016x}", z ^ (z >> 31))
        })
        .collect()
}

fn variants(plan: &Plan, alloc: &Allocation, users: &[String]) -> Vec<usize> {
    let mut d = plan.decisions();
    users
        .iter()
        .map(|u| {
            plan.assign_user_with(u.as_bytes(), alloc, &mut d);
            d.assignments()[0].variant().unwrap()
        })
        .collect()
}

/// The buckets whose variant differs between `old` and `new`: every
/// bucket between the old and the new position of some boundary.
fn changed_region(old: &[u32], new: &[u32]) -> impl Fn(u32) -> bool {
    let ranges: Vec<(u32, u32)> = old
        .iter()
        .zip(new)
        .map(|(&a, &b)| (a.min(b), a.max(b)))
        .collect();
    move |bucket| ranges.iter().any(|&(lo, hi)| lo <= bucket && bucket < hi)
}

/// Assigns everyone before and after `weights`, and checks the movers
/// against `moved_buckets`; returns the fraction that moved.
fn movement(weights: &[f64]) -> (f64, u32) {
    let plan = plan();
    let users = users();
    let key = BucketKey::derive(Purpose::Variant, "ranker");
    let before = Allocation::new(&plan);
    let mut after = before.clone();
    assert_eq!(after.set(0, 1, weights), Ok(true));
    let moved = before.moved_buckets(&after, 0);
    assert_eq!(moved, after.moved_buckets(&before, 0), "symmetric");
    let in_region = changed_region(before.uppers(0), after.uppers(0));
    let (old, new) = (
        variants(&plan, &before, &users),
        variants(&plan, &after, &users),
    );
    // Ordered boundaries that cross one bucket all cross it the same way,
    // so the buckets between old and new boundaries are exactly those that
    // change variant.
    assert_eq!(moved, (0..BUCKETS).filter(|&b| in_region(b)).count() as u32);
    let mut movers = 0;
    for (u, (o, n)) in users.iter().zip(old.iter().zip(&new)) {
        let bucket = key.bucket(u.as_bytes());
        movers += usize::from(o != n);
        assert_eq!(
            o != n,
            in_region(bucket),
            "{u} (bucket {bucket}) went from {o} to {n}: movers are exactly the users between moved boundaries"
        );
    }
    let fraction = movers as f64 / USERS as f64;
    let expected = f64::from(moved) / f64::from(BUCKETS);
    assert!(
        (fraction - expected).abs() < 0.005,
        "{fraction} of users moved, moved_buckets says {expected}"
    );
    (fraction, moved)
}

#[test]
fn adjacent_treatments_move_exactly_the_share_between_them() {
    let plan = plan();
    let configured = Allocation::new(&plan);
    assert_eq!(configured.uppers(0), [5000, 6250, 7500, 10_000]);
    // b gives a 5 points: only users in b's first 5 % go to a.
    let (fraction, moved) = movement(&[0.5, 0.175, 0.075, 0.25]);
    assert_eq!(moved, 500, "exactly |Δ share| of the buckets");
    assert!((fraction - 0.05).abs() < 0.005, "{fraction}");
}

#[test]
fn a_non_adjacent_change_moves_the_users_of_the_boundaries_in_between() {
    // a gives 10 points to c; b keeps its share, but its range slides
    // down between them: the a|b and b|c boundaries each move by 10
    // points, so 20 % of the users move although 10 points changed hands.
    let (fraction, moved) = movement(&[0.5, 0.025, 0.125, 0.35]);
    assert_eq!(moved, 1000 + 1000, "Σ|ΔU| when the moves are disjoint");
    assert!((fraction - 0.2).abs() < 0.005, "{fraction}");
    // b and c give to a: the a|b boundary (6250 → 9000) sweeps past the old
    // b|c one (7500 → 9500); the buckets both crossed count once.
    let plan = plan();
    let mut a = Allocation::new(&plan);
    a.set(0, 1, &[0.5, 0.4, 0.05, 0.05]).unwrap();
    assert_eq!(a.uppers(0), [5000, 9000, 9500, 10_000]);
    let (fraction, moved) = movement(&[0.5, 0.4, 0.05, 0.05]);
    assert_eq!(moved, 9500 - 6250, "less than Σ|ΔU| = {}", 2750 + 2000);
    assert!((fraction - 0.325).abs() < 0.005, "{fraction}");
}

#[test]
fn the_control_never_moves_when_its_share_is_kept() {
    let plan = plan();
    let users = users();
    let before = Allocation::new(&plan);
    let mut after = before.clone();
    after.set(0, 1, &[0.5, 0.05, 0.05, 0.4]).unwrap();
    let (old, new) = (
        variants(&plan, &before, &users),
        variants(&plan, &after, &users),
    );
    let control = 0;
    for (o, n) in old.iter().zip(&new) {
        assert_eq!(
            *o == control,
            *n == control,
            "a user entered or left control"
        );
    }
}

#[test]
fn within_a_period_every_user_keeps_their_variant() {
    let plan = plan();
    let users = users();
    let mut alloc = Allocation::new(&plan);
    alloc.set(0, 5, &[0.5, 0.1, 0.3, 0.1]).unwrap();
    let first = variants(&plan, &alloc, &users);
    // A copy (another worker), and the same weights again (ignored).
    let copy = alloc.clone();
    assert_eq!(variants(&plan, &copy, &users), first);
    assert_eq!(alloc.set(0, 5, &[0.5, 0.1, 0.3, 0.1]), Ok(false));
    assert_eq!(variants(&plan, &alloc, &users), first);
    // The shares are the weights' (to sampling error).
    let share = |v: usize| first.iter().filter(|&&x| x == v).count() as f64 / USERS as f64;
    for (v, w) in [0.5, 0.1, 0.3, 0.1].iter().enumerate() {
        assert!((share(v) - w).abs() < 0.005, "variant {v}: {}", share(v));
    }
}

#[test]
fn periods_only_advance_and_bad_weights_change_nothing() {
    let plan = plan();
    let mut alloc = Allocation::new(&plan);
    assert!(alloc.is_configured());
    assert_eq!(alloc.set(0, 0, &[1.0, 1.0, 1.0, 1.0]), Ok(false));
    assert_eq!(alloc.set(0, 2, &[1.0, 1.0, 1.0, 1.0]), Ok(true));
    assert_eq!(
        (alloc.period(0), alloc.uppers(0)),
        (2, &[2500, 5000, 7500, 10_000][..])
    );
    assert!(!alloc.is_configured());
    // A lagging replica's older period is ignored.
    assert_eq!(alloc.set(0, 1, &[4.0, 1.0, 1.0, 1.0]), Ok(false));
    assert_eq!(alloc.uppers(0), [2500, 5000, 7500, 10_000]);
    let kept = alloc.clone();
    for (weights, err) in [
        (&[1.0, 1.0][..], "has 4 variants, got 2 weights"),
        (&[1.0, -1.0, 1.0, 1.0], "variant \"a\": weight must be"),
        (&[1.0, 1.0, f64::NAN, 1.0], "variant \"b\": weight must be"),
        (&[1.0, 1.0, 1.0, f64::INFINITY], "variant \"c\""),
        (&[0.0, 0.0, 0.0, 0.0], "add up to 0"),
    ] {
        let e = alloc.set(0, 9, weights).unwrap_err();
        assert!(e.to_string().contains(err), "{e}");
        assert_eq!(alloc, kept);
    }
    assert_eq!(
        alloc.set(1, 9, &[1.0, 1.0]),
        Err(AllocationError::NotABandit("banner".into()))
    );
    assert_eq!(
        alloc.set(2, 9, &[1.0]),
        Err(AllocationError::UnknownExperiment(2))
    );
    // Huge weights are fine (scaled before summing); zero weights empty a
    // range, which no user then falls in.
    assert_eq!(alloc.set(0, 3, &[f64::MAX, 0.0, f64::MAX, 0.0]), Ok(true));
    assert_eq!(alloc.uppers(0), [5000, 5000, 10_000, 10_000]);
    let v = variants(&plan, &alloc, &users()[..2000]);
    assert!(v.iter().all(|&x| x == 0 || x == 2));
}

#[test]
fn requests_are_decided_by_the_allocation_and_carry_its_period() {
    let plan = plan();
    let halts = Halts::new(&plan);
    let mut alloc = Allocation::new(&plan);
    let users = users();
    let mut d = plan.decisions();
    let mut e = plan.decisions();
    // Period 0: exactly the configured weights.
    for u in &users[..2000] {
        let req = [("x-user-id", u.as_bytes())];
        plan.decide_with(&Req(&req), &halts, &alloc, &mut d);
        plan.assign_user(u.as_bytes(), &mut e);
        assert_eq!(d.assignments(), e.assignments());
        assert_eq!((d.period(0), d.period(1)), (0, 0));
    }
    alloc.set(0, 7, &[0.5, 0.3, 0.1, 0.1]).unwrap();
    let mut differ = 0;
    for u in &users[..2000] {
        let req = [("x-user-id", u.as_bytes())];
        plan.decide_with(&Req(&req), &halts, &alloc, &mut d);
        plan.assign_user_with(u.as_bytes(), &alloc, &mut e);
        assert_eq!(d.assignments(), e.assignments());
        // The bandit's exposures are in period 7; the other experiment's
        // are by its configured weights.
        assert_eq!((d.period(0), d.period(1)), (7, 0));
        plan.assign_user(u.as_bytes(), &mut e);
        differ += usize::from(d.assignments()[0] != e.assignments()[0]);
        // Plain `decide` keeps the configured weights.
        plan.decide(&Req(&req), &mut e);
        assert_eq!(d.assignments()[1], e.assignments()[1]);
    }
    assert!(differ > 100, "{differ}");
    // A halted variant's users go to control, which is not an exposure:
    // no period.
    let mut halts = Halts::new(&plan);
    halts.halt(0, 1);
    let u = users
        .iter()
        .find(|u| {
            plan.assign_user_with(u.as_bytes(), &alloc, &mut e);
            e.assignments()[0].variant() == Some(1)
        })
        .unwrap();
    let req = [("x-user-id", u.as_bytes())];
    plan.decide_with(&Req(&req), &halts, &alloc, &mut d);
    assert_eq!(d.assignments()[0].variant(), Some(0));
    assert_eq!(d.period(0), 0);
}
