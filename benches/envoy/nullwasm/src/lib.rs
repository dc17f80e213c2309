//! Exports the same entry points as the abmesh filter (filter/src/wasm) and,
//! per request, does only what the plugin configuration string asks, so the
//! cost of each piece of proxy-wasm plumbing can be measured on its own.
//! The configuration is a comma-separated list of steps, run in order:
//!
//! * `get`: read the `x-user-id` request header (one host call, plus one
//!   `proxy_on_memory_allocate` entry when the header is present);
//! * `pairs`: read all request headers at once (`proxy_get_header_map_pairs`:
//!   one host call, one `proxy_on_memory_allocate` entry);
//! * `set`: replace a request header with a fixed value (one host call; the
//!   n-th `set` writes the n-th of `x-abmesh-ranker_a`, `x-abmesh-banner`,
//!   `x-abmesh-cluster`, `x-abmesh-extra`);
//! * `rm`: remove a request header the request does not have (one host call);
//! * `crc`: call the `clear_route_cache` foreign function.
//!
//! `{}` or an empty string: nothing at all (pure VM entry cost).

use std::ptr::null_mut;

extern "C" {
    fn proxy_get_buffer_bytes(t: u32, start: usize, max: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(map: u32, key: *const u8, key_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(map: u32, key: *const u8, key_size: usize, value: *const u8, value_size: usize) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_call_foreign_function(name: *const u8, name_size: usize, args: *const u8, args_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
}

#[derive(Clone, Copy)]
enum Step {
    Get,
    Pairs,
    Set(&'static str),
    Rm,
    Crc,
}

static mut STEPS: Vec<Step> = Vec::new();
const SET_NAMES: [&str; 4] = ["x-abmesh-ranker_a", "x-abmesh-banner", "x-abmesh-cluster", "x-abmesh-extra"];

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::with_capacity(size);
    let p = v.as_mut_ptr();
    std::mem::forget(v);
    p
}

unsafe fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    (!data.is_null()).then(|| Vec::from_raw_parts(data, size, size))
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> u32 {
    1
}

#[no_mangle]
#[allow(static_mut_refs)]
pub extern "C" fn proxy_on_configure(_root: u32, size: usize) -> u32 {
    let (mut data, mut len) = (null_mut(), 0);
    unsafe {
        proxy_get_buffer_bytes(7, 0, size, &mut data, &mut len);
        let cfg = take(data, len).unwrap_or_default();
        let mut sets = 0;
        for word in cfg.split(|&b| b == b',') {
            STEPS.push(match word {
                b"get" => Step::Get,
                b"pairs" => Step::Pairs,
                b"set" => {
                    sets += 1;
                    Step::Set(SET_NAMES[(sets - 1) % SET_NAMES.len()])
                }
                b"rm" => Step::Rm,
                b"crc" => Step::Crc,
                _ => continue,
            });
        }
    }
    1
}

#[cfg(not(feature = "no_create"))]
#[no_mangle]
pub extern "C" fn proxy_on_context_create(_context: u32, _parent: u32) {}

#[no_mangle]
#[allow(static_mut_refs)]
pub extern "C" fn proxy_on_request_headers(_context: u32, _headers: usize, _eos: u32) -> u32 {
    unsafe {
        for step in STEPS.iter() {
            let (mut data, mut len) = (null_mut(), 0);
            match *step {
                Step::Get => {
                    let name = "x-user-id";
                    proxy_get_header_map_value(0, name.as_ptr(), name.len(), &mut data, &mut len);
                }
                Step::Pairs => {
                    proxy_get_header_map_pairs(0, &mut data, &mut len);
                }
                Step::Set(name) => {
                    let value = "control";
                    proxy_replace_header_map_value(0, name.as_ptr(), name.len(), value.as_ptr(), value.len());
                }
                Step::Rm => {
                    let name = "x-abmesh-absent";
                    proxy_remove_header_map_value(0, name.as_ptr(), name.len());
                }
                Step::Crc => {
                    let name = "clear_route_cache";
                    proxy_call_foreign_function(name.as_ptr(), name.len(), [].as_ptr(), 0, &mut data, &mut len);
                }
            }
            drop(take(data, len));
        }
    }
    0
}

#[cfg(not(feature = "no_response"))]
#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_context: u32, _headers: usize, _eos: u32) -> u32 {
    0
}
