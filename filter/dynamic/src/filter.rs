//! The filter configuration and the request and response hooks.
//!
//! One [`FilterConfig`] per Envoy filter configuration (a listener's
//! filter, an ECDS version): the compiled [`Plan`], immutable and shared by
//! all workers, and one [`WorkerSlot`] per worker thread holding that
//! worker's mutable state. A stream's module pointer is its worker's slot,
//! so creating a filter per stream allocates nothing.
//!
//! Per request, on the worker: one lock of the worker's state (uncontended:
//! only the main thread's tick takes it too, to collect exposures), the
//! request's headers read in one bulk call (two: the ABI needs the count
//! first), the core's decision, every header change recorded first and
//! only then written (Envoy's header buffers are valid only until the first
//! setter call), and `clear_route_cache` after a change (Envoy does not
//! re-select the route after a dynamic module changed request headers).
//! No allocation in any of it once a worker has seen its largest request.

use crate::abi::{self, HttpFilterConfigEnvoyPtr, HttpFilterEnvoyPtr, HttpHeader, ModuleBuffer};
use crate::shipping::Shipping;
use crate::streams::StreamIds;
use abmesh_filter::streams::StreamTable;
use abmesh_filter::telemetry::Recorder;
use abmesh_filter::{
    Allocation, Decisions, Halts, HeaderSink, MissingIdentity, Plan, RequestHeaders, Slot, Verdict,
};
use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard};

/// Longest `:path` the rewrite buffer holds without growing.
const PATH_CAPACITY: usize = 8 * 1024;
/// Request headers read without growing the array.
const HEADERS_CAPACITY: usize = 64;
/// Streams waiting for their response headers, per worker, before the
/// table grows.
const STREAMS_CAPACITY: usize = 1024;
/// Streams whose assignments are kept for the echo header; an older one is
/// overwritten once this many newer streams started (as in the Wasm filter).
const ECHO_SLOTS: usize = 1024;

/// The filter name this module answers to (`filter_name` in Envoy's
/// configuration).
pub const FILTER_NAME: &str = "abmesh";

/// What every worker reads: immutable after configuration.
pub struct Shared {
    pub plan: Plan,
    /// `echo_header` or `sidecar` is set: some streams keep state until
    /// their response.
    pub per_stream: bool,
}

/// One filter configuration.
pub struct FilterConfig {
    shared: Arc<Shared>,
    workers: Box<[WorkerSlot]>,
    shipping: Option<Shipping>,
}

/// A worker's state, behind a lock the main thread takes only on its tick
/// (and when halts or bandit weights change).
pub struct WorkerSlot {
    shared: Arc<Shared>,
    state: Mutex<Worker>,
}

/// Mutable per-worker state, sized at configuration.
pub struct Worker {
    decisions: Decisions,
    /// The bulk header read: pointers into Envoy's header map, valid until
    /// the first setter call.
    headers: Vec<HttpHeader>,
    path_buf: Vec<u8>,
    echo_buf: Vec<u8>,
    changes: Changes,
    /// Streams with state until their response: Envoy pointer → number.
    streams: StreamIds,
    next_stream: u64,
    /// Assignments by stream number, for the echo header.
    echo: Option<StreamTable>,
    /// Exposures and health, when shipping to the sidecar.
    pub(crate) recorder: Option<Recorder>,
    /// Halted variants, as of the sidecar's last answer.
    pub(crate) halts: Option<Halts>,
    /// Bandit weights, as of the sidecar's last answer that had them.
    pub(crate) allocation: Option<Allocation>,
}

thread_local! {
    /// This thread's worker index, asked once per thread.
    static WORKER_INDEX: Cell<u32> = const { Cell::new(u32::MAX) };
}

impl FilterConfig {
    /// Validates the plugin JSON; the error is the log line.
    pub fn new(
        filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
        name: &[u8],
        raw: &[u8],
    ) -> Result<Box<FilterConfig>, String> {
        if name != FILTER_NAME.as_bytes() {
            return Err(format!(
                "abmesh: invalid configuration: `filter_name` must be {FILTER_NAME:?}, got {:?}",
                String::from_utf8_lossy(name)
            ));
        }
        let plan = Plan::from_json(raw).map_err(|e| format!("abmesh: {e}"))?;
        // What the sidecar gets (and what the config id names): the bytes
        // as given, or without `sidecar.token` when they carry one.
        let shipped = abmesh_filter::config::shipped_config(raw)
            .map_err(|e| {
                format!("abmesh: invalid configuration: cannot leave sidecar.token out of it: {e}")
            })?
            .into_owned();
        abi::log(
            abi::LOG_INFO,
            &format!(
                "abmesh: configured {} experiment(s): {} (config {}, native dynamic module)",
                plan.experiments().len(),
                plan.experiments()
                    .iter()
                    .map(|e| e.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                abmesh_filter::config_id(&shipped)
            ),
        );
        // SAFETY: config_new runs on the main thread.
        let workers = unsafe { abi::envoy_dynamic_module_callback_get_concurrency() }.max(1);
        let now_ms = crate::shipping::now_ms();
        let shared = Arc::new(Shared {
            per_stream: plan.echo_header().is_some() || plan.sidecar().is_some(),
            plan,
        });
        let slots = (0..workers)
            .map(|_| WorkerSlot {
                shared: shared.clone(),
                state: Mutex::new(Worker::new(&shared.plan, now_ms)),
            })
            .collect();
        let mut cfg = Box::new(FilterConfig {
            shared,
            workers: slots,
            shipping: None,
        });
        if let Some(sidecar) = cfg.shared.plan.sidecar() {
            cfg.shipping = Some(Shipping::start(
                filter_config_envoy_ptr,
                sidecar,
                &cfg.shared.plan,
                shipped,
                now_ms,
            )?);
        }
        Ok(cfg)
    }

    /// The plan (tests, shipping).
    pub fn plan(&self) -> &Plan {
        &self.shared.plan
    }

    pub(crate) fn workers(&self) -> &[WorkerSlot] {
        &self.workers
    }

    /// The slot of the worker `filter_envoy_ptr` runs on.
    pub fn worker(&self, filter_envoy_ptr: HttpFilterEnvoyPtr) -> &WorkerSlot {
        let mut i = WORKER_INDEX.get();
        if i == u32::MAX {
            // SAFETY: a live filter pointer, during on_http_filter_new.
            i = unsafe {
                abi::envoy_dynamic_module_callback_http_filter_get_worker_index(filter_envoy_ptr)
            };
            WORKER_INDEX.set(i);
        }
        // More indexes than slots cannot happen; if it did, sharing a slot
        // is still correct (it is locked).
        &self.workers[i as usize % self.workers.len()]
    }

    /// The tick (main thread).
    pub fn on_tick(&self, filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr) {
        if let Some(s) = &self.shipping {
            s.on_tick(self, filter_config_envoy_ptr);
        }
    }

    /// A batch's answer (main thread).
    pub fn on_callout_done(
        &self,
        callout_id: u64,
        result: abi::CalloutResult,
        headers: &[HttpHeader],
        body: &[abi::EnvoyBuffer],
    ) {
        if let Some(s) = &self.shipping {
            s.on_callout_done(self, callout_id, result, headers, body);
        }
    }

    /// Stops the clock thread before the configuration goes (main thread).
    pub fn shutdown(self) {
        if let Some(s) = self.shipping {
            s.stop();
        }
    }
}

impl Worker {
    fn new(plan: &Plan, now_ms: u64) -> Worker {
        let n = plan.experiments().len();
        Worker {
            decisions: plan.decisions(),
            headers: Vec::with_capacity(HEADERS_CAPACITY),
            path_buf: Vec::with_capacity(PATH_CAPACITY),
            echo_buf: Vec::with_capacity(256),
            changes: Changes::with_capacity(n + 4, PATH_CAPACITY + 1024),
            streams: StreamIds::with_capacity(STREAMS_CAPACITY),
            next_stream: 0,
            echo: plan.echo_header().map(|_| StreamTable::new(ECHO_SLOTS, n)),
            recorder: plan.sidecar().map(|cfg| Recorder::new(cfg, plan, now_ms)),
            halts: plan.sidecar().map(|_| Halts::new(plan)),
            allocation: plan.sidecar().map(|_| Allocation::new(plan)),
        }
    }
}

impl WorkerSlot {
    /// The worker's state. A panic while it was held (caught at the hook)
    /// leaves counters and buffers that are still safe to use: take it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Worker> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn on_request_headers(&self, fenv: HttpFilterEnvoyPtr) -> u32 {
        let plan = &self.shared.plan;
        let mut guard = self.lock();
        let w = &mut *guard;
        read_headers(fenv, &mut w.headers);
        let req = EnvoyHeaders(&w.headers);
        let verdict = match (&w.halts, &w.allocation) {
            // Bandit weights as of the sidecar's last answer; halted
            // variants' users are routed like control: one branch when
            // nothing is halted, a bit test per assignment otherwise.
            (Some(halts), Some(allocation)) => {
                plan.decide_with(&req, halts, allocation, &mut w.decisions)
            }
            _ => plan.decide(&req, &mut w.decisions),
        };
        if verdict == Verdict::RejectMissingIdentity {
            debug_assert_eq!(plan.missing_identity(), MissingIdentity::Reject);
            drop(guard);
            // SAFETY: a live filter pointer during its hook.
            unsafe {
                abi::envoy_dynamic_module_callback_http_send_response(
                    fenv,
                    400,
                    std::ptr::null_mut(),
                    0,
                    ModuleBuffer::of(b"abmesh: this request needs a user identity\n"),
                    ModuleBuffer::of(b"abmesh_missing_identity"),
                );
            }
            return abi::STOP_ITERATION;
        }
        // Everything that reads Envoy's header buffers happens here, before
        // the first setter: the changes are only recorded, the user id is
        // copied into the exposure ring.
        w.changes.clear();
        plan.apply(&w.decisions, &req, &mut w.path_buf, &mut w.changes);
        w.changes.note_present(&req);
        if self.shared.per_stream {
            w.next_stream += 1;
            let stream = w.next_stream;
            let mut keep = false;
            if let Some(echo) = &mut w.echo {
                echo.insert_assignments(stream, w.decisions.assignments());
                keep = true;
            }
            if let Some(recorder) = &mut w.recorder {
                recorder.record(
                    stream,
                    &w.decisions,
                    || plan.identity(&req),
                    crate::shipping::now_ns,
                );
                keep |= recorder.is_sampled(stream);
            }
            // Only streams with something to do at their response.
            if keep {
                w.streams.insert(fenv as usize, stream);
            }
        }
        // Buffers from Envoy are not used past this point.
        w.changes.write(fenv);
        abi::CONTINUE
    }

    pub fn on_response_headers(&self, fenv: HttpFilterEnvoyPtr) {
        if !self.shared.per_stream {
            return;
        }
        let plan = &self.shared.plan;
        let mut guard = self.lock();
        let w = &mut *guard;
        let Some(stream) = w.streams.remove(fenv as usize) else {
            return;
        };
        if let Some(recorder) = &mut w.recorder {
            recorder.on_response(stream, || response_status(fenv), crate::shipping::now_ns);
        }
        if let Some(echo) = &mut w.echo {
            if echo.take_assignments(stream, &mut w.decisions) {
                plan.write_echo(&w.decisions, &mut w.echo_buf);
                if let (false, Some(name)) = (w.echo_buf.is_empty(), plan.echo_header()) {
                    // SAFETY: a live filter pointer during its hook.
                    unsafe {
                        abi::envoy_dynamic_module_callback_http_set_header(
                            fenv,
                            abi::RESPONSE_HEADER,
                            ModuleBuffer::of(name.as_bytes()),
                            ModuleBuffer::of(&w.echo_buf),
                        );
                    }
                }
            }
        }
    }

    /// A stream that ended before its response headers (reset, closed)
    /// leaves nothing behind.
    pub fn on_stream_complete(&self, fenv: HttpFilterEnvoyPtr) {
        if self.shared.per_stream {
            self.lock().streams.remove(fenv as usize);
        }
    }
}

/// Reads every request header in one call (after asking how many).
fn read_headers(fenv: HttpFilterEnvoyPtr, out: &mut Vec<HttpHeader>) {
    out.clear();
    // SAFETY: a live filter pointer during its hook; `out` has room for
    // `n` headers, which Envoy writes before we set the length.
    unsafe {
        let n = abi::envoy_dynamic_module_callback_http_get_headers_size(fenv, abi::REQUEST_HEADER);
        if n == 0 {
            return;
        }
        // Grows only for a request with more headers than any before.
        out.reserve(n);
        out.as_mut_ptr().write_bytes(0, n);
        if abi::envoy_dynamic_module_callback_http_get_headers(
            fenv,
            abi::REQUEST_HEADER,
            out.as_mut_ptr(),
        ) {
            out.set_len(n);
        }
    }
}

/// The response's `:status`, parsed before anything is set on the response.
fn response_status(fenv: HttpFilterEnvoyPtr) -> Option<u32> {
    let mut buf = abi::EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
    // SAFETY: a live filter pointer during its hook; the buffer is read
    // before any setter.
    unsafe {
        abi::envoy_dynamic_module_callback_http_get_header(
            fenv,
            abi::RESPONSE_HEADER,
            ModuleBuffer::of(b":status"),
            &mut buf,
            0,
            std::ptr::null_mut(),
        )
        .then(|| abmesh_filter::telemetry::parse_status(abi::bytes(buf.ptr, buf.length)))
        .flatten()
    }
}

/// The request's headers as Envoy handed them (lower-case names).
pub struct EnvoyHeaders<'h>(pub &'h [HttpHeader]);

impl<'h> EnvoyHeaders<'h> {
    fn values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'h [u8]> + 'n
    where
        'h: 'n,
    {
        let name = name.as_bytes();
        self.0.iter().filter_map(move |h| {
            // SAFETY: the pointers come from get_headers and are read only
            // before the first setter call of this hook.
            let key = unsafe { abi::bytes(h.key_ptr, h.key_length) };
            (key == name).then(|| unsafe { abi::bytes(h.value_ptr, h.value_length) })
        })
    }
}

impl RequestHeaders for EnvoyHeaders<'_> {
    fn get(&self, _slot: Slot, name: &str) -> Option<&[u8]> {
        self.values(name).next()
    }

    fn contains(&self, name: &str) -> Option<bool> {
        Some(self.values(name).next().is_some())
    }

    fn cookie(&self, _slot: Slot, name: &str, cookie: &[u8]) -> Option<&[u8]> {
        // Every `cookie` header: HTTP/1.1 requests may carry several.
        self.values(name)
            .find_map(|header| abmesh_filter::identity::cookie_value(header, cookie))
    }
}

/// Header changes, recorded (names and values copied into one buffer) and
/// written to Envoy afterwards. Sized at configuration: no allocation for
/// paths up to [`PATH_CAPACITY`].
pub struct Changes {
    /// (start in `bytes`, name length, value length or `None` to remove,
    /// whether the request had the header).
    ops: Vec<(usize, usize, Option<usize>, bool)>,
    bytes: Vec<u8>,
}

impl Changes {
    pub fn with_capacity(ops: usize, bytes: usize) -> Changes {
        Changes {
            ops: Vec::with_capacity(ops),
            bytes: Vec::with_capacity(bytes),
        }
    }

    fn clear(&mut self) {
        self.ops.clear();
        self.bytes.clear();
    }

    fn push(&mut self, name: &str, value: Option<&[u8]>) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name.as_bytes());
        let value_len = value.map(|v| {
            self.bytes.extend_from_slice(v);
            v.len()
        });
        self.ops.push((start, name.len(), value_len, true));
    }

    /// Notes which headers the request lacks (read before any setter), so
    /// that those are added: Envoy's `add_header` skips the search for
    /// existing values that `set_header` makes.
    fn note_present(&mut self, req: &EnvoyHeaders<'_>) {
        for op in &mut self.ops {
            let name = &self.bytes[op.0..op.0 + op.1];
            op.3 = req.0.iter().any(|h| {
                // SAFETY: as in `EnvoyHeaders`: before the first setter.
                unsafe { abi::bytes(h.key_ptr, h.key_length) == name }
            });
        }
    }

    /// Writes the recorded changes, then has Envoy re-select the route if
    /// anything changed.
    fn write(&self, fenv: HttpFilterEnvoyPtr) {
        for &(start, name_len, value_len, present) in &self.ops {
            let name = ModuleBuffer::of(&self.bytes[start..start + name_len]);
            let value = match value_len {
                Some(n) => ModuleBuffer::of(&self.bytes[start + name_len..start + name_len + n]),
                None => ModuleBuffer::NULL,
            };
            // SAFETY: a live filter pointer during its hook; the buffers
            // are ours.
            unsafe {
                if present || value_len.is_none() {
                    abi::envoy_dynamic_module_callback_http_set_header(
                        fenv,
                        abi::REQUEST_HEADER,
                        name,
                        value,
                    );
                } else {
                    abi::envoy_dynamic_module_callback_http_add_header(
                        fenv,
                        abi::REQUEST_HEADER,
                        name,
                        value,
                    );
                }
            }
        }
        if !self.ops.is_empty() {
            // SAFETY: as above.
            unsafe { abi::envoy_dynamic_module_callback_http_clear_route_cache(fenv) };
        }
    }
}

impl HeaderSink for Changes {
    fn set(&mut self, name: &str, value: &[u8]) {
        self.push(name, Some(value));
    }
    fn remove(&mut self, name: &str) {
        self.push(name, None);
    }
}
