//! The batch the filter POSTs to the sidecar (`POST /v1/exposures`):
//!
//! ```json
//! {"instance": "...", "seq": 7,
//!  "config_id": "0123456789abcdef", "config": {...verbatim...},
//!  "experiments": [{"name": "ranker", "variants": ["control", "treatment"]}],
//!  "health": [[e, v, requests, [s1xx, .., s5xx], [h0, .., h24]], ...],
//!  "exposures": [[t_ms, experiment_index, variant_index, "user"],
//!                [t_ms, experiment_index, variant_index, "user", period], ...],
//!  "dropped": 0}
//! ```
//!
//! An exposure row has a 5th element, the bandit allocation period whose
//! weights assigned the user ([`crate::Allocation`]), only when that period
//! is above 0: rows by the configured weights stay as they always were, so
//! a configuration without a `bandit` writes the same batches as before.
//!
//! `dropped` comes last because it counts rows left out while the
//! exposures are written (see [`write_batch`]); the sidecar reads fields in
//! any order.
//!
//! `config` is present only when the sidecar asked for it (and in the first
//! batch), `health` only when the glue records health. Batches are written
//! on the flush tick, where allocation is fine; the rows are written by
//! hand because a tick may carry thousands of them.

use super::MAX_USER_BYTES;
use crate::exposures::ExposureRing;
use crate::health::HealthTable;
use crate::Plan;
use std::io::Write;

/// The fields of a batch besides exposures and health.
#[derive(Clone, Copy, Debug)]
pub struct BatchMeta<'a> {
    /// Unique per filter instance ([`super::instance_id`]).
    pub instance: &'a str,
    /// Batch number; a retried batch keeps its number.
    pub seq: u64,
    /// The plan's table as [`experiments_json`] writes it, made once when
    /// the plugin is configured.
    pub experiments: &'a str,
    /// [`super::config_id`] of the configuration bytes.
    pub config_id: &'a str,
    /// The raw configuration bytes, embedded verbatim as `config`. They
    /// must be the bytes [`Plan::from_json`] accepted (so they are one JSON
    /// object and nothing else).
    pub config: Option<&'a [u8]>,
}

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

/// Moves up to `max` of the oldest exposures of `ring`, and its dropped
/// count, into a batch body written to `out` (replacing its contents),
/// together with the `health` counters (which are then reset). Returns the
/// number of exposures written.
///
/// User ids that are not UTF-8 are sent with U+FFFD in place of the bad
/// bytes (JSON strings are Unicode), as `abmesh assign` prints them. One
/// that this makes longer than [`MAX_USER_BYTES`] (U+FFFD is 3 bytes) is
/// counted as dropped rather than sent: the sidecar would refuse the whole
/// batch for it, and a refused batch is re-sent unchanged. So `dropped` is
/// written after the exposures.
pub fn write_batch(
    meta: &BatchMeta<'_>,
    ring: &mut ExposureRing,
    health: Option<&mut HealthTable>,
    max: usize,
    out: &mut Vec<u8>,
) -> usize {
    out.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{{\"instance\":");
    let _ = serde_json::to_writer(&mut *out, meta.instance);
    let _ = write!(out, ",\"seq\":{},\"config_id\":", meta.seq);
    let _ = serde_json::to_writer(&mut *out, meta.config_id);
    if let Some(config) = meta.config {
        out.extend_from_slice(b",\"config\":");
        out.extend_from_slice(config);
    }
    out.extend_from_slice(b",\"experiments\":");
    out.extend_from_slice(meta.experiments.as_bytes());
    if let Some(h) = health {
        out.extend_from_slice(b",\"health\":");
        super::health::write_rows(h, out);
        h.reset();
    }
    out.extend_from_slice(b",\"exposures\":[");
    out.reserve(ring.len().min(max) * 64);
    // Exposures of one tick share their time: its digits are reused.
    let (mut t_last, mut t_digits) = (None, Vec::with_capacity(24));
    let mut first = true;
    let mut dropped = ring.dropped();
    let mut written = 0;
    ring.take_oldest(max, |t_ms, experiment, variant, period, user| {
        let plain = user
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
        let lossy = (!plain).then(|| String::from_utf8_lossy(user));
        if lossy.as_ref().is_some_and(|u| u.len() > MAX_USER_BYTES) {
            dropped += 1;
            return;
        }
        written += 1;
        if !first {
            out.push(b',');
        }
        first = false;
        if t_last != Some(t_ms) {
            t_last = Some(t_ms);
            t_digits.clear();
            t_digits.push(b'[');
            push_u64(&mut t_digits, t_ms);
            t_digits.push(b',');
        }
        out.extend_from_slice(&t_digits);
        push_u64(out, u64::from(experiment));
        out.push(b',');
        push_u64(out, u64::from(variant));
        out.push(b',');
        match &lossy {
            None => {
                out.push(b'"');
                out.extend_from_slice(user);
                out.push(b'"');
            }
            Some(user) => {
                let _ = serde_json::to_writer(&mut *out, &**user);
            }
        }
        if period > 0 {
            out.push(b',');
            push_u64(out, u64::from(period));
        }
        out.push(b']');
    });
    out.extend_from_slice(b"],\"dropped\":");
    push_u64(out, dropped);
    out.push(b'}');
    written
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_USER_BYTES;

    const CONFIG: &str = r#"{"experiments": [{"name": "ranker", "variants": [{"name": "control", "weight": 1}, {"name": "treatment", "weight": 1}]},
        {"name": "banner", "control": "b", "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}, {"name": "c", "weight": 1}]}]}
"#;

    fn plan() -> Plan {
        Plan::from_json(CONFIG.as_bytes()).unwrap()
    }

    fn meta(experiments: &str, seq: u64) -> BatchMeta<'_> {
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
        assert_eq!(write_batch(&meta(&table, 5), &mut r, None, 2, &mut out), 2);
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
        assert_eq!(write_batch(&meta(&table, 6), &mut r, None, 10, &mut out), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["dropped"], 0);
        assert_eq!(v["exposures"], serde_json::json!([[103, 0, 1, "d"]]));
        assert!(r.is_empty());
        // An empty batch is still a well-formed batch (the halt poll).
        assert_eq!(write_batch(&meta(&table, 7), &mut r, None, 10, &mut out), 0);
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
        write_batch(&m, &mut r, Some(&mut health), 10, &mut out);
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
        write_batch(&meta(&table, 2), &mut r, Some(&mut health), 10, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["health"], serde_json::json!([]));
    }

    #[test]
    fn user_ids_are_escaped() {
        let mut r = ExposureRing::new(4);
        r.push(1, 0, 0, b"q\"uote\\\n");
        r.push(1, 0, 0, b"\xffbad");
        let mut out = Vec::new();
        let table = experiments_json(&plan());
        write_batch(&meta(&table, 1), &mut r, None, 10, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["exposures"][0][3], "q\"uote\\\n");
        assert_eq!(v["exposures"][1][3], "\u{fffd}bad");
    }

    /// An id that is not UTF-8 is sent with U+FFFD (3 bytes) per bad
    /// sequence, so it can outgrow the sidecar's 256-byte limit although its
    /// bytes fit the ring; such a row would make the sidecar refuse the
    /// whole batch (400), and the filter re-send it forever. It is counted
    /// as dropped instead, and the rest of the batch goes out.
    #[test]
    fn ids_too_long_once_made_utf8_are_dropped_not_sent() {
        let mut r = ExposureRing::new(8);
        r.push(1, 0, 0, b"before");
        r.push(1, 0, 0, &[0xff; 100]); // 300 bytes as sent
        r.push(1, 0, 1, &[0xff; MAX_USER_BYTES / 3]); // 255 bytes as sent: fits
        r.push(2, 0, 1, b"after");
        let mut out = Vec::new();
        let table = experiments_json(&plan());
        assert_eq!(write_batch(&meta(&table, 1), &mut r, None, 10, &mut out), 3);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["dropped"], 1);
        let users: Vec<&str> = v["exposures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row[3].as_str().unwrap())
            .collect();
        assert_eq!(users.len(), 3);
        assert_eq!((users[0], users[2]), ("before", "after"));
        assert_eq!(users[1], "\u{fffd}".repeat(MAX_USER_BYTES / 3));
        assert!(r.is_empty() && r.dropped() == 0);
    }

    #[test]
    fn the_period_is_a_fifth_element_only_above_zero() {
        let mut r = ExposureRing::new(4);
        r.push(1, 0, 1, b"a");
        r.push_in_period(1, 1, 2, 0, b"b");
        r.push_in_period(2, 1, 0, 3, b"c");
        r.push_in_period(2, 0, 0, u32::MAX, b"d");
        let mut out = Vec::new();
        let table = experiments_json(&plan());
        assert_eq!(write_batch(&meta(&table, 1), &mut r, None, 10, &mut out), 4);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["exposures"],
            serde_json::json!([
                [1, 0, 1, "a"],
                [1, 1, 2, "b"],
                [2, 1, 0, "c", 3],
                [2, 0, 0, "d", u32::MAX]
            ])
        );
    }

    #[test]
    fn digits() {
        for n in [0u64, 7, 10, 99, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
