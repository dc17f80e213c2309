//! Shipping exposures and per-variant health to the sidecar, and polling it
//! for halted variants: on the root context's tick, never per request, one
//! batch in flight at a time.
//!
//! A batch goes out on every tick, even with nothing in it: the answer
//! carries the complete set of halted variants, so the empty batch is the
//! halt poll. A batch that fails (sidecar down, slow, or answering non-2xx)
//! is sent again, with the same `seq`, on the next tick; the sidecar
//! de-duplicates retried batches by `(instance, seq)`. Meanwhile new
//! exposures wait in the ring, which drops its oldest entries when full and
//! reports how many with the next batch, and the last known halts stay in
//! force.
//!
//! Per request: exposures go to the ring, hash assignments are counted in
//! the health table, and one request in `health_sample_every` (of those
//! with an exposure) is timed: its exposures and the clock go into a small
//! stream table, and on its response headers `:status` and the clock again
//! give the status class and latency. No allocation in any of it (the host
//! allocates for the `:status` read, as for any header read).

use super::abi::{self, BufferType, LogLevel, MapType};
use super::streams::StreamTable;
use crate::config::SidecarConfig;
use crate::exposures::{experiments_json, parse_reply, BatchMeta, ExposureRing, RecentExposures};
use crate::health::HealthTable;
use crate::{Decisions, Halts, Plan};

/// Sampled streams in flight; an older entry is overwritten (its sample
/// lost) once this many newer streams were sampled.
const SAMPLE_SLOTS: usize = 1024;

/// Longest sidecar answer read.
const MAX_REPLY_BYTES: usize = 1 << 20;

pub struct Shipper {
    ring: ExposureRing,
    /// Skips exposures shipped lately (repeat requests of a user).
    recent: RecentExposures,
    cluster: String,
    headers: Vec<u8>,
    timeout_ms: u32,
    max_batch: usize,
    instance: String,
    /// The batch's experiments table, written once at configure time.
    experiments: String,
    /// The plugin configuration as shipped ([`crate::config::shipped_config`]:
    /// the raw bytes, less `sidecar.token`), sent when the sidecar needs it.
    config: Vec<u8>,
    config_id: String,
    /// Whether the next batch carries `config`: true after configure and
    /// after an answer with `"config_needed": true`.
    send_config: bool,
    seq: u64,
    /// The body of the batch being sent, kept until the sidecar took it
    /// (`pending`); the buffer is reused for the next batch.
    body: Vec<u8>,
    pending: bool,
    in_flight: Option<u32>,
    /// Time of the last tick: the exposure time of requests until the next.
    clock_ms: u64,
    failing: bool,
    bad_reply: bool,
    /// Variants the sidecar halted, as of its last answer.
    pub halts: Halts,
    health: HealthTable,
    sample_every: u32,
    /// Requests with an exposure until the next sampled one.
    countdown: u32,
    /// Sampled streams: packed exposures and the start time in ns.
    samples: StreamTable,
    unpacked: Box<[u16]>,
}

/// The headers of every batch request, serialized once. With
/// `sidecar.token`, `authorization: Bearer TOKEN`: the serialized map is
/// only handed to `dispatch_http_call`, never logged.
fn batch_headers(cfg: &SidecarConfig, authority: &str) -> Vec<u8> {
    let bearer = cfg.token.as_ref().map(|t| format!("Bearer {}", t.expose()));
    let mut headers = vec![
        (":method", "POST"),
        (":path", cfg.path.as_str()),
        (":authority", authority),
        ("content-type", "application/json"),
    ];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    abi::serialize_map(&headers)
}

impl Shipper {
    pub fn new(cfg: &SidecarConfig, plan: &Plan, root_context_id: u32, config: Vec<u8>) -> Self {
        let now = abi::now_ms();
        let authority = cfg.authority.as_deref().unwrap_or(&cfg.cluster);
        let n = plan.experiments().len();
        Shipper {
            ring: ExposureRing::new(cfg.max_pending_exposures),
            recent: RecentExposures::new(cfg.recent_exposures),
            cluster: cfg.cluster.clone(),
            headers: batch_headers(cfg, authority),
            timeout_ms: cfg.timeout_ms,
            max_batch: cfg.max_batch,
            // Unique per VM lifetime: seq restarts at 0 in a new VM.
            instance: format!("abmesh/{root_context_id}/{now}"),
            experiments: experiments_json(plan),
            config_id: crate::config_id(&config),
            config,
            send_config: true,
            seq: 0,
            body: Vec::with_capacity(64 * 1024),
            pending: false,
            in_flight: None,
            clock_ms: now,
            failing: false,
            bad_reply: false,
            halts: Halts::new(plan),
            health: HealthTable::new(plan),
            sample_every: cfg.health_sample_every.max(1),
            countdown: 1,
            samples: StreamTable::with_stamps(SAMPLE_SLOTS, n),
            unpacked: vec![0; n].into_boxed_slice(),
        }
    }

    /// Records the request's randomized exposures (allowlisted, forced,
    /// default and halted routing are not exposures) and counts them in
    /// health; samples one such request in `health_sample_every` for its
    /// response. No allocation; `user` is only looked up when there is an
    /// exposure to record.
    pub fn record<'u>(
        &mut self,
        context_id: u32,
        decisions: &Decisions,
        user: impl FnOnce() -> Option<&'u [u8]>,
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
                .insert_exposures(context_id, decisions.assignments(), abi::now_ns());
        }
        let Some(user) = user() else {
            return;
        };
        for (e, v) in decisions.exposures() {
            if self.recent.first_time(e, v, user) {
                self.ring.push(self.clock_ms, e, v, user);
            }
        }
    }

    /// Response headers of a stream: if it was sampled, its status class
    /// and latency go to health.
    pub fn on_response_headers(&mut self, context_id: u32) {
        let Some(start_ns) = self.samples.take_stamped(context_id, &mut self.unpacked) else {
            return;
        };
        let status = abi::get_header(MapType::Response, ":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u32>().ok());
        let Some(status) = status else {
            return;
        };
        // Wall clock: a step back reads as 0.
        let latency_us = abi::now_ns().saturating_sub(start_ns) / 1_000;
        for (e, &p) in self.unpacked.iter().enumerate() {
            if p != 0 {
                self.health
                    .record_response(e, usize::from(p - 1), status, latency_us);
            }
        }
    }

    pub fn on_tick(&mut self) {
        self.clock_ms = abi::now_ms();
        if self.in_flight.is_some() {
            return;
        }
        if !self.pending {
            // Every tick, even empty: the answer is the halt poll.
            let meta = BatchMeta {
                instance: &self.instance,
                seq: self.seq,
                experiments: &self.experiments,
                config_id: &self.config_id,
                config: self.send_config.then_some(&self.config[..]),
            };
            self.ring.write_batch(
                &meta,
                Some(&mut self.health),
                self.max_batch,
                &mut self.body,
            );
            self.pending = true;
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
    /// `body_size` is the answer's body length.
    pub fn on_response(
        &mut self,
        plan: &Plan,
        token: u32,
        status: Option<&[u8]>,
        body_size: usize,
    ) {
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        if !status.is_some_and(|s| s.starts_with(b"2")) {
            let status = status.map(String::from_utf8_lossy);
            self.failed(&format!(
                "sidecar batch {} not taken (status {}); retrying next tick",
                self.seq,
                status.as_deref().unwrap_or("none: no answer")
            ));
            return;
        }
        self.pending = false;
        self.seq += 1;
        if self.failing {
            self.failing = false;
            abi::log(
                LogLevel::Info,
                "abmesh: sidecar reachable again; flushing resumed",
            );
        }
        let body = abi::get_buffer(
            BufferType::HttpCallResponseBody,
            body_size.min(MAX_REPLY_BYTES),
        )
        .unwrap_or_default();
        match parse_reply(plan, &body) {
            Ok(reply) => {
                self.bad_reply = false;
                self.send_config = reply.config_needed == Some(true);
                if let Some(new) = reply.halted {
                    self.log_changes(plan, &new);
                    self.halts = new;
                }
            }
            Err(e) => {
                // Took the batch but said nothing we understand: keep the
                // halts we know; do not send the configuration forever.
                self.send_config = false;
                if !self.bad_reply {
                    self.bad_reply = true;
                    abi::log(
                        LogLevel::Warn,
                        &format!(
                            "abmesh: cannot read the sidecar's answer ({e}); keeping the halted variants as they were"
                        ),
                    );
                }
            }
        }
    }

    fn log_changes(&self, plan: &Plan, new: &Halts) {
        for (e, v, halted) in self.halts.changes(new) {
            let exp = &plan.experiments()[e];
            let variant = exp.variants()[v].name();
            if halted {
                abi::log(
                    LogLevel::Warn,
                    &format!(
                        "abmesh: experiment \"{}\" variant \"{variant}\" halted by the sidecar; its users go to control \"{}\"",
                        exp.name(),
                        exp.variants()[exp.control()].name()
                    ),
                );
            } else {
                abi::log(
                    LogLevel::Info,
                    &format!(
                        "abmesh: experiment \"{}\" variant \"{variant}\" no longer halted by the sidecar; its users are assigned to it again",
                        exp.name()
                    ),
                );
            }
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
