//! Exposures waiting to be shipped to the sidecar, and the batch format
//! they are shipped in (`POST /v1/exposures`, see sidecar/EVALUATION.md).
//!
//! The per-request side is [`ExposureRing::push`]: a copy of the user id
//! into a preallocated slot, no allocation, no hostcall. When the ring is
//! full the oldest exposure is overwritten and counted as dropped, so a slow
//! or absent sidecar costs memory that was reserved up front and never
//! slows requests. Batches are written on the flush tick, where allocation
//! is fine.

use crate::Plan;
use std::io::Write;

/// Longest user id shipped; the sidecar accepts ids of 1 to 256 bytes.
/// Longer ids are counted as dropped.
pub const MAX_USER_BYTES: usize = 256;

#[derive(Clone, Copy)]
struct Slot {
    t_ms: u64,
    experiment: u16,
    variant: u16,
    len: u16,
    user: [u8; MAX_USER_BYTES],
}

const EMPTY: Slot = Slot {
    t_ms: 0,
    experiment: 0,
    variant: 0,
    len: 0,
    user: [0; MAX_USER_BYTES],
};

/// The batch's `experiments` table for `plan`: names and variant names in
/// index order, which the rows' indexes refer to.
pub fn experiments_json(plan: &Plan) -> String {
    let table: Vec<serde_json::Value> = plan
        .experiments()
        .iter()
        .map(|e| {
            serde_json::json!({
                "name": e.name(),
                "variants": e.variants().iter().map(|v| v.name()).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::Value::from(table).to_string()
}

/// A fixed-capacity ring of exposures.
pub struct ExposureRing {
    slots: Box<[Slot]>,
    /// Index of the oldest entry.
    head: usize,
    len: usize,
    dropped: u64,
}

impl ExposureRing {
    /// A ring holding `capacity` exposures (at least 1), allocated now.
    pub fn new(capacity: usize) -> Self {
        ExposureRing {
            slots: vec![EMPTY; capacity.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Exposures lost since the last batch (ring full, or id too long).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Records that `user` was exposed to `variant` of experiment index
    /// `experiment` at `t_ms`.
    pub fn push(&mut self, t_ms: u64, experiment: usize, variant: usize, user: &[u8]) {
        if user.is_empty() || user.len() > MAX_USER_BYTES {
            self.dropped += 1;
            return;
        }
        let cap = self.slots.len();
        let at = if self.len == cap {
            // Full: overwrite the oldest.
            let at = self.head;
            self.head = (self.head + 1) % cap;
            self.dropped += 1;
            at
        } else {
            self.len += 1;
            (self.head + self.len - 1) % cap
        };
        let s = &mut self.slots[at];
        s.t_ms = t_ms;
        s.experiment = experiment as u16;
        s.variant = variant as u16;
        s.len = user.len() as u16;
        s.user[..user.len()].copy_from_slice(user);
    }

    /// Moves up to `max` of the oldest exposures, and the dropped count, into
    /// a batch body written to `out` (replacing its contents). Returns the
    /// number of exposures written.
    ///
    /// ```json
    /// {"instance": "...", "seq": 7, "dropped": 0,
    ///  "experiments": [{"name": "ranker", "variants": ["control", "treatment"]}],
    ///  "exposures": [[t_ms, experiment_index, variant_index, "user"], ...]}
    /// ```
    ///
    /// User ids that are not UTF-8 are sent with U+FFFD in place of the bad
    /// bytes (JSON strings are Unicode), as `abmesh assign` prints them.
    ///
    /// `experiments` is the plan's table as [`experiments_json`] writes it,
    /// made once when the plugin is configured.
    pub fn write_batch(
        &mut self,
        experiments: &str,
        instance: &str,
        seq: u64,
        max: usize,
        out: &mut Vec<u8>,
    ) -> usize {
        out.clear();
        let n = self.len.min(max);
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{{\"instance\":");
        let _ = serde_json::to_writer(&mut *out, instance);
        let _ = write!(
            out,
            ",\"seq\":{seq},\"dropped\":{},\"experiments\":",
            self.dropped
        );
        out.extend_from_slice(experiments.as_bytes());
        out.extend_from_slice(b",\"exposures\":[");
        let cap = self.slots.len();
        for i in 0..n {
            let s = &self.slots[(self.head + i) % cap];
            if i > 0 {
                out.push(b',');
            }
            let _ = write!(out, "[{},{},{},", s.t_ms, s.experiment, s.variant);
            let user = String::from_utf8_lossy(&s.user[..usize::from(s.len)]);
            let _ = serde_json::to_writer(&mut *out, &*user);
            out.push(b']');
        }
        out.extend_from_slice(b"]}");
        self.head = (self.head + n) % cap;
        self.len -= n;
        self.dropped = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan::from_json(
            br#"{"experiments": [{"name": "ranker", "variants": [{"name": "control", "weight": 1}, {"name": "treatment", "weight": 1}]}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn batches_oldest_first_and_drops_oldest_when_full() {
        let mut r = ExposureRing::new(3);
        for (i, u) in ["a", "b", "c", "d"].iter().enumerate() {
            r.push(100 + i as u64, 0, i % 2, u.as_bytes());
        }
        assert_eq!((r.len(), r.dropped()), (3, 1));
        r.push(7, 0, 0, &[b'x'; MAX_USER_BYTES + 1]);
        assert_eq!(r.dropped(), 2);
        let mut out = Vec::new();
        assert_eq!(
            r.write_batch(&experiments_json(&plan()), "i-1", 5, 2, &mut out),
            2
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["instance"], "i-1");
        assert_eq!(v["seq"], 5);
        assert_eq!(v["dropped"], 2);
        assert_eq!(v["experiments"][0]["variants"][1], "treatment");
        assert_eq!(
            v["exposures"],
            serde_json::json!([[101, 0, 1, "b"], [102, 0, 0, "c"]])
        );
        assert_eq!(
            r.write_batch(&experiments_json(&plan()), "i-1", 6, 10, &mut out),
            1
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["dropped"], 0);
        assert_eq!(v["exposures"], serde_json::json!([[103, 0, 1, "d"]]));
        assert!(r.is_empty());
    }

    #[test]
    fn user_ids_are_escaped() {
        let mut r = ExposureRing::new(4);
        r.push(1, 0, 0, b"q\"uote\\\n");
        r.push(1, 0, 0, b"\xffbad");
        let mut out = Vec::new();
        r.write_batch(&experiments_json(&plan()), "i", 1, 10, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["exposures"][0][3], "q\"uote\\\n");
        assert_eq!(v["exposures"][1][3], "\u{fffd}bad");
    }
}
