//! The sidecar's answer to a batch:
//!
//! ```json
//! {"accepted": 12, "halted": [{"experiment": "x", "variant": "y"}], "config_needed": false,
//!  "allocations": [{"experiment": "ranker", "period": 3,
//!                   "weights": {"control": 0.5, "a": 0.15, "b": 0.35}}]}
//! ```
//!
//! Fields are optional and unknown fields ignored, so older and newer
//! sidecars are understood. Like halts, allocations are read leniently: an
//! entry the plan cannot use is left out and the rest still apply.

use crate::{Halts, Plan};

/// One bandit experiment's weights for one allocation period, from the
/// answer's `allocations` ([`crate::Allocation::set`] takes them).
#[derive(Clone, Debug, PartialEq)]
pub struct AllocationUpdate {
    /// Index of the experiment in the plan (it has a `bandit`).
    pub experiment: usize,
    /// The period the weights are for (≥ 1).
    pub period: u32,
    /// Each variant's weight, in the plan's variant order: finite, ≥ 0, not
    /// all 0 (not necessarily summing to 1).
    pub weights: Box<[f64]>,
}

/// A parsed answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// Exposures the sidecar took, if it said.
    pub accepted: Option<u64>,
    /// Every currently halted variant, when the answer has `halted` (the
    /// filter then replaces its set with this one); `None` when it has not
    /// (an older sidecar), which keeps the current set. Names the plan does
    /// not know, and control variants (see [`Halts::halt`]), are left out.
    pub halted: Option<Halts>,
    /// Whether the sidecar wants the configuration in the next batch, when
    /// it said.
    pub config_needed: Option<bool>,
    /// Bandit weights, when the answer has `allocations`; `None` (and an
    /// empty list) keeps every experiment's current weights. Entries the
    /// plan cannot use are left out: an unknown experiment or one without
    /// a `bandit`, a period that is not a whole number in 1..=u32::MAX,
    /// `weights` that name a variant the experiment does not have or leave
    /// one of its variants out, or a weight that is negative or not a
    /// number, or weights that are all 0. An entry for a period the filter
    /// is already at or past is kept here and ignored by
    /// [`crate::Allocation::set`].
    pub allocations: Option<Vec<AllocationUpdate>>,
}

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("not a JSON object")]
    NotAnObject,
}

/// Reads the sidecar's answer to a batch; the error is for a body that is
/// not a JSON object.
pub fn parse_reply(plan: &Plan, body: &[u8]) -> Result<Reply, ReplyError> {
    let v: serde_json::Value = serde_json::from_slice(body)?;
    let Some(obj) = v.as_object() else {
        return Err(ReplyError::NotAnObject);
    };
    let halted = obj.get("halted").and_then(|h| h.as_array()).map(|list| {
        let mut halts = Halts::new(plan);
        for item in list {
            let name = |k: &str| item.get(k).and_then(|x| x.as_str());
            let (Some(exp), Some(var)) = (name("experiment"), name("variant")) else {
                continue;
            };
            let Some(e) = plan.experiments().iter().position(|x| x.name() == exp) else {
                continue;
            };
            if let Some(v) = plan.experiments()[e].variant_index(var) {
                halts.halt(e, v);
            }
        }
        halts
    });
    let allocations = obj
        .get("allocations")
        .and_then(|a| a.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|item| allocation_update(plan, item))
                .collect()
        });
    Ok(Reply {
        accepted: obj.get("accepted").and_then(|a| a.as_u64()),
        halted,
        config_needed: obj.get("config_needed").and_then(|c| c.as_bool()),
        allocations,
    })
}

/// One entry of `allocations`, or `None` when the plan cannot use it (see
/// [`Reply::allocations`]).
fn allocation_update(plan: &Plan, item: &serde_json::Value) -> Option<AllocationUpdate> {
    let name = item.get("experiment")?.as_str()?;
    let experiment = plan.experiments().iter().position(|x| x.name() == name)?;
    let exp = &plan.experiments()[experiment];
    exp.bandit()?;
    let period = u32::try_from(item.get("period")?.as_u64()?).ok()?;
    if period == 0 {
        return None;
    }
    let given = item.get("weights")?.as_object()?;
    if given.len() != exp.variants().len() {
        return None;
    }
    let mut weights = vec![f64::NAN; exp.variants().len()].into_boxed_slice();
    for (variant, w) in given {
        let w = w.as_f64().filter(|w| w.is_finite() && *w >= 0.0)?;
        weights[exp.variant_index(variant)?] = w;
    }
    // Each of the (distinct) keys named a variant, and there are as many
    // as variants, so every variant got its weight.
    if weights.iter().all(|&w| w == 0.0) {
        return None;
    }
    Some(AllocationUpdate {
        experiment,
        period,
        weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"experiments": [{"name": "ranker", "variants": [{"name": "control", "weight": 1}, {"name": "treatment", "weight": 1}]},
        {"name": "banner", "control": "b", "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}, {"name": "c", "weight": 1}]}]}"#;

    #[test]
    fn replies_become_halts() {
        let p = Plan::from_json(CONFIG.as_bytes()).unwrap();
        let r = parse_reply(
            &p,
            br#"{"accepted": 3, "duplicate_batch": false, "config_needed": true, "halted": [
                {"experiment": "ranker", "variant": "treatment"},
                {"experiment": "banner", "variant": "c"},
                {"experiment": "banner", "variant": "b"},
                {"experiment": "gone", "variant": "treatment"},
                {"experiment": "ranker", "variant": "v9"},
                {"experiment": "ranker"}, 7]}"#,
        )
        .unwrap();
        assert_eq!(r.accepted, Some(3));
        assert_eq!(r.config_needed, Some(true));
        let h = r.halted.unwrap();
        // banner's control "b" and unknown names are ignored.
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![(0, 1), (1, 2)]);

        let r = parse_reply(&p, br#"{"accepted": 0}"#).unwrap();
        assert_eq!((r.halted, r.config_needed), (None, None));
        assert_eq!(r.allocations, None);
        let r = parse_reply(&p, br#"{"halted": []}"#).unwrap();
        assert!(r.halted.unwrap().is_empty());
        assert!(matches!(parse_reply(&p, b"ok"), Err(ReplyError::Json(_))));
        assert!(matches!(
            parse_reply(&p, b"[1]"),
            Err(ReplyError::NotAnObject)
        ));
    }

    const BANDIT: &str = r#"{"experiments": [
        {"name": "plain", "variants": [{"name": "c", "weight": 1}, {"name": "t", "weight": 1}, {"name": "u", "weight": 1}]},
        {"name": "ranker", "bandit": {"metric": "purchase"},
         "variants": [{"name": "control", "weight": 2}, {"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}]}"#;

    fn allocations(p: &Plan, list: &str) -> Vec<AllocationUpdate> {
        let body = format!(r#"{{"accepted": 1, "allocations": {list}}}"#);
        parse_reply(p, body.as_bytes())
            .unwrap()
            .allocations
            .unwrap()
    }

    #[test]
    fn allocations_are_read_in_variant_order() {
        let p = Plan::from_json(BANDIT.as_bytes()).unwrap();
        let got = allocations(
            &p,
            r#"[{"experiment": "ranker", "period": 3, "weights": {"b": 0.35, "control": 0.5, "a": 0.15}, "posterior": [1]}]"#,
        );
        assert_eq!(
            got,
            [AllocationUpdate {
                experiment: 1,
                period: 3,
                weights: [0.5, 0.15, 0.35].into(),
            }]
        );
        // Zero weights are fine (not all of them), and integers are numbers.
        let got = allocations(
            &p,
            r#"[{"experiment": "ranker", "period": 4294967295, "weights": {"control": 1, "a": 0, "b": 3}}]"#,
        );
        assert_eq!(
            (got[0].period, &got[0].weights[..]),
            (u32::MAX, &[1.0, 0.0, 3.0][..])
        );
        // Absent, or not a list: keep everything.
        let r = parse_reply(&p, br#"{"allocations": {"ranker": 1}}"#).unwrap();
        assert_eq!(r.allocations, None);
        assert_eq!(allocations(&p, "[]"), []);
    }

    #[test]
    fn unusable_allocations_are_skipped_and_the_rest_kept() {
        let p = Plan::from_json(BANDIT.as_bytes()).unwrap();
        let ok = r#"{"experiment": "ranker", "period": 2, "weights": {"control": 0.5, "a": 0.25, "b": 0.25}}"#;
        for bad in [
            // An unknown experiment, and one without a bandit.
            r#"{"experiment": "gone", "period": 2, "weights": {"control": 1, "a": 1, "b": 1}}"#,
            r#"{"experiment": "plain", "period": 2, "weights": {"c": 1, "t": 1, "u": 1}}"#,
            // Periods: missing, 0, fractional, negative, too large, a string.
            r#"{"experiment": "ranker", "weights": {"control": 1, "a": 1, "b": 1}}"#,
            r#"{"experiment": "ranker", "period": 0, "weights": {"control": 1, "a": 1, "b": 1}}"#,
            r#"{"experiment": "ranker", "period": 1.5, "weights": {"control": 1, "a": 1, "b": 1}}"#,
            r#"{"experiment": "ranker", "period": -1, "weights": {"control": 1, "a": 1, "b": 1}}"#,
            r#"{"experiment": "ranker", "period": 4294967296, "weights": {"control": 1, "a": 1, "b": 1}}"#,
            r#"{"experiment": "ranker", "period": "3", "weights": {"control": 1, "a": 1, "b": 1}}"#,
            // A variant missing, an unknown one, one in place of another.
            r#"{"experiment": "ranker", "period": 2, "weights": {"control": 1, "a": 1}}"#,
            r#"{"experiment": "ranker", "period": 2, "weights": {"control": 1, "a": 1, "b": 1, "z": 1}}"#,
            r#"{"experiment": "ranker", "period": 2, "weights": {"control": 1, "a": 1, "z": 1}}"#,
            // Weights: negative, not numbers, all zero, absent, a list.
            r#"{"experiment": "ranker", "period": 2, "weights": {"control": 1, "a": -0.1, "b": 1}}"#,
            r#"{"experiment": "ranker", "period": 2, "weights": {"control": 1, "a": null, "b": 1}}"#,
            r#"{"experiment": "ranker", "period": 2, "weights": {"control": 1, "a": "1", "b": 1}}"#,
            r#"{"experiment": "ranker", "period": 2, "weights": {"control": 0, "a": 0, "b": 0}}"#,
            r#"{"experiment": "ranker", "period": 2}"#,
            r#"{"experiment": "ranker", "period": 2, "weights": [1, 1, 1]}"#,
            r#"{"period": 2, "weights": {"control": 1, "a": 1, "b": 1}}"#,
            r#"7"#,
        ] {
            let got = allocations(&p, &format!("[{bad}, {ok}]"));
            assert_eq!(got.len(), 1, "{bad} was not skipped");
            assert_eq!((got[0].experiment, got[0].period), (1, 2), "{bad}");
        }
    }
}
