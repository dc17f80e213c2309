//! The proxy-wasm ABI 0.2.1 host functions abmesh uses, with safe wrappers.
//!
//! abmesh talks to the ABI directly rather than through the proxy-wasm Rust
//! SDK: the SDK exports every `proxy_on_*` callback, and Envoy enters the VM
//! for each one that is exported, on every request. A filter that only needs
//! request headers pays for response headers, body, log, done and delete
//! entries it ignores. Exporting only what we use is most of the difference
//! between the SDK filter (≈0.72 of Envoy without a filter) and this one;
//! see benches/README.md.

use std::ptr::null_mut;

/// Header maps of the ABI (all are header maps; trailers are not used).
#[repr(u32)]
#[derive(Clone, Copy)]
pub enum MapType {
    Request = 0,
    Response = 2,
    HttpCallResponse = 6,
}

/// Buffers of the ABI.
#[repr(u32)]
#[derive(Clone, Copy)]
pub enum BufferType {
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

/// Log levels of the ABI.
#[repr(u32)]
#[derive(Clone, Copy)]
pub enum LogLevel {
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// `WasmResult` codes we look at.
pub const STATUS_OK: u32 = 0;
pub const STATUS_NOT_FOUND: u32 = 1;

/// Filter return values.
pub const ACTION_CONTINUE: u32 = 0;
pub const ACTION_PAUSE: u32 = 1;

extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_http_call(
        upstream_data: *const u8,
        upstream_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        body_data: *const u8,
        body_size: usize,
        trailers_data: *const u8,
        trailers_size: usize,
        timeout_milliseconds: u32,
        return_token: *mut u32,
    ) -> u32;
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

/// Takes ownership of a buffer the host filled through
/// `proxy_on_memory_allocate`.
///
/// # Safety
/// `data` must be null or come from [`super::proxy_on_memory_allocate`]
/// with capacity `size`.
unsafe fn take_host_buffer(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

pub fn log(level: LogLevel, message: &str) {
    // SAFETY: pointer and length describe a live &str.
    unsafe {
        proxy_log(level as u32, message.as_ptr(), message.len());
    }
}

/// Up to `max_size` bytes of a buffer from its start; `None` if the host
/// has no such buffer now.
pub fn get_buffer(buffer: BufferType, max_size: usize) -> Option<Vec<u8>> {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: out-pointers are valid; the host allocates through our
    // allocator export.
    unsafe {
        let status = proxy_get_buffer_bytes(buffer as u32, 0, max_size, &mut data, &mut len);
        if status != STATUS_OK {
            return None;
        }
        // A host that found nothing to copy may leave the pointer null.
        Some(take_host_buffer(data, len).unwrap_or_default())
    }
}

/// The plugin configuration bytes (empty if none).
pub fn plugin_configuration(size: usize) -> Vec<u8> {
    get_buffer(BufferType::PluginConfiguration, size).unwrap_or_default()
}

/// The value of one header (the first if repeated).
pub fn get_header(map: MapType, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: as above; pointer and length describe a live &str.
    unsafe {
        match proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut len)
        {
            STATUS_OK => take_host_buffer(data, len),
            _ => None,
        }
    }
}

/// Every header of a map, serialized (see `crate::header_map`).
pub fn get_header_pairs(map: MapType) -> Option<Vec<u8>> {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: as above.
    unsafe {
        match proxy_get_header_map_pairs(map as u32, &mut data, &mut len) {
            STATUS_OK => take_host_buffer(data, len),
            _ => None,
        }
    }
}

pub fn set_header(map: MapType, name: &str, value: &[u8]) {
    // SAFETY: pointers and lengths describe live slices.
    unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        );
    }
}

pub fn remove_header(map: MapType, name: &str) {
    // SAFETY: pointer and length describe a live &str.
    unsafe {
        proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len());
    }
}

/// Calls a host foreign function with no arguments; returns the host's
/// status code.
pub fn call_foreign(name: &str) -> u32 {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: as above; any result buffer is taken back and freed.
    unsafe {
        let status = proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            [].as_ptr(),
            0,
            &mut data,
            &mut len,
        );
        drop(take_host_buffer(data, len));
        status
    }
}

/// Answers the request locally.
pub fn send_local_response(status: u32, details: &str, body: &[u8]) {
    // A serialized header map with zero pairs.
    let no_headers = 0u32.to_le_bytes();
    // SAFETY: pointers and lengths describe live slices.
    unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            no_headers.as_ptr(),
            no_headers.len(),
            -1,
        );
    }
}

pub fn set_tick_period_ms(period: u32) {
    // SAFETY: no pointers.
    unsafe {
        proxy_set_tick_period_milliseconds(period);
    }
}

/// Wall-clock time in ns since the Unix epoch (the ABI has no monotonic
/// clock; callers measuring intervals must tolerate a step back).
pub fn now_ns() -> u64 {
    let mut ns = 0u64;
    // SAFETY: valid out-pointer.
    unsafe {
        proxy_get_current_time_nanoseconds(&mut ns);
    }
    ns
}

/// Wall-clock time in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// Serializes header pairs in the ABI's map format.
pub fn serialize_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Starts an HTTP call to `cluster`; the answer arrives in
/// `proxy_on_http_call_response` with the returned token.
pub fn dispatch_http_call(
    cluster: &str,
    headers: &[u8],
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, u32> {
    let no_trailers = 0u32.to_le_bytes();
    let mut token = 0u32;
    // SAFETY: pointers and lengths describe live slices; valid out-pointer.
    let status = unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            no_trailers.as_ptr(),
            no_trailers.len(),
            timeout_ms,
            &mut token,
        )
    };
    if status == STATUS_OK {
        Ok(token)
    } else {
        Err(status)
    }
}
