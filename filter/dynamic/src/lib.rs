// The hooks take Envoy's pointers, and the module's own back from Envoy;
// their safety contract is the ABI's (see `abi`), which is why they are
// `unsafe extern "C"` without a `# Safety` section each.
#![allow(clippy::missing_safety_doc)]
//! abmesh as a native Envoy dynamic module (`envoy.filters.http.dynamic_modules`).
//!
//! The same assignment core as the proxy-wasm filter ([`abmesh_filter`]),
//! the same plugin JSON (as the filter's `filter_config`), the same
//! assignments bit for bit; what differs is the glue. Envoy calls the
//! exported `envoy_dynamic_module_on_*` hooks below directly, without a VM
//! and without copying headers into one, so the per-request cost is the
//! core's work plus a few native callbacks.
//!
//! * [`abi`]: the hand-declared callbacks, pinned to ABI v0.2.0 (Envoy 1.40).
//! * [`filter`]: the filter configuration (shared and immutable: the plan)
//!   and its per-worker state (decision buffers, header scratch, stream
//!   table, exposure recorder), and the request and response hooks.
//! * [`shipping`]: exposures, health and halts exchanged with the sidecar
//!   from the main thread, on a tick the module's own clock thread
//!   schedules (see that module for why not a bootstrap extension).
//!
//! No hook lets a panic unwind into Envoy: each runs inside
//! [`guard`], which turns a panic into the hook's neutral answer (the
//! workspace's release profile unwinds, for the sidecar binary).

pub mod abi;
mod filter;
mod shipping;
mod streams;

use abi::{EnvoyBuffer, HttpFilterConfigEnvoyPtr, HttpFilterEnvoyPtr, HttpHeader};
use filter::{FilterConfig, WorkerSlot};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs a hook body; a panic becomes `fallback` (and a log line) instead
/// of unwinding across the FFI boundary, which would be undefined
/// behaviour.
fn guard<T>(hook: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(_) => {
            // Logging itself must not panic out of here either.
            let _ = catch_unwind(|| abi::log(abi::LOG_ERROR, &format!("abmesh: panic in {hook}")));
            fallback
        }
    }
}

/// # Safety
/// Envoy passes back what `on_http_filter_new` returned.
unsafe fn slot<'a>(ptr: *const c_void) -> Option<&'a WorkerSlot> {
    (ptr as *const WorkerSlot).as_ref()
}

/// # Safety
/// Envoy passes back what `on_http_filter_config_new` returned.
unsafe fn config<'a>(ptr: *const c_void) -> Option<&'a FilterConfig> {
    (ptr as *const FilterConfig).as_ref()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    abi::ABI_VERSION.as_ptr()
}

/// Parses and validates the plugin JSON. NULL makes Envoy refuse the
/// filter; the log line names the offending field.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard("on_http_filter_config_new", std::ptr::null(), || {
        // SAFETY: Envoy's buffers are valid during this hook.
        let (name, config) = unsafe {
            (
                abi::bytes(name.ptr, name.length),
                abi::bytes(config.ptr, config.length),
            )
        };
        match FilterConfig::new(filter_config_envoy_ptr, name, config) {
            Ok(cfg) => Box::into_raw(cfg) as *const c_void,
            Err(message) => {
                abi::log(abi::LOG_ERROR, &message);
                std::ptr::null()
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    filter_config_ptr: *const c_void,
) {
    guard("on_http_filter_config_destroy", (), || {
        if !filter_config_ptr.is_null() {
            // SAFETY: made by Box::into_raw in config_new; Envoy destroys a
            // configuration once, after its last filter.
            let cfg = unsafe { Box::from_raw(filter_config_ptr as *mut FilterConfig) };
            cfg.shutdown();
        }
    })
}

/// Per stream: no allocation, no callback (after a thread's first stream),
/// just the worker's slot.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    filter_config_ptr: *const c_void,
    filter_envoy_ptr: HttpFilterEnvoyPtr,
) -> *const c_void {
    guard("on_http_filter_new", std::ptr::null(), || {
        // SAFETY: see `config`.
        match unsafe { config(filter_config_ptr) } {
            Some(cfg) => cfg.worker(filter_envoy_ptr) as *const WorkerSlot as *const c_void,
            None => std::ptr::null(),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: HttpFilterEnvoyPtr,
    filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    guard("on_http_filter_request_headers", abi::CONTINUE, || {
        // SAFETY: see `slot`.
        match unsafe { slot(filter_module_ptr) } {
            Some(slot) => slot.on_request_headers(filter_envoy_ptr),
            None => abi::CONTINUE,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy_ptr: HttpFilterEnvoyPtr,
    filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    guard("on_http_filter_response_headers", abi::CONTINUE, || {
        // SAFETY: see `slot`.
        if let Some(slot) = unsafe { slot(filter_module_ptr) } {
            slot.on_response_headers(filter_envoy_ptr);
        }
        abi::CONTINUE
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter_envoy_ptr: HttpFilterEnvoyPtr,
    filter_module_ptr: *const c_void,
) {
    guard("on_http_filter_stream_complete", (), || {
        // SAFETY: see `slot`.
        if let Some(slot) = unsafe { slot(filter_module_ptr) } {
            slot.on_stream_complete(filter_envoy_ptr);
        }
    })
}

/// The slot belongs to the configuration: nothing to free per stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(
    _filter_module_ptr: *const c_void,
) {
}

/// Main thread: the clock thread's tick.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
    filter_config_ptr: *const c_void,
    _event_id: u64,
) {
    guard("on_http_filter_config_scheduled", (), || {
        // SAFETY: see `config`.
        if let Some(cfg) = unsafe { config(filter_config_ptr) } {
            cfg.on_tick(filter_config_envoy_ptr);
        }
    })
}

/// Main thread: the sidecar answered a batch (or the call failed).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
    filter_config_ptr: *const c_void,
    callout_id: u64,
    result: abi::CalloutResult,
    headers: *const HttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    guard("on_http_filter_config_http_callout_done", (), || {
        // SAFETY: see `config`; the arrays are valid during this hook
        // (they may be null with a zero size).
        let Some(cfg) = (unsafe { config(filter_config_ptr) }) else {
            return;
        };
        let headers = unsafe { array(headers, headers_size) };
        let chunks = unsafe { array(body_chunks, body_chunks_size) };
        cfg.on_callout_done(callout_id, result, headers, chunks);
    })
}

/// # Safety
/// `ptr` must be null or point to `len` valid elements for the hook.
unsafe fn array<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

// ---- Hooks Envoy requires of every HTTP filter module; abmesh does not
// ---- use them. Each answers "continue" / does nothing.

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _: HttpFilterEnvoyPtr,
    _: *const c_void,
    _: bool,
) -> u32 {
    abi::CONTINUE
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _: HttpFilterEnvoyPtr,
    _: *const c_void,
) -> u32 {
    abi::CONTINUE
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _: HttpFilterEnvoyPtr,
    _: *const c_void,
    _: bool,
) -> u32 {
    abi::CONTINUE
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _: HttpFilterEnvoyPtr,
    _: *const c_void,
) -> u32 {
    abi::CONTINUE
}
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _: HttpFilterEnvoyPtr,
    _: *const c_void,
    _: u64,
    _: u32,
    _: *const HttpHeader,
    _: usize,
    _: *const EnvoyBuffer,
    _: usize,
) {
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _: HttpFilterEnvoyPtr,
    _: *const c_void,
    _: u64,
    _: *const HttpHeader,
    _: usize,
    _: bool,
) {
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _: HttpFilterEnvoyPtr,
    _: *const c_void,
    _: u64,
    _: *const EnvoyBuffer,
    _: usize,
    _: bool,
) {
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _: HttpFilterEnvoyPtr,
    _: *const c_void,
    _: u64,
    _: *const HttpHeader,
    _: usize,
) {
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _: HttpFilterEnvoyPtr,
    _: *const c_void,
    _: u64,
) {
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _: HttpFilterEnvoyPtr,
    _: *const c_void,
    _: u64,
    _: u32,
) {
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _: HttpFilterEnvoyPtr,
    _: *const c_void,
    _: u64,
) {
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: HttpFilterEnvoyPtr,
    _: *const c_void,
) {
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: HttpFilterEnvoyPtr,
    _: *const c_void,
) {
}
