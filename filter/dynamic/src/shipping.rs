//! Exposures, health, halts and bandit weights exchanged with the sidecar,
//! from the main thread.
//!
//! Workers record into their own [`Recorder`]s (under their slot's lock).
//! On each tick the main thread moves every worker's exposures and health
//! counters into one ring and table, and sends one batch for the whole
//! configuration with the filter configuration's HTTP callout; the answer's
//! halts and bandit weights go back to every worker (each worker's copy
//! replaced as a whole, under its lock). The batch, the answer and the retry rules
//! are the Wasm filter's ([`abmesh_filter::protocol`]); one batch per Envoy
//! process and tick instead of one per worker.
//!
//! The tick: the HTTP-filter ABI has callouts and a main-thread scheduler,
//! but no timer. A bootstrap extension has timers, but it would have to be
//! configured separately in Envoy's bootstrap, next to every filter
//! configuration that ships (Envoy Gateway's `EnvoyExtensionPolicy` and
//! ECDS only deliver HTTP filters), and a filter configured without it
//! would silently never ship. So each configuration with a `sidecar`
//! starts one clock thread of its own that sleeps `flush_interval_ms` and
//! commits an event to the configuration's scheduler, which the ABI allows
//! from any thread; Envoy runs `on_http_filter_config_scheduled` on the
//! main thread, where the batch is written and sent. Requests never wait
//! for any of it. The thread stops when the configuration is destroyed
//! (before the scheduler is deleted, under the same lock, so it never
//! commits to a deleted scheduler; an event already posted is dropped by
//! Envoy once the configuration is gone).

use crate::abi::{
    self, ConfigSchedulerPtr, EnvoyBuffer, HttpFilterConfigEnvoyPtr, HttpHeader, ModuleBuffer,
};
use crate::filter::FilterConfig;
use abmesh_filter::config::SidecarConfig;
use abmesh_filter::exposures::ExposureRing;
use abmesh_filter::health::HealthTable;
use abmesh_filter::protocol::{self, Note, NoteLevel, Sender};
use abmesh_filter::{Allocation, Halts, Plan};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock ms since the Unix epoch (exposure times).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Monotonic ns since the module's first use (latencies).
pub fn now_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Numbers configurations of this process, for their batches' `instance`.
static CONFIGS: AtomicU64 = AtomicU64::new(0);

/// Main-thread shipping state of one configuration.
pub struct Shipping {
    state: Mutex<State>,
    ticker: Ticker,
}

struct State {
    sender: Sender,
    /// Exposures and health of all workers since the last batch taken.
    ring: ExposureRing,
    health: HealthTable,
    /// The sidecar's halts, as of its last answer.
    halts: Halts,
    /// The sidecar's bandit weights, as of its last answer that had them.
    allocation: Allocation,
    cluster: String,
    /// [`protocol::request_headers`] and the ABI's view of them (pointers
    /// into `header_values`, which never move).
    _header_values: Vec<(&'static str, String)>,
    headers: Vec<HttpHeader>,
    timeout_ms: u64,
    in_flight: Option<u64>,
    notes: Vec<Note>,
}

// SAFETY: `headers` points into `header_values`, owned by the same State;
// the state is only used under its Mutex, on the main thread.
unsafe impl Send for State {}

impl Shipping {
    pub fn start(
        cfg_envoy: HttpFilterConfigEnvoyPtr,
        sidecar: &SidecarConfig,
        plan: &Plan,
        shipped: Vec<u8>,
        now_ms: u64,
    ) -> Result<Shipping, String> {
        let n = CONFIGS.fetch_add(1, Ordering::Relaxed);
        let header_values = protocol::request_headers(sidecar);
        let headers = header_values
            .iter()
            .map(|(k, v)| HttpHeader {
                key_ptr: k.as_ptr(),
                key_length: k.len(),
                value_ptr: v.as_ptr(),
                value_length: v.len(),
            })
            .collect();
        let state = State {
            sender: Sender::new(
                plan,
                protocol::instance_id("abmesh-native", n, now_ms),
                shipped,
                sidecar.max_batch,
            ),
            ring: ExposureRing::new(sidecar.max_pending_exposures),
            health: HealthTable::new(plan),
            halts: Halts::new(plan),
            allocation: Allocation::new(plan),
            cluster: sidecar.cluster.clone(),
            _header_values: header_values,
            headers,
            timeout_ms: u64::from(sidecar.timeout_ms),
            in_flight: None,
            notes: Vec::new(),
        };
        // SAFETY: config_new runs on the main thread with a live pointer.
        let scheduler = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(cfg_envoy)
        };
        if scheduler.is_null() {
            return Err("abmesh: cannot create the scheduler that ships to the sidecar".into());
        }
        let ticker = Ticker::start(
            scheduler,
            Duration::from_millis(u64::from(sidecar.flush_interval_ms)),
        )?;
        Ok(Shipping {
            state: Mutex::new(state),
            ticker,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Collects every worker's exposures and health, and sends a batch
    /// unless one is in flight.
    pub fn on_tick(&self, cfg: &FilterConfig, cfg_envoy: HttpFilterConfigEnvoyPtr) {
        let now = now_ms();
        let mut guard = self.state();
        let st = &mut *guard;
        for slot in cfg.workers() {
            let mut w = slot.lock();
            if let Some(r) = &mut w.recorder {
                r.set_clock(now);
                r.move_into(&mut st.ring, &mut st.health);
            }
        }
        // The sender keeps the body until the sidecar took it (a retry
        // sends it again); Envoy copies it into the request.
        let Some(body) = st.sender.batch(&mut st.ring, Some(&mut st.health)) else {
            return;
        };
        let mut id = 0u64;
        // SAFETY: main thread, live configuration pointer; every buffer is
        // ours and outlives the call.
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                cfg_envoy,
                &mut id,
                ModuleBuffer::of(st.cluster.as_bytes()),
                st.headers.as_mut_ptr(),
                st.headers.len(),
                ModuleBuffer::of(body),
                st.timeout_ms,
            )
        };
        if result == abi::CALLOUT_INIT_SUCCESS {
            st.sender.dispatched();
            st.in_flight = Some(id);
        } else {
            let why = format!(
                "cannot call cluster {:?} ({}); is it defined?",
                st.cluster,
                init_result(result)
            );
            if let Some(note) = st.sender.not_dispatched(why) {
                log(&note);
            }
        }
    }

    pub fn on_callout_done(
        &self,
        cfg: &FilterConfig,
        callout_id: u64,
        result: abi::CalloutResult,
        headers: &[HttpHeader],
        chunks: &[EnvoyBuffer],
    ) {
        let mut guard = self.state();
        let st = &mut *guard;
        if st.in_flight != Some(callout_id) {
            return;
        }
        st.in_flight = None;
        // SAFETY (both): Envoy's arrays and buffers are valid during the
        // hook, which this function does not outlive.
        let status = (result == abi::CALLOUT_SUCCESS)
            .then(|| {
                headers.iter().find_map(|h| {
                    let key = unsafe { abi::bytes(h.key_ptr, h.key_length) };
                    (key == b":status").then(|| unsafe { abi::bytes(h.value_ptr, h.value_length) })
                })
            })
            .flatten();
        let mut body = Vec::new();
        if protocol::accepted(status) {
            for c in chunks {
                let chunk = unsafe { abi::bytes(c.ptr, c.length) };
                let room = protocol::MAX_REPLY_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
        }
        let before = (st.halts.clone(), st.allocation.clone());
        st.sender.answered(
            cfg.plan(),
            status,
            &body,
            &mut st.halts,
            &mut st.allocation,
            &mut st.notes,
        );
        for note in st.notes.drain(..) {
            log(&note);
        }
        let halts_changed = st.halts != before.0;
        let allocation_changed = st.allocation != before.1;
        if halts_changed || allocation_changed {
            for slot in cfg.workers() {
                // Both under one lock: a request sees the whole answer.
                let mut w = slot.lock();
                if halts_changed {
                    w.halts = Some(st.halts.clone());
                }
                if allocation_changed {
                    w.allocation = Some(st.allocation.clone());
                }
            }
        }
    }

    /// Stops the clock thread and deletes the scheduler (main thread).
    pub fn stop(self) {
        self.ticker.stop();
    }
}

fn init_result(r: abi::CalloutInitResult) -> &'static str {
    match r {
        1 => "missing required headers",
        2 => "cluster not found",
        3 => "duplicate callout id",
        4 => "cannot create request",
        _ => "unknown error",
    }
}

fn log(note: &Note) {
    let level = match note.level {
        NoteLevel::Info => abi::LOG_INFO,
        NoteLevel::Warn => abi::LOG_WARN,
    };
    abi::log(level, &note.to_string());
}

/// The scheduler pointer, usable from the clock thread.
struct SchedulerPtr(ConfigSchedulerPtr);
// SAFETY: the ABI allows `scheduler_commit` from any thread; the pointer is
// only used under `Clock::stopped`'s lock, and deleted under it too.
unsafe impl Send for SchedulerPtr {}

struct Clock {
    /// `Some` until stopped; the scheduler is deleted when it becomes `None`.
    scheduler: Mutex<Option<SchedulerPtr>>,
    wake: Condvar,
}

struct Ticker {
    clock: Arc<Clock>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(scheduler: ConfigSchedulerPtr, every: Duration) -> Result<Ticker, String> {
        let clock = Arc::new(Clock {
            scheduler: Mutex::new(Some(SchedulerPtr(scheduler))),
            wake: Condvar::new(),
        });
        let c = clock.clone();
        let thread = std::thread::Builder::new()
            .name("abmesh-tick".into())
            .spawn(move || {
                let mut next = Instant::now() + every;
                let mut guard = c.scheduler.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let now = Instant::now();
                    if now >= next {
                        let Some(s) = guard.as_ref() else { break };
                        // SAFETY: a live scheduler (not yet deleted: that
                        // happens under this lock after `None`).
                        unsafe {
                            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                                s.0, 0,
                            )
                        };
                        next += every;
                        if next < now {
                            next = now + every;
                        }
                        continue;
                    }
                    if guard.is_none() {
                        break;
                    }
                    guard = c
                        .wake
                        .wait_timeout(guard, next - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            })
            .map_err(|e| format!("abmesh: cannot start the sidecar clock thread: {e}"))?;
        Ok(Ticker {
            clock,
            thread: Some(thread),
        })
    }

    fn stop(mut self) {
        let taken = self
            .clock
            .scheduler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.clock.wake.notify_all();
        if let Some(s) = taken {
            // SAFETY: main thread; the clock thread can no longer see it.
            unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(s.0) };
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
