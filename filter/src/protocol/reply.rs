//! The sidecar's answer to a batch:
//! `{"accepted": 12, "halted": [{"experiment": "x", "variant": "y"}], "config_needed": false}`.
//!
//! Fields are optional and unknown fields ignored, so older and newer
//! sidecars are understood.

use crate::{Halts, Plan};

/// A parsed answer.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    Ok(Reply {
        accepted: obj.get("accepted").and_then(|a| a.as_u64()),
        halted,
        config_needed: obj.get("config_needed").and_then(|c| c.as_bool()),
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
        let r = parse_reply(&p, br#"{"halted": []}"#).unwrap();
        assert!(r.halted.unwrap().is_empty());
        assert!(matches!(parse_reply(&p, b"ok"), Err(ReplyError::Json(_))));
        assert!(matches!(
            parse_reply(&p, b"[1]"),
            Err(ReplyError::NotAnObject)
        ));
    }
}
