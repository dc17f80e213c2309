//! Shipping exposures to the sidecar: on the root context's tick, never per
//! request, one batch in flight at a time.
//!
//! A batch that fails (sidecar down, slow, or answering non-2xx) is sent
//! again, with the same `seq`, on the next tick; the sidecar de-duplicates
//! retried batches by `(instance, seq)`. Meanwhile new exposures wait in the
//! ring, which drops its oldest entries when full and reports how many with
//! the next batch.

use super::abi::{self, LogLevel};
use crate::config::SidecarConfig;
use crate::exposures::{experiments_json, ExposureRing};
use crate::{Assignment, Plan, Source};

pub struct Shipper {
    ring: ExposureRing,
    cluster: String,
    headers: Vec<u8>,
    timeout_ms: u32,
    max_batch: usize,
    instance: String,
    /// The batch's experiments table, written once at configure time.
    experiments: String,
    seq: u64,
    /// The body of the batch being sent, kept until the sidecar took it
    /// (`pending`); the buffer is reused for the next batch.
    body: Vec<u8>,
    pending: bool,
    in_flight: Option<u32>,
    /// Time of the last tick: the exposure time of requests until the next.
    clock_ms: u64,
    failing: bool,
}

impl Shipper {
    pub fn new(cfg: &SidecarConfig, plan: &Plan, root_context_id: u32) -> Self {
        let now = abi::now_ms();
        let authority = cfg.authority.as_deref().unwrap_or(&cfg.cluster);
        Shipper {
            ring: ExposureRing::new(cfg.max_pending_exposures),
            cluster: cfg.cluster.clone(),
            headers: abi::serialize_map(&[
                (":method", "POST"),
                (":path", &cfg.path),
                (":authority", authority),
                ("content-type", "application/json"),
            ]),
            timeout_ms: cfg.timeout_ms,
            max_batch: cfg.max_batch,
            // Unique per VM lifetime: seq restarts at 0 in a new VM.
            instance: format!("abmesh/{root_context_id}/{now}"),
            experiments: experiments_json(plan),
            seq: 0,
            body: Vec::with_capacity(64 * 1024),
            pending: false,
            in_flight: None,
            clock_ms: now,
            failing: false,
        }
    }

    /// Records the request's randomized exposures (allowlisted, forced and
    /// default routing are not exposures). No allocation, no hostcall;
    /// `user` is only looked up when there is an exposure to record.
    pub fn record<'u>(
        &mut self,
        assignments: &[Assignment],
        user: impl FnOnce() -> Option<&'u [u8]>,
    ) {
        let is_exposure = |a: &Assignment| {
            matches!(
                a,
                Assignment::Variant {
                    source: Source::Hash,
                    ..
                }
            )
        };
        if !assignments.iter().any(is_exposure) {
            return;
        }
        let Some(user) = user() else {
            return;
        };
        for (e, a) in assignments.iter().enumerate() {
            if let Assignment::Variant {
                index,
                source: Source::Hash,
            } = *a
            {
                self.ring.push(self.clock_ms, e, usize::from(index), user);
            }
        }
    }

    pub fn on_tick(&mut self) {
        self.clock_ms = abi::now_ms();
        if self.in_flight.is_some() {
            return;
        }
        if !self.pending && (!self.ring.is_empty() || self.ring.dropped() > 0) {
            self.ring.write_batch(
                &self.experiments,
                &self.instance,
                self.seq,
                self.max_batch,
                &mut self.body,
            );
            self.pending = true;
        }
        if !self.pending {
            return;
        }
        match abi::dispatch_http_call(&self.cluster, &self.headers, &self.body, self.timeout_ms) {
            Ok(token) => self.in_flight = Some(token),
            Err(status) => self.failed(&format!(
                "cannot call cluster {:?} (status {status}); is it defined?",
                self.cluster
            )),
        }
    }

    /// The sidecar answered (or the call failed: no `:status`).
    pub fn on_response(&mut self, token: u32, status: Option<&[u8]>) {
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        if status.is_some_and(|s| s.starts_with(b"2")) {
            self.pending = false;
            self.seq += 1;
            if self.failing {
                self.failing = false;
                abi::log(
                    LogLevel::Info,
                    "abmesh: sidecar reachable again; flushing resumed",
                );
            }
        } else {
            let status = status.map(String::from_utf8_lossy);
            self.failed(&format!(
                "sidecar batch {} not taken (status {}); retrying next tick",
                self.seq,
                status.as_deref().unwrap_or("none: no answer")
            ));
        }
    }

    /// Logs the first failure of a run of failures.
    fn failed(&mut self, message: &str) {
        if !self.failing {
            self.failing = true;
            abi::log(LogLevel::Warn, &format!("abmesh: {message}"));
        }
    }
}
