//! Exposures waiting to be shipped to the sidecar, and the batch format
//! they are shipped in (`POST /v1/exposures`, see sidecar/EVALUATION.md).
//!
//! The per-request side is [`ExposureRing::push`]: a copy of the user id
//! into a preallocated slot, no allocation, no hostcall. When the ring is
//! full the oldest exposure is overwritten and counted as dropped, so a slow
//! or absent sidecar costs memory that was reserved up front and never
//! slows requests. Batches are written on the flush tick, where allocation
//! is fine.

use crate::health::HealthTable;
use crate::{Halts, Plan};
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

/// Exposures shipped recently, so that a user's repeated requests are not
/// shipped again: the sidecar keeps only a user's first exposure, and
/// most traffic is users coming back. A direct-mapped table of 64-bit
/// fingerprints of (experiment, variant, user), allocated once: a lookup is
/// one cheap hash of the id and one compare, no allocation. Two keys that
/// share a slot evict each other, which only costs a re-send (harmless);
/// a wrongly skipped exposure needs two keys with the same 64-bit
/// fingerprint.
pub struct RecentExposures {
    slots: Box<[u64]>,
    shift: u32,
}

impl RecentExposures {
    /// `slots` is a power of two (validated with the config); 0 keeps
    /// nothing, so every exposure is new.
    pub fn new(slots: usize) -> Self {
        let slots = if slots == 0 {
            0
        } else {
            slots.next_power_of_two()
        };
        RecentExposures {
            slots: vec![0; slots].into_boxed_slice(),
            shift: 64 - slots.max(1).trailing_zeros(),
        }
    }

    /// True the first time (lately) this user was seen in this variant;
    /// remembers it.
    pub fn first_time(&mut self, experiment: usize, variant: usize, user: &[u8]) -> bool {
        if self.slots.is_empty() {
            return true;
        }
        let key = fingerprint(experiment, variant, user) | 1; // 0 = empty slot
        let i = (key >> self.shift) as usize;
        if self.slots[i] == key {
            return false;
        }
        self.slots[i] = key;
        true
    }
}

/// A fast 64-bit hash (FxHash's multiply-rotate over 8-byte words, with a
/// final avalanche), not keyed: it only dedups, it never decides who is in
/// which variant.
fn fingerprint(experiment: usize, variant: usize, user: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = ((experiment as u64) << 32 | variant as u64).wrapping_mul(K);
    let mut words = user.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    h = (h.rotate_left(5) ^ u64::from_le_bytes(tail) ^ (user.len() as u64) << 56).wrapping_mul(K);
    // splitmix64's finalizer, so the top bits (the slot) depend on all.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
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
    /// a batch body written to `out` (replacing its contents), together with
    /// the `health` counters (which are then reset). Returns the number of
    /// exposures written.
    ///
    /// ```json
    /// {"instance": "...", "seq": 7, "dropped": 0,
    ///  "config_id": "0123456789abcdef", "config": {...verbatim...},
    ///  "experiments": [{"name": "ranker", "variants": ["control", "treatment"]}],
    ///  "health": [[e, v, requests, [s1xx, .., s5xx], [h0, .., h24]], ...],
    ///  "exposures": [[t_ms, experiment_index, variant_index, "user"], ...]}
    /// ```
    ///
    /// `config` is present only when [`BatchMeta::config`] is given, and
    /// `health` only when `health` is.
    ///
    /// User ids that are not UTF-8 are sent with U+FFFD in place of the bad
    /// bytes (JSON strings are Unicode), as `abmesh assign` prints them.
    pub fn write_batch(
        &mut self,
        meta: &BatchMeta<'_>,
        health: Option<&mut HealthTable>,
        max: usize,
        out: &mut Vec<u8>,
    ) -> usize {
        out.clear();
        let n = self.len.min(max);
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{{\"instance\":");
        let _ = serde_json::to_writer(&mut *out, meta.instance);
        let _ = write!(
            out,
            ",\"seq\":{},\"dropped\":{},\"config_id\":",
            meta.seq, self.dropped
        );
        let _ = serde_json::to_writer(&mut *out, meta.config_id);
        if let Some(config) = meta.config {
            out.extend_from_slice(b",\"config\":");
            out.extend_from_slice(config);
        }
        out.extend_from_slice(b",\"experiments\":");
        out.extend_from_slice(meta.experiments.as_bytes());
        if let Some(h) = health {
            out.extend_from_slice(b",\"health\":");
            h.write_json(out);
            h.reset();
        }
        out.extend_from_slice(b",\"exposures\":[");
        let cap = self.slots.len();
        // Runs on the tick for every exposure, so the rows are written by
        // hand: `write!` and serde_json's escaping cost several times more.
        out.reserve(n * 64);
        // Exposures of one tick share their time: its digits are reused.
        let (mut t_last, mut t_digits) = (None, Vec::with_capacity(24));
        let mut at = self.head;
        for i in 0..n {
            let s = &self.slots[at];
            at = if at + 1 == cap { 0 } else { at + 1 };
            if i > 0 {
                out.push(b',');
            }
            if t_last != Some(s.t_ms) {
                t_last = Some(s.t_ms);
                t_digits.clear();
                t_digits.push(b'[');
                push_u64(&mut t_digits, s.t_ms);
                t_digits.push(b',');
            }
            out.extend_from_slice(&t_digits);
            push_u64(out, u64::from(s.experiment));
            out.push(b',');
            push_u64(out, u64::from(s.variant));
            out.push(b',');
            let user = &s.user[..usize::from(s.len)];
            if user
                .iter()
                .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
            {
                out.push(b'"');
                out.extend_from_slice(user);
                out.push(b'"');
            } else {
                let user = String::from_utf8_lossy(user);
                let _ = serde_json::to_writer(&mut *out, &*user);
            }
            out.push(b']');
        }
        out.extend_from_slice(b"]}");
        self.head = (self.head + n) % cap;
        self.len -= n;
        self.dropped = 0;
        n
    }
}

/// Appends the decimal digits of `n`.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

/// The fields of a batch besides exposures and health.
#[derive(Clone, Copy, Debug)]
pub struct BatchMeta<'a> {
    /// Unique per filter instance (VM lifetime).
    pub instance: &'a str,
    /// Batch number; a retried batch keeps its number.
    pub seq: u64,
    /// The plan's table as [`experiments_json`] writes it, made once when
    /// the plugin is configured.
    pub experiments: &'a str,
    /// [`crate::config_id`] of the configuration bytes.
    pub config_id: &'a str,
    /// The raw configuration bytes, embedded verbatim as `config`. They
    /// must be the bytes [`Plan::from_json`] accepted (so they are one JSON
    /// object and nothing else).
    pub config: Option<&'a [u8]>,
}

/// The sidecar's answer to a batch:
/// `{"accepted": 12, "halted": [{"experiment": "x", "variant": "y"}], "config_needed": false}`.
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

/// Reads the sidecar's answer to a batch. Fields are optional and unknown
/// fields ignored, so older and newer sidecars are understood; the error is
/// for a body that is not a JSON object.
pub fn parse_reply(plan: &Plan, body: &[u8]) -> Result<Reply, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let Some(obj) = v.as_object() else {
        return Err("not a JSON object".into());
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
        {"name": "banner", "control": "b", "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}, {"name": "c", "weight": 1}]}]}
"#;

    fn plan() -> Plan {
        Plan::from_json(CONFIG.as_bytes()).unwrap()
    }

    fn meta<'a>(experiments: &'a str, seq: u64) -> BatchMeta<'a> {
        BatchMeta {
            instance: "i-1",
            seq,
            experiments,
            config_id: "0123456789abcdef",
            config: None,
        }
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
        let table = experiments_json(&plan());
        let mut out = Vec::new();
        assert_eq!(r.write_batch(&meta(&table, 5), None, 2, &mut out), 2);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["instance"], "i-1");
        assert_eq!(v["seq"], 5);
        assert_eq!(v["dropped"], 2);
        assert_eq!(v["config_id"], "0123456789abcdef");
        assert!(v.get("config").is_none() && v.get("health").is_none());
        assert_eq!(v["experiments"][0]["variants"][1], "treatment");
        assert_eq!(
            v["exposures"],
            serde_json::json!([[101, 0, 1, "b"], [102, 0, 0, "c"]])
        );
        assert_eq!(r.write_batch(&meta(&table, 6), None, 10, &mut out), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["dropped"], 0);
        assert_eq!(v["exposures"], serde_json::json!([[103, 0, 1, "d"]]));
        assert!(r.is_empty());
        // An empty batch is still a well-formed batch (the halt poll).
        assert_eq!(r.write_batch(&meta(&table, 7), None, 10, &mut out), 0);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["seq"].as_u64(), v["exposures"].as_array().map(Vec::len)),
            (Some(7), Some(0))
        );
    }

    #[test]
    fn config_verbatim_and_health_are_embedded() {
        let p = plan();
        let table = experiments_json(&p);
        let mut health = HealthTable::new(&p);
        health.record_request(1, 2);
        health.record_response(1, 2, 502, 800);
        let mut r = ExposureRing::new(4);
        r.push(9, 1, 2, b"u");
        let mut out = Vec::new();
        let id = crate::config_id(CONFIG.as_bytes());
        let m = BatchMeta {
            config_id: &id,
            config: Some(CONFIG.as_bytes()),
            ..meta(&table, 1)
        };
        r.write_batch(&m, Some(&mut health), 10, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["config_id"], id.as_str());
        let embedded = serde_json::to_vec(&v["config"]).unwrap();
        assert!(Plan::from_json(&embedded).is_ok());
        assert_eq!(
            v["config"],
            serde_json::from_str::<serde_json::Value>(CONFIG).unwrap()
        );
        let mut hist = vec![0u64; 25];
        hist[1] = 1;
        assert_eq!(
            v["health"],
            serde_json::json!([[1, 2, 1, [0, 0, 0, 0, 1], hist]])
        );
        assert!(health.is_empty(), "taking a batch resets the counters");
        r.write_batch(&meta(&table, 2), Some(&mut health), 10, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["health"], serde_json::json!([]));
    }

    #[test]
    fn config_id_is_siphash13_hex() {
        let id = crate::config_id(b"");
        assert_eq!(id.len(), 16);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(crate::config_id(b"{}"), crate::config_id(b"{} "));
        // Independent reference: the pure-Python SipHash-1-3 of
        // benches/envoy/render.py, `siphash13(0, 0, data)`.
        assert_eq!(crate::config_id(b""), "d1fba762150c532c");
        assert_eq!(
            crate::config_id(br#"{"experiments": []}"#),
            "f8ad1df3030097e5"
        );
        // SipHash-1-3, key 0: pinned so filter and sidecar builds agree.
        use std::hash::Hasher;
        let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
        h.write(CONFIG.as_bytes());
        assert_eq!(
            crate::config_id(CONFIG.as_bytes()),
            format!("{:016x}", h.finish())
        );
    }

    #[test]
    fn replies_become_halts() {
        let p = plan();
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
        assert!(parse_reply(&p, b"ok").is_err());
        assert!(parse_reply(&p, b"[1]").is_err());
    }

    #[test]
    fn recent_exposures_skip_repeats_and_forget_on_collision() {
        let mut r = RecentExposures::new(1024);
        assert!(r.first_time(0, 1, b"alice"));
        assert!(!r.first_time(0, 1, b"alice"));
        // Another variant or experiment is another exposure.
        assert!(r.first_time(0, 0, b"alice"));
        assert!(r.first_time(1, 1, b"alice"));
        // Ids that differ only past the first word, or in length.
        assert!(r.first_time(0, 1, b"user-0000000001"));
        assert!(r.first_time(0, 1, b"user-0000000002"));
        assert!(r.first_time(0, 1, b"alice\0"));
        // 5 000 distinct users in 1 024 slots: every one is new the first
        // time, and most are evicted by later ones (re-sent, harmless).
        let mut r = RecentExposures::new(1024);
        let users: Vec<String> = (0..5000).map(|i| format!("u-{i}")).collect();
        assert!(users.iter().all(|u| r.first_time(0, 0, u.as_bytes())));
        let kept = users
            .iter()
            .filter(|u| !r.first_time(0, 0, u.as_bytes()))
            .count();
        assert!(kept < 1024, "{kept}");
        // Off: everything is new.
        let mut off = RecentExposures::new(0);
        assert!(off.first_time(0, 0, b"a") && off.first_time(0, 0, b"a"));
    }

    #[test]
    fn user_ids_are_escaped() {
        let mut r = ExposureRing::new(4);
        r.push(1, 0, 0, b"q\"uote\\\n");
        r.push(1, 0, 0, b"\xffbad");
        let mut out = Vec::new();
        let table = experiments_json(&plan());
        r.write_batch(&meta(&table, 1), None, 10, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["exposures"][0][3], "q\"uote\\\n");
        assert_eq!(v["exposures"][1][3], "\u{fffd}bad");
    }
}
