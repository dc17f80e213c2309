//! What a request gets: conditions, overrides, identity handling and the
//! header changes that follow.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use abmesh_filter::{Assignment, Plan, Source, Verdict};
use common::{Recorder, Req};

const CONFIG: &str = r#"{
  "identity": [{"header": "x-user-id"}, {"cookie": "uid"}],
  "force_header": "x-abmesh-force",
  "experiments": [
    {"name": "ranker",
     "match": {"path_prefix": "/v2/models/ranker/", "methods": ["POST"]},
     "allowlist": {"qa-1": "treatment"},
     "variants": [
       {"name": "control", "weight": 1, "cluster": "ranker-v1", "path_prefix": "/v2/models/ranker/versions/1/"},
       {"name": "treatment", "weight": 1, "cluster": "ranker-v2", "path_prefix": "/v2/models/ranker/versions/2/", "authority": "v2.internal"}]},
    {"name": "beta", "match": {"headers": [{"name": "x-beta"}, {"name": "x-tier", "value": "gold"}]},
     "variants": [{"name": "off", "weight": 1}, {"name": "on", "weight": 1}]}
  ]
}"#;

fn plan() -> Plan {
    Plan::from_json(CONFIG.as_bytes()).unwrap()
}

fn decide(plan: &Plan, headers: &[(&str, &[u8])]) -> (Verdict, Vec<Assignment>, Recorder) {
    let mut d = plan.decisions();
    let req = Req(headers);
    let verdict = plan.decide(&req, &mut d);
    let mut rec = Recorder::default();
    let mut buf = Vec::new();
    if verdict == Verdict::Continue {
        plan.apply(&d, &req, &mut buf, &mut rec);
    }
    (verdict, d.assignments().to_vec(), rec)
}

/// Finds a user id that hashes to `variant` of experiment 0.
fn user_in(plan: &Plan, variant: usize) -> String {
    let mut d = plan.decisions();
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| {
            plan.assign_user(u.as_bytes(), &mut d);
            d.assignments()[0].variant() == Some(variant)
        })
        .unwrap()
}

#[test]
fn match_conditions_gate_experiments() {
    let p = plan();
    let (_, a, rec) = decide(
        &p,
        &[
            (":path", b"/v2/models/ranker/infer"),
            (":method", b"POST"),
            ("x-user-id", b"u1"),
        ],
    );
    assert!(matches!(
        a[0],
        Assignment::Variant {
            source: Source::Hash,
            ..
        }
    ));
    assert_eq!(a[1], Assignment::NotMatched);
    assert!(rec.removed.contains(&"x-abmesh-beta".to_string()));

    // Wrong method, wrong path.
    let (_, a, _) = decide(
        &p,
        &[
            (":path", b"/v2/models/ranker/infer"),
            (":method", b"GET"),
            ("x-user-id", b"u1"),
        ],
    );
    assert_eq!(a[0], Assignment::NotMatched);
    let (_, a, rec) = decide(
        &p,
        &[
            (":path", b"/v2/models/other/infer"),
            (":method", b"POST"),
            ("x-user-id", b"u1"),
        ],
    );
    assert_eq!(a[0], Assignment::NotMatched);
    assert_eq!(
        rec.removed,
        vec!["x-abmesh-ranker", "x-abmesh-beta", "x-abmesh-cluster"]
    );
    assert!(rec.set.is_empty());

    // Header presence and value.
    let (_, a, _) = decide(
        &p,
        &[("x-beta", b""), ("x-tier", b"gold"), ("x-user-id", b"u1")],
    );
    assert!(a[1].variant().is_some());
    let (_, a, _) = decide(
        &p,
        &[
            ("x-beta", b"1"),
            ("x-tier", b"silver"),
            ("x-user-id", b"u1"),
        ],
    );
    assert_eq!(a[1], Assignment::NotMatched);
    let (_, a, _) = decide(&p, &[("x-tier", b"gold"), ("x-user-id", b"u1")]);
    assert_eq!(a[1], Assignment::NotMatched);
}

#[test]
fn variant_actions_rewrite_the_route() {
    let p = plan();
    for (variant, cluster, prefix) in [
        (0, "ranker-v1", "/v2/models/ranker/versions/1/"),
        (1, "ranker-v2", "/v2/models/ranker/versions/2/"),
    ] {
        let user = user_in(&p, variant);
        let (_, _, rec) = decide(
            &p,
            &[
                (":path", b"/v2/models/ranker/infer?x=1"),
                (":method", b"POST"),
                ("x-user-id", user.as_bytes()),
            ],
        );
        assert_eq!(rec.get("x-abmesh-cluster"), Some(cluster.as_bytes()));
        assert_eq!(
            rec.get(":path"),
            Some(format!("{prefix}infer?x=1").as_bytes())
        );
        let name = p.experiments()[0].variants()[variant].name();
        assert_eq!(rec.get("x-abmesh-ranker"), Some(name.as_bytes()));
        assert_eq!(
            rec.get(":authority"),
            (variant == 1).then_some(&b"v2.internal"[..])
        );
    }
}

#[test]
fn allowlist_and_force_override_the_hash_but_are_not_exposures() {
    let p = plan();
    let base: [(&str, &[u8]); 2] = [(":path", b"/v2/models/ranker/x"), (":method", b"POST")];
    let (_, a, _) = decide(&p, &[base[0], base[1], ("x-user-id", b"qa-1")]);
    assert_eq!(
        a[0],
        Assignment::Variant {
            index: 1,
            source: Source::Allowlist
        }
    );
    assert!(!Source::Allowlist.is_exposure());

    let user = user_in(&p, 1);
    let (_, a, rec) = decide(
        &p,
        &[
            base[0],
            base[1],
            ("x-user-id", user.as_bytes()),
            ("x-abmesh-force", b" ranker = control ,beta=on"),
        ],
    );
    assert_eq!(
        a[0],
        Assignment::Variant {
            index: 0,
            source: Source::Forced
        }
    );
    // beta did not match this request, so forcing it does nothing.
    assert_eq!(a[1], Assignment::NotMatched);
    assert_eq!(rec.get("x-abmesh-cluster"), Some(&b"ranker-v1"[..]));
    // Unknown names and garbage are ignored.
    let (_, a, _) = decide(
        &p,
        &[
            base[0],
            base[1],
            ("x-user-id", user.as_bytes()),
            ("x-abmesh-force", b"ranker=nope,zzz,=,\xff=\xfe"),
        ],
    );
    assert_eq!(
        a[0],
        Assignment::Variant {
            index: 1,
            source: Source::Hash
        }
    );
}

#[test]
fn force_header_is_off_unless_configured() {
    let p = Plan::from_json(
        br#"{"experiments": [{"name": "e", "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}]}"#,
    )
    .unwrap();
    let mut d = p.decisions();
    for forced in ["e=a", "e=b"] {
        p.decide(
            &Req(&[
                ("x-user-id", b"someone"),
                ("x-abmesh-force", forced.as_bytes()),
            ]),
            &mut d,
        );
        assert!(matches!(
            d.assignments()[0],
            Assignment::Variant {
                source: Source::Hash,
                ..
            }
        ));
    }
}

#[test]
fn missing_identity_modes() {
    let cfg = |mode: &str| {
        Plan::from_json(format!(
            r#"{{"missing_identity": "{mode}", "experiments": [{{"name": "e", "control": "b",
                "variants": [{{"name": "a", "weight": 1, "cluster": "ca"}}, {{"name": "b", "weight": 1, "cluster": "cb"}}]}}]}}"#
        ).as_bytes())
        .unwrap()
    };
    let (v, a, rec) = decide(&cfg("pass"), &[(":path", b"/")]);
    assert_eq!((v, a[0]), (Verdict::Continue, Assignment::NoIdentity));
    assert_eq!(rec.removed, vec!["x-abmesh-e", "x-abmesh-cluster"]);

    let (v, a, rec) = decide(&cfg("control"), &[(":path", b"/")]);
    assert_eq!(v, Verdict::Continue);
    assert_eq!(
        a[0],
        Assignment::Variant {
            index: 1,
            source: Source::Default
        }
    );
    assert!(!Source::Default.is_exposure());
    assert_eq!(rec.get("x-abmesh-cluster"), Some(&b"cb"[..]));

    let (v, _, _) = decide(&cfg("reject"), &[(":path", b"/")]);
    assert_eq!(v, Verdict::RejectMissingIdentity);
    // An empty header or cookie is no identity either.
    let (v, _, _) = decide(&cfg("reject"), &[("x-user-id", b"")]);
    assert_eq!(v, Verdict::RejectMissingIdentity);
    let (v, _, _) = decide(&cfg("reject"), &[("x-user-id", b"x")]);
    assert_eq!(v, Verdict::Continue);
}

#[test]
fn cookie_is_a_fallback_after_the_header() {
    let p = plan();
    let base: [(&str, &[u8]); 2] = [(":path", b"/v2/models/ranker/x"), (":method", b"POST")];
    let mut d = p.decisions();
    p.assign_user(b"from-cookie", &mut d);
    let expect = d.assignments()[0];
    let (_, a, _) = decide(&p, &[base[0], base[1], ("cookie", b"a=1; uid=from-cookie")]);
    assert_eq!(a[0], expect);
    // The header wins over the cookie.
    p.assign_user(b"from-header", &mut d);
    let expect = d.assignments()[0];
    let (_, a, _) = decide(
        &p,
        &[
            base[0],
            base[1],
            ("x-user-id", b"from-header"),
            ("cookie", b"uid=from-cookie"),
        ],
    );
    assert_eq!(a[0], expect);
}

#[test]
fn the_cookie_is_found_in_any_of_several_cookie_headers() {
    // HTTP/1.1 clients may send one `cookie` header per cookie, and Envoy
    // keeps them apart there (over HTTP/2 it joins them with "; ").
    let p = plan();
    let base: [(&str, &[u8]); 2] = [(":path", b"/v2/models/ranker/x"), (":method", b"POST")];
    let mut d = p.decisions();
    p.assign_user(b"in-second", &mut d);
    let expect = d.assignments()[0];
    let split = [
        base[0],
        base[1],
        ("cookie", &b"theme=dark; lang=en"[..]),
        ("cookie", &b"uid=in-second"[..]),
    ];
    let (_, a, _) = decide(&p, &split);
    assert_eq!(a[0], expect);
    let joined = [
        base[0],
        base[1],
        ("cookie", &b"theme=dark; lang=en; uid=in-second"[..]),
    ];
    assert_eq!(decide(&p, &joined).1[0], expect);
    // The first occurrence wins, as in the joined HTTP/2 form.
    let twice = [
        base[0],
        base[1],
        ("cookie", &b"uid=in-second"[..]),
        ("cookie", &b"uid=other"[..]),
    ];
    assert_eq!(decide(&p, &twice).1[0], expect);
}

#[test]
fn last_experiment_wins_route_actions_and_echo_lists_all() {
    let p = Plan::from_json(
        br#"{"experiments": [
          {"name": "first", "variants": [{"name": "a", "weight": 1, "cluster": "c1"}, {"name": "b", "weight": 1, "cluster": "c1"}]},
          {"name": "second", "variants": [{"name": "a", "weight": 1, "cluster": "c2"}, {"name": "b", "weight": 1, "cluster": "c2"}]}]}"#,
    )
    .unwrap();
    let (_, a, rec) = decide(&p, &[("x-user-id", b"u")]);
    assert_eq!(rec.get("x-abmesh-cluster"), Some(&b"c2"[..]));
    let mut d = p.decisions();
    p.assign_user(b"u", &mut d);
    let mut echo = Vec::new();
    p.write_echo(&d, &mut echo);
    let names = |i: usize| {
        p.experiments()[i].variants()[a[i].variant().unwrap()]
            .name()
            .to_string()
    };
    assert_eq!(
        String::from_utf8(echo).unwrap(),
        format!("first={},second={}", names(0), names(1))
    );
}

#[test]
fn header_names_are_case_insensitive_in_config() {
    let p = Plan::from_json(
        br#"{"identity": [{"header": "X-User-ID"}], "cluster_header": "X-Route",
             "experiments": [{"name": "e", "variants": [{"name": "a", "weight": 1, "cluster": "c"}, {"name": "b", "weight": 1, "cluster": "c"}]}]}"#,
    )
    .unwrap();
    let (_, a, rec) = decide(&p, &[("x-user-id", b"u")]);
    assert!(a[0].variant().is_some());
    assert_eq!(rec.get("x-route"), Some(&b"c"[..]));
}

/// Request headers whose full set is known, like the filter's bulk read.
struct Known<'a>(Req<'a>);
impl abmesh_filter::RequestHeaders for Known<'_> {
    fn get(&self, slot: abmesh_filter::Slot, name: &str) -> Option<&[u8]> {
        self.0.get(slot, name)
    }
    fn contains(&self, name: &str) -> Option<bool> {
        Some(self.0 .0.iter().any(|(n, _)| *n == name))
    }
}

#[test]
fn client_headers_are_removed_only_when_present_if_known() {
    let p = plan();
    let mut d = p.decisions();
    let mut buf = Vec::new();
    // Not in any experiment: nothing to set; with the header set known, the
    // absent headers cost no removal.
    let clean: [(&str, &[u8]); 1] = [(":path", b"/other")];
    let req = Known(Req(&clean));
    p.decide(&req, &mut d);
    let mut rec = Recorder::default();
    p.apply(&d, &req, &mut buf, &mut rec);
    assert!(rec.removed.is_empty() && rec.set.is_empty(), "{rec:?}");
    // Spoofed headers are removed.
    let spoofed: [(&str, &[u8]); 3] = [
        (":path", b"/other"),
        ("x-abmesh-cluster", b"ranker-v2"),
        ("x-abmesh-ranker", b"treatment"),
    ];
    let req = Known(Req(&spoofed));
    p.decide(&req, &mut d);
    let mut rec = Recorder::default();
    p.apply(&d, &req, &mut buf, &mut rec);
    assert_eq!(rec.removed, vec!["x-abmesh-ranker", "x-abmesh-cluster"]);
    // Unknown (the default): removed without checking.
    let req = Req(&clean);
    p.decide(&req, &mut d);
    let mut rec = Recorder::default();
    p.apply(&d, &req, &mut buf, &mut rec);
    assert_eq!(
        rec.removed,
        vec!["x-abmesh-ranker", "x-abmesh-beta", "x-abmesh-cluster"]
    );
}
