//! Variants halted by the sidecar: their users are routed like control,
//! with `Source::Halted`, and everything else is unchanged.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use abmesh_filter::exposures::parse_reply;
use abmesh_filter::{Assignment, Halts, Plan, Source};
use common::{Recorder, Req};

const CONFIG: &str = r#"{
  "echo_header": "x-abmesh-assignment",
  "force_header": "x-abmesh-force",
  "experiments": [
    {"name": "ranker",
     "match": {"path_prefix": "/v2/models/ranker/"},
     "allowlist": {"qa-1": "v3"},
     "control": "v1",
     "variants": [
       {"name": "v3", "weight": 1, "cluster": "ranker-v3", "path_prefix": "/v2/models/ranker/versions/3/", "authority": "v3.internal"},
       {"name": "v1", "weight": 1, "cluster": "ranker-v1", "path_prefix": "/v2/models/ranker/versions/1/", "authority": "v1.internal"},
       {"name": "v2", "weight": 1, "cluster": "ranker-v2", "path_prefix": "/v2/models/ranker/versions/2/"}]},
    {"name": "banner",
     "variants": [{"name": "blue", "weight": 1}, {"name": "red", "weight": 1}]}
  ]
}"#;

const RANKER: usize = 0;
const V3: usize = 0;
const V1: usize = 1; // control
const V2: usize = 2;

fn plan() -> Plan {
    Plan::from_json(CONFIG.as_bytes()).unwrap()
}

fn req(user: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (":path", b"/v2/models/ranker/infer".to_vec()),
        ("x-user-id", user.as_bytes().to_vec()),
    ]
}

/// Decides with halts and applies; returns the assignments, the header
/// writes and the echo header value.
fn run(plan: &Plan, halts: &Halts, user: &str) -> (Vec<Assignment>, Recorder, String) {
    let owned = req(user);
    let pairs: Vec<(&str, &[u8])> = owned.iter().map(|(n, v)| (*n, &v[..])).collect();
    let r = Req(&pairs);
    let mut d = plan.decisions();
    plan.decide_with_halts(&r, halts, &mut d);
    let mut rec = Recorder::default();
    plan.apply(&d, &r, &mut Vec::new(), &mut rec);
    let mut echo = Vec::new();
    plan.write_echo(&d, &mut echo);
    (
        d.assignments().to_vec(),
        rec,
        String::from_utf8(echo).unwrap(),
    )
}

/// The first users the hash puts into `variant` of ranker.
fn users_in(plan: &Plan, variant: usize, n: usize) -> Vec<String> {
    let mut d = plan.decisions();
    (0..)
        .map(|i| format!("user-{i}"))
        .filter(|u| {
            plan.assign_user(u.as_bytes(), &mut d);
            d.assignments()[RANKER].variant() == Some(variant)
        })
        .take(n)
        .collect()
}

#[test]
fn halted_users_are_routed_like_control() {
    let p = plan();
    let mut halts = Halts::new(&p);
    assert!(halts.halt(RANKER, V3));
    assert_eq!(halts.len(), 1);
    let none = Halts::new(&p);
    for user in users_in(&p, V3, 20) {
        let (a, rec, echo) = run(&p, &halts, &user);
        assert_eq!(
            a[RANKER],
            Assignment::Variant {
                index: V1 as u16,
                source: Source::Halted
            }
        );
        assert!(!Source::Halted.is_exposure());
        // Exactly what a control user gets.
        assert_eq!(rec.get("x-abmesh-ranker"), Some(&b"v1"[..]));
        assert_eq!(rec.get("x-abmesh-cluster"), Some(&b"ranker-v1"[..]));
        assert_eq!(
            rec.get(":path"),
            Some(&b"/v2/models/ranker/versions/1/infer"[..])
        );
        assert_eq!(rec.get(":authority"), Some(&b"v1.internal"[..]));
        assert!(echo.starts_with("ranker=v1,banner="), "{echo}");
        // The other experiment is untouched.
        let (b, _, _) = run(&p, &none, &user);
        assert_eq!(a[1], b[1]);
        assert_eq!(b[RANKER].variant(), Some(V3));
    }
}

#[test]
fn other_variants_keep_their_users() {
    let p = plan();
    let mut halts = Halts::new(&p);
    halts.halt(RANKER, V3);
    let none = Halts::new(&p);
    let mut d = p.decisions();
    for i in 0..3000 {
        let user = format!("sticky-{i}");
        p.assign_user(user.as_bytes(), &mut d);
        let hashed = d.assignments()[RANKER].variant().unwrap();
        let (with, _, _) = run(&p, &halts, &user);
        let (without, _, _) = run(&p, &none, &user);
        assert_eq!(without[RANKER].variant(), Some(hashed));
        if hashed == V3 {
            assert_eq!(with[RANKER].variant(), Some(V1));
        } else {
            // Not halted: the very same assignment, still an exposure.
            assert_eq!(with, without);
            assert_eq!(
                with[RANKER],
                Assignment::Variant {
                    index: hashed as u16,
                    source: Source::Hash
                }
            );
        }
    }
}

#[test]
fn lifting_restores_the_hash_variant() {
    let p = plan();
    let mut halts = Halts::new(&p);
    let users = users_in(&p, V2, 10);
    halts.halt(RANKER, V2);
    for u in &users {
        assert_eq!(run(&p, &halts, u).0[RANKER].variant(), Some(V1));
    }
    halts.lift(RANKER, V2);
    assert!(halts.is_empty());
    for u in &users {
        let (a, rec, _) = run(&p, &halts, u);
        assert_eq!(
            a[RANKER],
            Assignment::Variant {
                index: V2 as u16,
                source: Source::Hash
            }
        );
        assert_eq!(rec.get("x-abmesh-cluster"), Some(&b"ranker-v2"[..]));
    }
    // Halting everything but control, then lifting it all.
    halts.halt(RANKER, V2);
    halts.halt(RANKER, V3);
    assert_eq!(halts.len(), 2);
    halts.lift(RANKER, V2);
    halts.lift(RANKER, V3);
    assert!(halts.is_empty() && !halts.is_halted(RANKER, V2));
}

#[test]
fn halting_control_is_ignored() {
    let p = plan();
    let mut halts = Halts::new(&p);
    // The sidecar refuses to halt a control; if one arrives anyway it is
    // ignored: control users stay exposures of control.
    assert!(!halts.halt(RANKER, V1));
    assert!(!halts.halt(1, 0)); // banner's control is its first variant
    assert!(halts.is_empty());
    assert!(!halts.is_halted(RANKER, V1));
    for u in users_in(&p, V1, 10) {
        assert_eq!(
            run(&p, &halts, &u).0[RANKER],
            Assignment::Variant {
                index: V1 as u16,
                source: Source::Hash
            }
        );
    }
    // The same through the sidecar's answer.
    let r = parse_reply(
        &p,
        br#"{"halted": [{"experiment": "ranker", "variant": "v1"}, {"experiment": "banner", "variant": "red"}]}"#,
    )
    .unwrap();
    let h = r.halted.unwrap();
    assert_eq!(h.iter().collect::<Vec<_>>(), vec![(1, 1)]);
    // Out of range indexes are refused, not panics.
    assert!(!halts.halt(7, 0) && !halts.halt(RANKER, 9));
    assert!(!halts.is_halted(7, 0) && !halts.is_halted(RANKER, 9));
}

#[test]
fn allowlisted_and_forced_users_are_not_rerouted() {
    let p = plan();
    let mut halts = Halts::new(&p);
    halts.halt(RANKER, V3);
    let (a, _, _) = run(&p, &halts, "qa-1");
    assert_eq!(
        a[RANKER],
        Assignment::Variant {
            index: V3 as u16,
            source: Source::Allowlist
        }
    );
    let user = &users_in(&p, V1, 1)[0];
    let pairs: [(&str, &[u8]); 3] = [
        (":path", b"/v2/models/ranker/infer"),
        ("x-user-id", user.as_bytes()),
        ("x-abmesh-force", b"ranker=v3"),
    ];
    let mut d = p.decisions();
    p.decide_with_halts(&Req(&pairs), &halts, &mut d);
    assert_eq!(
        d.assignments()[RANKER],
        Assignment::Variant {
            index: V3 as u16,
            source: Source::Forced
        }
    );
}

#[test]
fn changes_between_sets_for_logging() {
    let p = plan();
    let mut old = Halts::new(&p);
    old.halt(RANKER, V3);
    let mut new = Halts::new(&p);
    new.halt(RANKER, V2);
    new.halt(1, 1);
    assert_eq!(
        old.changes(&new).collect::<Vec<_>>(),
        vec![(RANKER, V3, false), (RANKER, V2, true), (1, 1, true)]
    );
    assert_eq!(new.changes(&new.clone()).count(), 0);
    // An answer without `halted` keeps the current set.
    assert!(parse_reply(&p, br#"{"accepted": 1}"#)
        .unwrap()
        .halted
        .is_none());
}
