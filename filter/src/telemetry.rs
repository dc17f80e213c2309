//! What the filter records per request for the sidecar, independent of the
//! proxy: randomized exposures (into the ring, skipping recent repeats),
//! per-variant request counts, and one request in `health_sample_every`
//! timed from request headers to response headers with its status class.
//!
//! No allocation and no proxy call here: the glue passes the user id and
//! the clock as closures, called only when needed (the clock only for a
//! sampled request, the id only when there is an exposure to record).

use crate::config::SidecarConfig;
use crate::exposures::{ExposureRing, RecentExposures};
use crate::health::HealthTable;
use crate::streams::StreamTable;
use crate::{Decisions, Plan};

/// Sampled streams in flight; an older entry is overwritten (its sample
/// lost) once this many newer streams were sampled.
pub const SAMPLE_SLOTS: usize = 1024;

/// Per-request recording of one filter instance (a Wasm VM, a worker).
pub struct Recorder {
    ring: ExposureRing,
    /// Skips exposures shipped lately (repeat requests of a user).
    recent: RecentExposures,
    health: HealthTable,
    sample_every: u32,
    /// Requests with an exposure until the next sampled one.
    countdown: u32,
    /// Sampled streams: packed exposures and the start time in ns.
    samples: StreamTable,
    unpacked: Box<[u16]>,
    /// Time of the last tick: the exposure time of requests until the next.
    clock_ms: u64,
}

impl Recorder {
    pub fn new(cfg: &SidecarConfig, plan: &Plan, clock_ms: u64) -> Recorder {
        let n = plan.experiments().len();
        Recorder {
            ring: ExposureRing::new(cfg.max_pending_exposures),
            recent: RecentExposures::new(cfg.recent_exposures),
            health: HealthTable::new(plan),
            sample_every: cfg.health_sample_every.max(1),
            countdown: 1,
            samples: StreamTable::with_stamps(SAMPLE_SLOTS, n),
            unpacked: vec![0; n].into_boxed_slice(),
            clock_ms,
        }
    }

    /// Sets the exposure time of the requests recorded from now on (the
    /// glue calls it on its tick: the clock is not read per request).
    pub fn set_clock(&mut self, ms: u64) {
        self.clock_ms = ms;
    }

    /// The exposures waiting to be shipped.
    pub fn ring(&mut self) -> &mut ExposureRing {
        &mut self.ring
    }

    /// The health counters since the last batch.
    pub fn health(&mut self) -> &mut HealthTable {
        &mut self.health
    }

    /// Both, for writing a batch from them.
    pub fn parts(&mut self) -> (&mut ExposureRing, &mut HealthTable) {
        (&mut self.ring, &mut self.health)
    }

    /// Records the request's randomized exposures (allowlisted, forced,
    /// default and halted routing are not exposures) and counts them in
    /// health; samples one such request in `health_sample_every` for its
    /// response, keyed by `stream` (increasing ids, see
    /// [`crate::streams`]).
    pub fn record<'u>(
        &mut self,
        stream: u64,
        decisions: &Decisions,
        user: impl FnOnce() -> Option<&'u [u8]>,
        now_ns: impl FnOnce() -> u64,
    ) {
        if !decisions.has_exposure() {
            return;
        }
        for (e, v) in decisions.exposures() {
            self.health.record_request(e, v);
        }
        self.countdown -= 1;
        if self.countdown == 0 {
            self.countdown = self.sample_every;
            self.samples
                .insert_exposures(stream, decisions.assignments(), now_ns());
        }
        let Some(user) = user() else {
            return;
        };
        for (e, v) in decisions.exposures() {
            let period = decisions.period(e);
            if self.recent.first_time(e, v, period, user) {
                self.ring.push_in_period(self.clock_ms, e, v, period, user);
            }
        }
    }

    /// Whether `stream` was sampled and waits for its response.
    pub fn is_sampled(&self, stream: u64) -> bool {
        self.samples.contains(stream)
    }

    /// Response headers of a stream: if it was sampled, its status class
    /// and latency (wall clock; a step back reads as 0) go to health.
    /// `status` and `now_ns` are only called for a sampled stream.
    pub fn on_response(
        &mut self,
        stream: u64,
        status: impl FnOnce() -> Option<u32>,
        now_ns: impl FnOnce() -> u64,
    ) {
        let Some(start_ns) = self.samples.take_stamped(stream, &mut self.unpacked) else {
            return;
        };
        let Some(status) = status() else {
            return;
        };
        let latency_us = now_ns().saturating_sub(start_ns) / 1_000;
        for (e, &p) in self.unpacked.iter().enumerate() {
            if p != 0 {
                self.health
                    .record_response(e, usize::from(p - 1), status, latency_us);
            }
        }
    }

    /// Moves the recorded exposures (and their dropped count) and health
    /// counters into `ring` and `health`, and empties its own. The native
    /// glue ships from one place for all its workers.
    pub fn move_into(&mut self, ring: &mut ExposureRing, health: &mut HealthTable) {
        self.ring.move_into(ring);
        health.absorb(&mut self.health);
    }
}

/// Parses a response `:status` value.
pub fn parse_status(s: &[u8]) -> Option<u32> {
    if s.len() != 3 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |n, &d| n * 10 + u32::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(parse_status(b"200"), Some(200));
        assert_eq!(parse_status(b"503"), Some(503));
        assert_eq!(parse_status(b"20"), None);
        assert_eq!(parse_status(b"2000"), None);
        assert_eq!(parse_status(b"2x0"), None);
    }

    #[test]
    fn samples_one_in_n_and_moves_everything_out() {
        let plan = Plan::from_json(
            br#"{"experiments": [{"name": "a", "variants": [{"name": "c", "weight": 1}, {"name": "t", "weight": 1}]}]}"#,
        )
        .unwrap();
        let cfg: SidecarConfig =
            serde_json::from_str(r#"{"cluster": "s", "health_sample_every": 2}"#).unwrap();
        let mut r = Recorder::new(&cfg, &plan, 7);
        let mut d = plan.decisions();
        let mut sampled = 0;
        for i in 1..=10u64 {
            let user = format!("u{i}");
            plan.assign_user(user.as_bytes(), &mut d);
            r.record(i, &d, || Some(user.as_bytes()), || 1_000 * i);
            if r.is_sampled(i) {
                sampled += 1;
                r.on_response(i, || Some(200), || 1_000 * i + 2_000_000);
            }
        }
        assert_eq!(sampled, 5);
        let mut ring = ExposureRing::new(100);
        let mut health = HealthTable::new(&plan);
        r.move_into(&mut ring, &mut health);
        assert_eq!(ring.len(), 10);
        assert!(r.ring().is_empty() && r.health().is_empty());
        let mut out = Vec::new();
        crate::protocol::health::write_rows(&health, &mut out);
        let rows: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let requests: u64 = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[2].as_u64().unwrap())
            .sum();
        let sampled_2xx: u64 = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[3][1].as_u64().unwrap())
            .sum();
        assert_eq!((requests, sampled_2xx), (10, 5));
        // 2 ms: the 2 000–3 000 µs bucket.
        let in_bucket_3: u64 = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[4][2].as_u64().unwrap())
            .sum();
        assert_eq!(in_bucket_3, 5);
    }
}
