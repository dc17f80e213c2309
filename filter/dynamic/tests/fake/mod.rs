//! A fake Envoy for the glue's tests: this test binary defines every
//! callback the module imports, over an in-memory request and response.
//!
//! Like Envoy, the fake hands out header buffers that are valid only until
//! the next setter call: `get_headers` and `get_header` copy into a
//! snapshot that every `set_header` overwrites with `#`, so a glue that
//! read a header after writing one would see garbage and fail the tests.
//!
//! State is process-wide (the module's clock thread calls the scheduler
//! from another thread); tests take [`lock`] to run one at a time.
#![allow(dead_code, clippy::missing_safety_doc)]

use abmesh_filter_dynamic::abi::{EnvoyBuffer, HttpHeader, ModuleBuffer};
use std::cell::Cell;
use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
pub struct Fake {
    pub request: Vec<(Vec<u8>, Vec<u8>)>,
    pub response: Vec<(Vec<u8>, Vec<u8>)>,
    snapshot: Vec<u8>,
    pub logs: Vec<(u32, String)>,
    pub route_cache_cleared: u32,
    pub setter_calls: u32,
    pub local_reply: Option<(u32, Vec<u8>, Vec<u8>)>,
    pub schedulers: u32,
    pub scheduler_deleted: u32,
    pub commits: u32,
    pub callouts: Vec<Callout>,
    pub callout_result: u32,
    pub concurrency: u32,
}

pub struct Callout {
    pub id: u64,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

pub static FAKE: Mutex<Option<Fake>> = Mutex::new(None);
static SERIAL: Mutex<()> = Mutex::new(());

thread_local! {
    /// Set while a fake callback runs: its allocations are Envoy's, not
    /// the module's (see the allocation test).
    pub static IN_ENVOY: Cell<bool> = const { Cell::new(false) };
}

/// Runs one test at a time with a fresh fake.
pub fn lock() -> MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = Fake {
        concurrency: 2,
        ..Fake::default()
    };
    f.snapshot.reserve(64 * 1024);
    *FAKE.lock().unwrap() = Some(f);
    g
}

/// Runs `f` on the fake (as Envoy would).
pub fn with<T>(f: impl FnOnce(&mut Fake) -> T) -> T {
    IN_ENVOY.with(|e| e.set(true));
    let r = f(FAKE.lock().unwrap().as_mut().expect("fake::lock() first"));
    IN_ENVOY.with(|e| e.set(false));
    r
}

pub fn set_request(headers: &[(&str, &[u8])]) {
    with(|f| {
        f.request.clear();
        f.request.extend(
            headers
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())),
        );
        f.response.clear();
        f.response.push((b":status".to_vec(), b"200".to_vec()));
    })
}

pub fn request_header(name: &str) -> Option<Vec<u8>> {
    with(|f| {
        f.request
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.clone())
    })
}

pub fn response_header(name: &str) -> Option<Vec<u8>> {
    with(|f| {
        f.response
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.clone())
    })
}

pub fn logs() -> Vec<String> {
    with(|f| f.logs.iter().map(|(_, m)| m.clone()).collect())
}

unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

impl Fake {
    fn map(&mut self, t: u32) -> &mut Vec<(Vec<u8>, Vec<u8>)> {
        match t {
            0 => &mut self.request,
            2 => &mut self.response,
            other => panic!("header map type {other} is not used by abmesh"),
        }
    }

    /// Copies `v` into the snapshot (no reallocation: reserved).
    fn snap(&mut self, v: &[u8]) -> *const u8 {
        assert!(
            self.snapshot.len() + v.len() <= self.snapshot.capacity(),
            "snapshot full"
        );
        let at = self.snapshot.len();
        self.snapshot.extend_from_slice(v);
        // SAFETY: within capacity, never reallocated.
        unsafe { self.snapshot.as_ptr().add(at) }
    }

    fn poison(&mut self) {
        self.snapshot.fill(b'#');
        self.snapshot.clear();
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer) {
    with(|f| {
        let m = String::from_utf8_lossy(unsafe { bytes(message.ptr, message.length) }).into_owned();
        f.logs.push((level, m))
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_get_concurrency() -> u32 {
    with(|f| f.concurrency)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_get_worker_index(
    _: *mut c_void,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_get_headers_size(
    _: *mut c_void,
    t: u32,
) -> usize {
    with(|f| f.map(t).len())
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_get_headers(
    _: *mut c_void,
    t: u32,
    out: *mut HttpHeader,
) -> bool {
    with(|f| {
        // A new hook: earlier buffers are gone.
        f.poison();
        let pairs = f.map(t).clone();
        for (i, (k, v)) in pairs.iter().enumerate() {
            let key_ptr = f.snap(k);
            let value_ptr = f.snap(v);
            out.add(i).write(HttpHeader {
                key_ptr,
                key_length: k.len(),
                value_ptr,
                value_length: v.len(),
            });
        }
        true
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_get_header(
    _: *mut c_void,
    t: u32,
    key: ModuleBuffer,
    out: *mut EnvoyBuffer,
    index: usize,
    count: *mut usize,
) -> bool {
    with(|f| {
        let key = bytes(key.ptr, key.length).to_vec();
        let values: Vec<Vec<u8>> = f
            .map(t)
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .collect();
        if !count.is_null() {
            *count = values.len();
        }
        match values.get(index) {
            Some(v) => {
                let ptr = f.snap(v);
                *out = EnvoyBuffer {
                    ptr,
                    length: v.len(),
                };
                true
            }
            None => {
                *out = EnvoyBuffer {
                    ptr: std::ptr::null(),
                    length: 0,
                };
                false
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_set_header(
    _: *mut c_void,
    t: u32,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    with(|f| {
        let key = bytes(key.ptr, key.length).to_vec();
        let value = (!value.ptr.is_null()).then(|| bytes(value.ptr, value.length).to_vec());
        f.setter_calls += 1;
        f.poison();
        let map = f.map(t);
        map.retain(|(k, _)| *k != key);
        if let Some(v) = value {
            map.push((key, v));
        }
        true
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_clear_route_cache(_: *mut c_void) {
    with(|f| f.route_cache_cleared += 1);
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_send_response(
    _: *mut c_void,
    status: u32,
    _headers: *mut HttpHeader,
    _n: usize,
    body: ModuleBuffer,
    details: ModuleBuffer,
) {
    with(|f| {
        let body = bytes(body.ptr, body.length).to_vec();
        let details = bytes(details.ptr, details.length).to_vec();
        f.local_reply = Some((status, body, details))
    });
}

/// The fake scheduler: a non-null token.
static SCHEDULER: u8 = 0;

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
    _: *mut c_void,
) -> *mut c_void {
    with(|f| f.schedulers += 1);
    &SCHEDULER as *const u8 as *mut c_void
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
    s: *mut c_void,
    _: u64,
) {
    assert_eq!(s as *const u8, &SCHEDULER as *const u8);
    with(|f| f.commits += 1);
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
    _: *mut c_void,
) {
    with(|f| f.scheduler_deleted += 1);
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_http_callout(
    _: *mut c_void,
    id_out: *mut u64,
    cluster: ModuleBuffer,
    headers: *mut HttpHeader,
    n: usize,
    body: ModuleBuffer,
    timeout_ms: u64,
) -> u32 {
    let cluster = String::from_utf8_lossy(bytes(cluster.ptr, cluster.length)).into_owned();
    let headers: Vec<(String, String)> = (0..n)
        .map(|i| {
            let h = &*headers.add(i);
            (
                String::from_utf8_lossy(bytes(h.key_ptr, h.key_length)).into_owned(),
                String::from_utf8_lossy(bytes(h.value_ptr, h.value_length)).into_owned(),
            )
        })
        .collect();
    let body = bytes(body.ptr, body.length).to_vec();
    with(|f| {
        if f.callout_result != 0 {
            return f.callout_result;
        }
        let id = f.callouts.len() as u64 + 1;
        *id_out = id;
        f.callouts.push(Callout {
            id,
            cluster,
            headers,
            body,
            timeout_ms,
        });
        0
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_callback_http_add_header(
    _: *mut c_void,
    t: u32,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    with(|f| {
        let key = bytes(key.ptr, key.length).to_vec();
        let value = bytes(value.ptr, value.length).to_vec();
        f.setter_calls += 1;
        f.poison();
        f.map(t).push((key, value));
        true
    })
}
