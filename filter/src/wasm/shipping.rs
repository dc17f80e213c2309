//! Shipping exposures and per-variant health to the sidecar, and polling it
//! for halted variants and bandit weights: on the root context's tick, never per request, one
//! batch in flight at a time. What is recorded per request is
//! [`crate::telemetry::Recorder`]; the batch, the answer and the retry rules
//! are [`crate::protocol`]. This module only adds the proxy-wasm calls:
//! `dispatch_http_call` on the tick, the answer's `:status` and body, the
//! clock, and the `:status` of a sampled response.

use super::abi::{self, BufferType, LogLevel, MapType};
use crate::config::SidecarConfig;
use crate::protocol::{self, Note, NoteLevel, Sender};
use crate::telemetry::Recorder;
use crate::{Allocation, Decisions, Halts, Plan};

pub struct Shipper {
    recorder: Recorder,
    sender: Sender,
    cluster: String,
    /// [`protocol::request_headers`], serialized once in the ABI's map
    /// format. With `sidecar.token` it holds the bearer token: it is only
    /// handed to `dispatch_http_call`, never logged.
    headers: Vec<u8>,
    timeout_ms: u32,
    in_flight: Option<u32>,
    /// Variants the sidecar halted, as of its last answer.
    pub halts: Halts,
    /// Bandit weights from the sidecar, as of its last answer that had
    /// them (the configured weights until then).
    pub allocation: Allocation,
    notes: Vec<Note>,
}

impl Shipper {
    pub fn new(cfg: &SidecarConfig, plan: &Plan, root_context_id: u32, config: Vec<u8>) -> Self {
        let now = abi::now_ms();
        let headers = protocol::request_headers(cfg);
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Shipper {
            recorder: Recorder::new(cfg, plan, now),
            // Unique per VM lifetime: seq restarts at 0 in a new VM.
            sender: Sender::new(
                plan,
                protocol::instance_id("abmesh", u64::from(root_context_id), now),
                config,
                cfg.max_batch,
            ),
            cluster: cfg.cluster.clone(),
            headers: abi::serialize_map(&pairs),
            timeout_ms: cfg.timeout_ms,
            in_flight: None,
            halts: Halts::new(plan),
            allocation: Allocation::new(plan),
            notes: Vec::new(),
        }
    }

    /// See [`Recorder::record`]; the clock is read only for a sampled
    /// request.
    pub fn record<'u>(
        &mut self,
        context_id: u32,
        decisions: &Decisions,
        user: impl FnOnce() -> Option<&'u [u8]>,
    ) {
        self.recorder
            .record(u64::from(context_id), decisions, user, abi::now_ns);
    }

    /// Response headers of a stream: if it was sampled, its status class
    /// and latency go to health.
    pub fn on_response_headers(&mut self, context_id: u32) {
        self.recorder.on_response(
            u64::from(context_id),
            || {
                abi::get_header(MapType::Response, ":status")
                    .and_then(|s| crate::telemetry::parse_status(&s))
            },
            abi::now_ns,
        );
    }

    pub fn on_tick(&mut self) {
        self.recorder.set_clock(abi::now_ms());
        let (ring, health) = self.recorder.parts();
        let Some(body) = self.sender.batch(ring, Some(health)) else {
            return;
        };
        match abi::dispatch_http_call(&self.cluster, &self.headers, body, self.timeout_ms) {
            Ok(token) => {
                self.sender.dispatched();
                self.in_flight = Some(token);
            }
            Err(status) => {
                let why = format!(
                    "cannot call cluster {:?} (status {status}); is it defined?",
                    self.cluster
                );
                if let Some(note) = self.sender.not_dispatched(why) {
                    log(&note);
                }
            }
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
        let body = if protocol::accepted(status) {
            abi::get_buffer(
                BufferType::HttpCallResponseBody,
                body_size.min(protocol::MAX_REPLY_BYTES),
            )
            .unwrap_or_default()
        } else {
            Vec::new()
        };
        self.sender.answered(
            plan,
            status,
            &body,
            &mut self.halts,
            &mut self.allocation,
            &mut self.notes,
        );
        for note in self.notes.drain(..) {
            log(&note);
        }
    }
}

fn log(note: &Note) {
    let level = match note.level {
        NoteLevel::Info => LogLevel::Info,
        NoteLevel::Warn => LogLevel::Warn,
    };
    abi::log(level, &note.to_string());
}
