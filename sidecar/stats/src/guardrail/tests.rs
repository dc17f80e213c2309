use super::*;

fn cfg(json: &str) -> GuardrailsConfig {
    serde_json::from_str(json).unwrap()
}

/// `n` responses, `errors` of them 5xx, all at 1 ms.
fn errors(n: u64, errors: u64) -> Health {
    let mut h = Health {
        requests: n,
        ..Health::default()
    };
    for i in 0..n {
        h.record(if i < errors { 503 } else { 200 }, 1_000);
    }
    h
}

/// `n` responses with latencies spread evenly over [lo, hi] µs.
fn latencies(n: u64, lo: u64, hi: u64) -> Health {
    let mut h = Health {
        requests: n,
        ..Health::default()
    };
    for i in 0..n {
        h.record(200, lo + (hi - lo) * i / (n - 1));
    }
    h
}

fn no_metrics(_: &str, _: usize) -> Option<MetricData> {
    None
}

fn rate_rule(max_increase: f64) -> ErrorRateRule {
    ErrorRateRule { max_increase }
}

#[test]
fn error_rate_breaches_on_a_clear_increase() {
    let c = error_rate(
        &rate_rule(0.01),
        100,
        0.01,
        1,
        &errors(200, 0),
        &errors(200, 40),
    );
    assert_eq!(c.status, CheckStatus::Breach, "{c:?}");
    assert_eq!(c.rule, "error_rate");
    assert!((c.estimate.unwrap() - 0.2).abs() < 1e-12);
    assert!(c.ci_low.unwrap() > 0.01, "{c:?}");
    assert!(c.p_value.unwrap() < 0.01);
    assert!(
        c.message
            .starts_with("5xx share 20.0% vs control 0.0% (+20.0 pp, always-valid 99% CI "),
        "{}",
        c.message
    );
    assert!(
        c.message.ends_with("exceeds the +1.0 pp limit"),
        "{}",
        c.message
    );
}

#[test]
fn error_rate_does_not_breach_on_small_counts() {
    // 3 errors of 100 against none: the plain Wald se of the control is 0,
    // which would make this look significant.
    for alpha in [0.01, 0.01 / 2.0, 0.01 / 6.0] {
        for max in [0.0, 0.01] {
            let c = error_rate(
                &rate_rule(max),
                100,
                alpha,
                1,
                &errors(100, 0),
                &errors(100, 3),
            );
            assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
            assert!(c.ci_low.unwrap() <= max && c.p_value.unwrap() >= alpha);
            assert!(c.message.contains("is within the"), "{}", c.message);
        }
    }
    // Even 5 vs 0 of 100 is not enough evidence at α = 0.01.
    let c = error_rate(
        &rate_rule(0.0),
        100,
        0.01,
        1,
        &errors(100, 0),
        &errors(100, 5),
    );
    assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
}

#[test]
fn error_rate_ok_without_errors_and_when_better() {
    let c = error_rate(
        &rate_rule(0.0),
        100,
        0.01,
        1,
        &errors(500, 0),
        &errors(500, 0),
    );
    assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
    assert_eq!(c.estimate, Some(0.0));
    assert_eq!(c.p_value, Some(1.0));
    let c = error_rate(
        &rate_rule(0.0),
        100,
        0.01,
        1,
        &errors(500, 100),
        &errors(500, 5),
    );
    assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
    assert!(c.ci_high.unwrap() < 0.0);
    // All errors in both arms: no difference.
    let c = error_rate(
        &rate_rule(0.0),
        100,
        0.01,
        1,
        &errors(500, 500),
        &errors(500, 500),
    );
    assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
}

#[test]
fn error_rate_needs_min_responses_in_both_arms() {
    let c = error_rate(
        &rate_rule(0.0),
        100,
        0.01,
        1,
        &errors(99, 0),
        &errors(500, 400),
    );
    assert_eq!(c.status, CheckStatus::NotEnoughData);
    assert_eq!(
        c.message,
        "500 sampled responses in the treatment and 99 in control; 100 needed in each"
    );
    assert_eq!((c.estimate, c.p_value), (None, None));
    // Requests without sampled responses do not count.
    let mut h = errors(0, 0);
    h.requests = 10_000;
    let c = error_rate(&rate_rule(0.0), 0, 0.01, 1, &h, &errors(500, 400));
    assert_eq!(c.status, CheckStatus::NotEnoughData);
}

#[test]
fn error_rate_rejects_a_bad_limit() {
    let c = error_rate(&rate_rule(1.5), 1, 0.01, 1, &errors(9, 0), &errors(9, 0));
    assert_eq!(c.status, CheckStatus::Error);
}

fn latency_rule(pct: f64) -> LatencyRule {
    LatencyRule {
        max_increase_percent: pct,
    }
}

#[test]
fn p95_latency_breaches_when_twice_as_slow() {
    let control = latencies(1000, 1_000, 21_000);
    let slow = latencies(1000, 2_000, 42_000);
    let c = p95_latency(&latency_rule(20.0), 100, 0.01, 2, &control, &slow);
    assert_eq!(c.status, CheckStatus::Breach, "{c:?}");
    assert_eq!(
        (c.rule.as_str(), c.variant, c.limit),
        ("p95_latency", 2, 0.2)
    );
    let est = c.estimate.unwrap();
    // The histogram is coarse: 2× is seen as +133 %.
    assert!((0.8..1.5).contains(&est), "{c:?}");
    assert!(
        c.ci_low.unwrap() > 0.2 && c.ci_high.unwrap() >= est,
        "{c:?}"
    );
    assert!(c.p_value.unwrap() < 0.01);
    assert!(
        c.message.ends_with("more than the 5% the limit allows"),
        "{}",
        c.message
    );
    assert!(
        c.message
            .contains("slower than 24.0 ms = control p95 +20% (always-valid 99% CI "),
        "{}",
        c.message
    );
}

#[test]
fn p95_latency_ok_when_equal_or_slightly_slower() {
    let control = latencies(1000, 1_000, 21_000);
    for (lo, hi) in [(1_000, 21_000), (1_100, 23_100), (500, 15_000)] {
        let t = latencies(1000, lo, hi);
        let c = p95_latency(&latency_rule(20.0), 100, 0.01, 1, &control, &t);
        assert_eq!(c.status, CheckStatus::Ok, "{lo}..{hi}: {c:?}");
        assert!(c.ci_low.unwrap() <= 0.2, "{c:?}");
    }
    // With no tolerance, a treatment that is uniformly 10 % slower on a
    // large sample is caught.
    let c = p95_latency(
        &latency_rule(0.0),
        100,
        0.01,
        1,
        &latencies(20_000, 1_000, 21_000),
        &latencies(20_000, 1_100, 23_100),
    );
    assert_eq!(c.status, CheckStatus::Breach, "{c:?}");
}

#[test]
fn p95_latency_needs_min_responses() {
    let c = p95_latency(
        &latency_rule(20.0),
        100,
        0.01,
        1,
        &latencies(1000, 1_000, 2_000),
        &latencies(50, 100_000, 200_000),
    );
    assert_eq!(c.status, CheckStatus::NotEnoughData, "{c:?}");
    let c = p95_latency(
        &latency_rule(-1.0),
        100,
        0.01,
        1,
        &latencies(1000, 1_000, 2_000),
        &latencies(1000, 1_000, 2_000),
    );
    assert_eq!(c.status, CheckStatus::Error, "{c:?}");
}

#[test]
fn p95_latency_tolerates_a_treatment_without_slow_responses() {
    let c = p95_latency(
        &latency_rule(20.0),
        100,
        0.01,
        1,
        &latencies(1000, 1_000, 21_000),
        &latencies(1000, 100, 400),
    );
    assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
    assert_eq!(c.p_value, Some(1.0));
    assert!(c.estimate.unwrap() < -0.9);
}

fn metric_rule(json: &str) -> MetricRule {
    serde_json::from_str(json).unwrap()
}

fn values(n: u64, mean: f64, sd: f64) -> MetricData {
    // Two-point sample with that mean and (population) sd.
    let m: Moments = (0..n)
        .map(|i| if i % 2 == 0 { mean - sd } else { mean + sd })
        .collect();
    MetricData::Value(m)
}

#[test]
fn metric_decrease_breach_and_ok() {
    let rule = metric_rule(r#"{"metric": "purchase", "max_decrease_percent": 5}"#);
    let conv = |n, converted| Some(MetricData::Conversion { n, converted });
    let c = metric(&rule, 0.01, 1, conv(10_000, 1_000), conv(10_000, 700));
    assert_eq!(c.status, CheckStatus::Breach, "{c:?}");
    assert_eq!((c.rule.as_str(), c.limit), ("metric:purchase", -0.05));
    assert!((c.estimate.unwrap() + 0.3).abs() < 1e-12);
    assert!(c.ci_high.unwrap() < -0.05 && c.p_value.unwrap() < 0.01);
    assert!(
        c.message
            .starts_with("conversion to \"purchase\" 7.0% vs control 10.0% (-30.0%"),
        "{}",
        c.message
    );
    assert!(
        c.message.ends_with("is below the -5.0% limit"),
        "{}",
        c.message
    );
    // A 2 % drop on the same sample: not clearly beyond −5 %.
    let c = metric(&rule, 0.01, 1, conv(10_000, 1_000), conv(10_000, 980));
    assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
    // An increase never breaches a decrease rule.
    let c = metric(&rule, 0.01, 1, conv(10_000, 1_000), conv(10_000, 2_000));
    assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
    assert_eq!(c.p_value, Some(1.0));
}

#[test]
fn metric_increase_breach_and_ok() {
    let rule = metric_rule(r#"{"metric": "latency_ms", "max_increase_percent": 10}"#);
    let c = metric(
        &rule,
        0.01,
        1,
        Some(values(2000, 100.0, 10.0)),
        Some(values(2000, 130.0, 10.0)),
    );
    assert_eq!(c.status, CheckStatus::Breach, "{c:?}");
    assert!((c.estimate.unwrap() - 0.3).abs() < 1e-9);
    assert!(c.ci_low.unwrap() > 0.1);
    assert!(
        c.message
            .starts_with("\"latency_ms\" per user 130.0 vs control 100.0 (+30.0%"),
        "{}",
        c.message
    );
    assert!(
        c.message.ends_with("exceeds the +10.0% limit"),
        "{}",
        c.message
    );
    let c = metric(
        &rule,
        0.01,
        1,
        Some(values(2000, 100.0, 10.0)),
        Some(values(2000, 105.0, 10.0)),
    );
    assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
    assert!(c
        .message
        .ends_with("does not clearly exceed the +10.0% limit"));
}

#[test]
fn metric_not_enough_data_and_errors() {
    let rule = metric_rule(r#"{"metric": "purchase", "max_decrease_percent": 5}"#);
    let conv = |n, converted| Some(MetricData::Conversion { n, converted });
    let c = metric(&rule, 0.01, 1, None, conv(100, 5));
    assert_eq!(c.status, CheckStatus::NotEnoughData);
    assert_eq!(c.message, "no data for metric \"purchase\" yet");
    let c = metric(&rule, 0.01, 1, conv(1, 1), conv(100, 5));
    assert_eq!(c.status, CheckStatus::NotEnoughData);
    // No control conversions: the relative lift is undefined.
    let c = metric(&rule, 0.01, 1, conv(100, 0), conv(100, 5));
    assert_eq!(c.status, CheckStatus::NotEnoughData);
    assert_eq!(
        c.message,
        "0 conversions to \"purchase\" in control: too few to measure a relative change yet"
    );
    // Constant values: zero standard error.
    let c = metric(
        &rule,
        0.01,
        1,
        Some(values(10, 3.0, 0.0)),
        Some(values(10, 1.0, 0.0)),
    );
    assert_eq!(c.status, CheckStatus::NotEnoughData, "{c:?}");
    // Inconsistent input.
    let c = metric(&rule, 0.01, 1, conv(100, 5), Some(values(10, 3.0, 1.0)));
    assert_eq!(c.status, CheckStatus::Error);
    let c = metric(&rule, 0.01, 1, conv(100, 5), conv(10, 11));
    assert_eq!(c.status, CheckStatus::Error);
    let both =
        metric_rule(r#"{"metric": "x", "max_decrease_percent": 5, "max_increase_percent": 5}"#);
    let c = metric(&both, 0.01, 1, conv(100, 5), conv(100, 5));
    assert_eq!(c.status, CheckStatus::Error);
    let all = metric_rule(r#"{"metric": "x", "max_decrease_percent": 100}"#);
    let c = metric(&all, 0.01, 1, conv(100, 5), conv(100, 5));
    assert_eq!(
        (c.status, c.message.as_str()),
        (
            CheckStatus::Error,
            "max_decrease_percent must be in [0, 100), got 100"
        )
    );
    let neither = metric_rule(r#"{"metric": "x"}"#);
    assert_eq!(
        metric(&neither, 0.01, 1, None, None).status,
        CheckStatus::Error
    );
}

#[test]
fn evaluate_skips_control_and_splits_alpha() {
    let cfg = cfg(r#"{
        "alpha": 0.01,
        "min_responses": 100,
        "error_rate": {"max_increase": 0.01},
        "p95_latency": {"max_increase_percent": 20},
        "metrics": [{"metric": "purchase", "max_decrease_percent": 5},
                    {"metric": "unknown", "max_increase_percent": 5}]
    }"#);
    let mut ok = errors(1000, 10);
    ok.merge(&latencies(1000, 1_000, 21_000));
    let mut bad = errors(1000, 200);
    bad.merge(&latencies(1000, 2_000, 42_000));
    let health = [ok.clone(), bad, ok];
    let metric_fn = |name: &str, v: usize| {
        (name == "purchase").then_some(MetricData::Conversion {
            n: 5000,
            converted: if v == 1 { 300 } else { 500 },
        })
    };
    let checks = evaluate(&cfg, 2, &health, &metric_fn);
    assert_eq!(checks.len(), 8);
    let got: Vec<_> = checks
        .iter()
        .map(|c| (c.variant, c.rule.as_str(), c.status))
        .collect();
    use CheckStatus::*;
    assert_eq!(
        got,
        [
            (0, "error_rate", Ok),
            (0, "p95_latency", Ok),
            (0, "metric:purchase", Ok),
            (0, "metric:unknown", NotEnoughData),
            (1, "error_rate", Breach),
            (1, "p95_latency", Breach),
            (1, "metric:purchase", Breach),
            (1, "metric:unknown", NotEnoughData),
        ]
    );
    // 4 rules × 2 treatments: each check at α = 0.01/8, a 99.88 % sequence.
    assert!(
        checks[4].message.contains("always-valid 99.88% CI"),
        "{}",
        checks[4].message
    );
    // Serialized for reports and the admin API.
    let json = serde_json::to_value(&checks[4]).unwrap();
    assert_eq!(json["status"], "breach");
    assert_eq!(json["rule"], "error_rate");
    assert_eq!(
        serde_json::to_value(NotEnoughData).unwrap(),
        "not_enough_data"
    );
}

#[test]
fn evaluate_without_rules_or_treatments_is_empty() {
    let full = cfg(r#"{"error_rate": {"max_increase": 0.0}}"#);
    assert_eq!(full.alpha, 0.01);
    let h = [errors(500, 0), errors(500, 0)];
    assert_eq!(evaluate(&full, 0, &h, &no_metrics).len(), 1);
    assert!(evaluate(&full, 0, &h[..1], &no_metrics).is_empty());
    assert!(evaluate(&full, 5, &h, &no_metrics).is_empty());
    assert!(evaluate(&cfg("{}"), 0, &h, &no_metrics).is_empty());
    let mut bad = full.clone();
    bad.alpha = 0.0;
    let c = evaluate(&bad, 0, &h, &no_metrics);
    assert_eq!(c[0].status, CheckStatus::Error);
}

#[test]
fn level_formatting() {
    assert_eq!(level(0.005), "99.5");
    assert_eq!(level(0.01), "99");
    assert_eq!(level(0.01 / 6.0), "99.83");
    assert_eq!(num(130.0), "130.0");
    assert_eq!(num(0.012345), "0.01235");
    assert_eq!(ms(1_500_000.0), "1.50 s");
}

#[test]
fn metric_catches_a_variant_that_stopped_converting() {
    // A broken checkout: no purchases at all in the treatment.
    let rule = metric_rule(r#"{"metric": "purchase", "max_decrease_percent": 5}"#);
    let conv = |n, converted| Some(MetricData::Conversion { n, converted });
    let c = metric(&rule, 0.01, 1, conv(1000, 100), conv(1000, 0));
    assert_eq!(c.status, CheckStatus::Breach, "{c:?}");
    assert_eq!(c.estimate, Some(-1.0));
    let revenue = metric_rule(r#"{"metric": "revenue", "max_decrease_percent": 5}"#);
    let zeros = MetricData::Value(Moments::from_values(&[0.0; 500]));
    let c = metric(
        &revenue,
        0.01,
        1,
        Some(values(500, 20.0, 30.0)),
        Some(zeros),
    );
    assert_eq!(c.status, CheckStatus::Breach, "{c:?}");
    // Too few control conversions to measure a relative change.
    let c = metric(&rule, 0.01, 1, conv(1000, 10), conv(1000, 0));
    assert_eq!(c.status, CheckStatus::NotEnoughData, "{c:?}");
    assert_eq!(
        c.message,
        "10 conversions to \"purchase\" in control: too few to measure a relative change yet"
    );
}

#[test]
fn metric_with_a_negative_baseline() {
    // Profit per user from −10 to −12 is a 20 % decrease.
    let rule = metric_rule(r#"{"metric": "profit", "max_decrease_percent": 5}"#);
    let c = metric(
        &rule,
        0.01,
        1,
        Some(values(2000, -10.0, 2.0)),
        Some(values(2000, -12.0, 2.0)),
    );
    assert_eq!(c.status, CheckStatus::Breach, "{c:?}");
    assert!((c.estimate.unwrap() + 0.2).abs() < 1e-9);
    assert!(c.ci_low.unwrap() < -0.2 && c.ci_high.unwrap() > -0.2 && c.ci_high.unwrap() < -0.05);
    // −10 to −9 is an improvement.
    let c = metric(
        &rule,
        0.01,
        1,
        Some(values(2000, -10.0, 2.0)),
        Some(values(2000, -9.0, 2.0)),
    );
    assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
    assert!(c.ci_low.unwrap() > 0.0);
}

/// The halt decision and the reported interval come from the same test:
/// a decrease rule breaches exactly when `ci_high < limit`, an increase rule
/// exactly when `ci_low > limit`, and `p_value < α` exactly then too.
#[test]
fn metric_breach_agrees_with_the_interval() {
    let down = metric_rule(r#"{"metric": "m", "max_decrease_percent": 5}"#);
    let up = metric_rule(r#"{"metric": "m", "max_increase_percent": 5}"#);
    let mut breaches = 0;
    for &mc in &[-50.0, -3.0, 2.0, 10.0, 100.0] {
        for &lift in &[-0.3, -0.1, -0.06, -0.04, 0.0, 0.04, 0.06, 0.1, 0.3] {
            for &(n, sd) in &[(50, 1.0), (400, 5.0), (5000, 20.0)] {
                let mt = mc + lift * f64::abs(mc);
                let (c, t) = (values(n, mc, sd), values(n, mt, sd * 1.3));
                for (rule, is_down) in [(&down, true), (&up, false)] {
                    let r = metric(rule, 0.01, 1, Some(c), Some(t));
                    if r.status == CheckStatus::NotEnoughData {
                        continue;
                    }
                    let (lo, hi) = (r.ci_low.unwrap(), r.ci_high.unwrap());
                    assert!(
                        lo <= r.estimate.unwrap() && r.estimate.unwrap() <= hi,
                        "{r:?}"
                    );
                    let by_ci = if is_down { hi < r.limit } else { lo > r.limit };
                    let breach = r.status == CheckStatus::Breach;
                    assert_eq!(breach, by_ci, "{mc} {lift} {n}: {r:?}");
                    assert_eq!(breach, r.p_value.unwrap() < 0.01, "{r:?}");
                    breaches += usize::from(breach);
                }
            }
        }
    }
    assert!(breaches > 10, "{breaches}");
}

#[test]
fn status_names_are_the_serialized_ones() {
    for s in [
        CheckStatus::Ok,
        CheckStatus::Breach,
        CheckStatus::NotEnoughData,
        CheckStatus::Error,
    ] {
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
    }
}
