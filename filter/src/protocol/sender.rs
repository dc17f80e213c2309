//! The filter's side of the batch exchange, independent of the proxy: the
//! glue asks for the body to send on each tick, dispatches it with its
//! proxy's HTTP call, and hands the answer back.
//!
//! A batch goes out on every tick, even with nothing in it: the answer
//! carries the complete set of halted variants, so the empty batch is the
//! halt poll. One batch is in flight at a time. A batch that fails (sidecar
//! down, slow, or answering non-2xx) is sent again, unchanged and with the
//! same `seq`, on the next tick; the sidecar de-duplicates retried batches
//! by `(instance, seq)`. Meanwhile new exposures wait in the ring, and the
//! last known halts and bandit weights stay in force. A run of failures, and the recovery, are
//! reported once each ([`Note`]).

use super::{accepted, config_id, experiments_json, parse_reply, write_batch, BatchMeta};
use crate::exposures::ExposureRing;
use crate::health::HealthTable;
use crate::{Allocation, Halts, Plan};
use std::fmt;

/// Something the glue should log. Made only on ticks and answers, never per
/// request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub level: NoteLevel,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteLevel {
    Info,
    Warn,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "abmesh: {}", self.message)
    }
}

impl Note {
    fn info(message: String) -> Note {
        Note {
            level: NoteLevel::Info,
            message,
        }
    }
    fn warn(message: String) -> Note {
        Note {
            level: NoteLevel::Warn,
            message,
        }
    }
}

/// Batch numbering, retries and the configuration hand-over of one filter
/// instance.
pub struct Sender {
    instance: String,
    /// The batch's experiments table, written once.
    experiments: String,
    /// The configuration as shipped ([`crate::config::shipped_config`]: the
    /// raw bytes, less `sidecar.token`), sent when the sidecar needs it.
    config: Vec<u8>,
    config_id: String,
    /// Whether the next batch carries `config`: true at first and after an
    /// answer with `"config_needed": true`.
    send_config: bool,
    seq: u64,
    max_batch: usize,
    /// The body of the batch being sent, kept until the sidecar took it
    /// (`pending`); the buffer is reused for the next batch.
    body: Vec<u8>,
    pending: bool,
    in_flight: bool,
    failing: bool,
    bad_reply: bool,
}

impl Sender {
    /// `config` is the configuration as shipped (its [`config_id`] names
    /// it); `instance` comes from [`super::instance_id`].
    pub fn new(plan: &Plan, instance: String, config: Vec<u8>, max_batch: usize) -> Sender {
        Sender {
            instance,
            experiments: experiments_json(plan),
            config_id: config_id(&config),
            config,
            send_config: true,
            seq: 0,
            max_batch,
            body: Vec::with_capacity(64 * 1024),
            pending: false,
            in_flight: false,
            failing: false,
            bad_reply: false,
        }
    }

    /// The id of the configuration the batches refer to.
    pub fn config_id(&self) -> &str {
        &self.config_id
    }

    /// The number of the batch being sent (or to be sent next).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether a batch is in flight.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The body to send on this tick, or `None` while a batch is in flight.
    /// A batch that was not taken is returned again as it was; otherwise a
    /// new one is written from `ring` (up to `max_batch` of its oldest
    /// exposures) and `health` (then reset). The glue dispatches it and
    /// says how that went: [`Sender::dispatched`] or
    /// [`Sender::not_dispatched`].
    pub fn batch(
        &mut self,
        ring: &mut ExposureRing,
        health: Option<&mut HealthTable>,
    ) -> Option<&[u8]> {
        if self.in_flight {
            return None;
        }
        if !self.pending {
            let meta = BatchMeta {
                instance: &self.instance,
                seq: self.seq,
                experiments: &self.experiments,
                config_id: &self.config_id,
                config: self.send_config.then_some(&self.config[..]),
            };
            write_batch(&meta, ring, health, self.max_batch, &mut self.body);
            self.pending = true;
        }
        Some(&self.body)
    }

    /// The proxy took the batch; its answer comes to [`Sender::answered`].
    pub fn dispatched(&mut self) {
        self.in_flight = true;
    }

    /// The proxy could not start the call (`why` says so, e.g. an unknown
    /// cluster); the batch is re-sent on the next tick. A note the first
    /// time in a run of failures.
    pub fn not_dispatched(&mut self, why: String) -> Option<Note> {
        self.failed(why)
    }

    /// The call ended: `status` is the answer's `:status` (`None`: no
    /// answer), `body` its body. Replaces `halts` with the sidecar's set
    /// when the answer has one, and `allocation` with one that has the
    /// answer's bandit weights applied (periods only advance, see
    /// [`Allocation::set`]): each is replaced as a whole, so a request never
    /// sees half an answer. Notes go to `notes`: one per halt or lift, one
    /// per period change with its weights.
    pub fn answered(
        &mut self,
        plan: &Plan,
        status: Option<&[u8]>,
        body: &[u8],
        halts: &mut Halts,
        allocation: &mut Allocation,
        notes: &mut Vec<Note>,
    ) {
        self.in_flight = false;
        if !accepted(status) {
            let status = status.map(String::from_utf8_lossy);
            let why = format!(
                "sidecar batch {} not taken (status {}); retrying next tick",
                self.seq,
                status.as_deref().unwrap_or("none: no answer")
            );
            notes.extend(self.failed(why));
            return;
        }
        self.pending = false;
        self.seq += 1;
        if self.failing {
            self.failing = false;
            notes.push(Note::info(
                "sidecar reachable again; flushing resumed".into(),
            ));
        }
        match parse_reply(plan, body) {
            Ok(reply) => {
                self.bad_reply = false;
                self.send_config = reply.config_needed == Some(true);
                if let Some(new) = reply.halted {
                    changes(plan, halts, &new, notes);
                    *halts = new;
                }
                if let Some(updates) = reply.allocations.filter(|u| !u.is_empty()) {
                    let mut new = allocation.clone();
                    for u in &updates {
                        // The reply's parser only lets through what the
                        // plan can take; a stale period is Ok(false).
                        if let Err(e) = new.set(u.experiment, u.period, &u.weights) {
                            notes.push(Note::warn(format!(
                                "ignoring the sidecar's bandit weights: {e}"
                            )));
                        }
                    }
                    if new != *allocation {
                        allocation_changes(plan, allocation, &new, notes);
                        *allocation = new;
                    }
                }
            }
            Err(e) => {
                // Took the batch but said nothing we understand: keep the
                // halts we know; do not send the configuration forever.
                self.send_config = false;
                if !self.bad_reply {
                    self.bad_reply = true;
                    notes.push(Note::warn(format!(
                        "cannot read the sidecar's answer ({e}); keeping the halted variants and bandit weights as they were"
                    )));
                }
            }
        }
    }

    /// Whether the next batch carries the configuration.
    pub fn sends_config(&self) -> bool {
        self.send_config
    }

    fn failed(&mut self, why: String) -> Option<Note> {
        self.in_flight = false;
        if self.failing {
            return None;
        }
        self.failing = true;
        Some(Note::warn(why))
    }
}

/// A note per variant halted or lifted from `old` to `new`.
fn changes(plan: &Plan, old: &Halts, new: &Halts, notes: &mut Vec<Note>) {
    for (e, v, halted) in old.changes(new) {
        let exp = &plan.experiments()[e];
        let variant = exp.variants()[v].name();
        notes.push(if halted {
            Note::warn(format!(
                "experiment \"{}\" variant \"{variant}\" halted by the sidecar; its users go to control \"{}\"",
                exp.name(),
                exp.variants()[exp.control()].name()
            ))
        } else {
            Note::info(format!(
                "experiment \"{}\" variant \"{variant}\" no longer halted by the sidecar; its users are assigned to it again",
                exp.name()
            ))
        });
    }
}

/// A note per experiment whose bandit period changed from `old` to `new`:
/// the new shares, and how many of its users change variant.
fn allocation_changes(plan: &Plan, old: &Allocation, new: &Allocation, notes: &mut Vec<Note>) {
    use std::fmt::Write as _;
    for e in old.changed(new) {
        let exp = &plan.experiments()[e];
        let mut shares = String::new();
        for (i, (v, b)) in exp.variants().iter().zip(new.buckets(e)).enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(shares, "{sep}{} {}", v.name(), percent(b));
        }
        notes.push(Note::info(format!(
            "experiment \"{}\" bandit period {}: {shares}; {} of its users change variant",
            exp.name(),
            new.period(e),
            percent(old.moved_buckets(new, e))
        )));
    }
}

/// Buckets as a percentage with the buckets' precision (`12.34%`).
fn percent(buckets: u32) -> String {
    format!("{}.{:02}%", buckets / 100, buckets % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"experiments": [{"name": "ranker", "variants": [{"name": "control", "weight": 1}, {"name": "treatment", "weight": 1}]}]}"#;

    fn json(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn retries_keep_seq_and_body_and_the_config_goes_until_taken() {
        let plan = Plan::from_json(CONFIG.as_bytes()).unwrap();
        let mut s = Sender::new(&plan, "i".into(), CONFIG.as_bytes().to_vec(), 10);
        let mut ring = ExposureRing::new(8);
        let mut health = HealthTable::new(&plan);
        let mut halts = Halts::new(&plan);
        let mut alloc = Allocation::new(&plan);
        let mut notes = Vec::new();
        ring.push(5, 0, 1, b"alice");
        let first = s.batch(&mut ring, Some(&mut health)).unwrap().to_vec();
        let v = json(&first);
        assert_eq!(
            (v["seq"].as_u64(), v["config"].is_object()),
            (Some(0), true)
        );
        assert_eq!(v["exposures"], serde_json::json!([[5, 0, 1, "alice"]]));
        // Dispatch failed: a note once, the same body next tick.
        assert!(s.not_dispatched("no cluster".into()).is_some());
        ring.push(6, 0, 0, b"bob");
        assert_eq!(s.batch(&mut ring, None).unwrap(), &first[..]);
        s.dispatched();
        assert!(s.batch(&mut ring, None).is_none(), "one in flight");
        s.answered(&plan, Some(b"503"), b"", &mut halts, &mut alloc, &mut notes);
        assert!(
            notes.is_empty(),
            "still the same run of failures: {notes:?}"
        );
        assert_eq!(s.batch(&mut ring, None).unwrap(), &first[..]);
        s.dispatched();
        s.answered(
            &plan,
            Some(b"200"),
            br#"{"halted": [{"experiment": "ranker", "variant": "treatment"}]}"#,
            &mut halts,
            &mut alloc,
            &mut notes,
        );
        assert_eq!(
            notes.iter().map(|n| n.level).collect::<Vec<_>>(),
            [NoteLevel::Info, NoteLevel::Warn]
        );
        assert!(notes[0].to_string().contains("sidecar reachable again"));
        assert!(notes[1]
            .message
            .contains("\"treatment\" halted by the sidecar"));
        assert!(halts.is_halted(0, 1));
        // Taken: the next batch is new, without the config (not asked for).
        let v = json(s.batch(&mut ring, None).unwrap());
        assert_eq!(v["seq"], 1);
        assert!(v.get("config").is_none());
        assert_eq!(v["exposures"], serde_json::json!([[6, 0, 0, "bob"]]));
        s.dispatched();
        notes.clear();
        s.answered(
            &plan,
            Some(b"200"),
            br#"{"config_needed": true, "halted": []}"#,
            &mut halts,
            &mut alloc,
            &mut notes,
        );
        assert!(halts.is_empty());
        assert!(notes[0].message.contains("no longer halted"));
        assert!(json(s.batch(&mut ring, None).unwrap())["config"].is_object());
        // An unreadable answer keeps the halts and stops the config.
        s.dispatched();
        notes.clear();
        halts.halt(0, 1);
        s.answered(
            &plan,
            Some(b"200"),
            b"ok",
            &mut halts,
            &mut alloc,
            &mut notes,
        );
        assert!(halts.is_halted(0, 1));
        assert_eq!(notes.len(), 1);
        assert!(!s.sends_config());
        // No answer at all.
        s.batch(&mut ring, None);
        s.dispatched();
        notes.clear();
        s.answered(&plan, None, b"", &mut halts, &mut alloc, &mut notes);
        assert!(
            notes[0].message.contains("(status none: no answer)"),
            "{notes:?}"
        );
    }

    const BANDIT: &str = r#"{"experiments": [{"name": "ranker", "bandit": {"metric": "purchase"},
        "variants": [{"name": "control", "weight": 2}, {"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}]}"#;

    /// Answers carry weights; periods only advance, each change is logged
    /// once, and answers without weights (or unreadable ones) keep them.
    #[test]
    fn answers_apply_bandit_weights_monotonically() {
        let plan = Plan::from_json(BANDIT.as_bytes()).unwrap();
        let mut s = Sender::new(&plan, "i".into(), BANDIT.as_bytes().to_vec(), 10);
        let mut ring = ExposureRing::new(8);
        let mut halts = Halts::new(&plan);
        let mut alloc = Allocation::new(&plan);
        let mut notes = Vec::new();
        let mut answer = |s: &mut Sender, alloc: &mut Allocation, body: &str| {
            s.batch(&mut ring, None).unwrap();
            s.dispatched();
            notes.clear();
            s.answered(
                &plan,
                Some(b"200"),
                body.as_bytes(),
                &mut halts,
                alloc,
                &mut notes,
            );
            notes.clone()
        };
        let weights = |period: u32, a: f64, b: f64| {
            format!(
                r#"{{"allocations": [{{"experiment": "ranker", "period": {period}, "weights": {{"control": 0.5, "a": {a}, "b": {b}}}}}]}}"#
            )
        };
        assert_eq!(alloc.uppers(0), [5000, 7500, 10_000]);
        let n = answer(&mut s, &mut alloc, &weights(3, 0.15, 0.35));
        assert_eq!(
            (alloc.period(0), alloc.uppers(0)),
            (3, &[5000, 6500, 10_000][..])
        );
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!(n[0].level, NoteLevel::Info);
        assert_eq!(
            n[0].message,
            "experiment \"ranker\" bandit period 3: control 50.00%, a 15.00%, b 35.00%; 10.00% of its users change variant"
        );
        // The same period again, or an older one (a lagging replica):
        // nothing changes, nothing is logged.
        for p in [3, 2, 1] {
            let n = answer(&mut s, &mut alloc, &weights(p, 0.4, 0.1));
            assert!(n.is_empty(), "{n:?}");
            assert_eq!(
                (alloc.period(0), alloc.uppers(0)),
                (3, &[5000, 6500, 10_000][..])
            );
        }
        // No weights in the answer, an empty list, or an unreadable
        // answer: the last weights stay.
        for body in [r#"{"accepted": 0}"#, r#"{"allocations": []}"#, "oops"] {
            answer(&mut s, &mut alloc, body);
            assert_eq!(alloc.period(0), 3);
        }
        // A later period moves the weights again.
        let n = answer(&mut s, &mut alloc, &weights(4, 0.3, 0.2));
        assert_eq!(
            (alloc.period(0), alloc.uppers(0)),
            (4, &[5000, 8000, 10_000][..])
        );
        assert!(
            n[0].message
                .contains("period 4: control 50.00%, a 30.00%, b 20.00%; 15.00%"),
            "{n:?}"
        );
    }
}
