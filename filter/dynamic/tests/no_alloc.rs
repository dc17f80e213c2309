//! The native filter's per-request path allocates nothing in the module:
//! requests, responses and stream ends through the hooks against the fake
//! Envoy (whose own allocations, Envoy's side, are not counted), with echo,
//! exposures and health recording, a halt and bandit weights in force,
//! rewrites, cookies and 8 KiB ids.

mod fake;

use abmesh_filter_dynamic as dm;
use abmesh_filter_dynamic::abi::EnvoyBuffer;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::c_void;

struct Counting;

thread_local! {
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // Only this thread's allocations outside the fake's callbacks.
        let _ = COUNT.try_with(|c| {
            if !fake::IN_ENVOY.try_with(Cell::get).unwrap_or(true) {
                c.set(c.get() + 1);
            }
        });
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = COUNT.try_with(|c| {
            if !fake::IN_ENVOY.try_with(Cell::get).unwrap_or(true) {
                c.set(c.get() + 1);
            }
        });
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn allocations() -> u64 {
    COUNT.with(Cell::get)
}

fn buf(b: &[u8]) -> EnvoyBuffer {
    EnvoyBuffer {
        ptr: b.as_ptr(),
        length: b.len(),
    }
}

const CONFIG: &str = r#"{
  "identity": [{"header": "x-user-id"}, {"cookie": "uid"}],
  "echo_header": "x-abmesh-assignment",
  "force_header": "x-abmesh-force",
  "sidecar": {"cluster": "abmesh_sidecar", "flush_interval_ms": 3600000, "health_sample_every": 2},
  "experiments": [
    {"name": "ranker", "layer": {"name": "models", "range_percent": [0, 50]},
     "match": {"path_prefix": "/v2/models/ranker/"},
     "allowlist": {"qa-user": "treatment"},
     "variants": [
       {"name": "control", "weight": 1, "cluster": "ranker_v1", "path_prefix": "/v2/models/ranker/versions/1/"},
       {"name": "treatment", "weight": 1, "cluster": "ranker_v2", "path_prefix": "/v2/models/ranker/versions/2/", "authority": "v2"}]},
    {"name": "reranker", "layer": {"name": "models", "range_percent": [50, 100]},
     "variants": [{"name": "a", "weight": 1, "cluster": "rr_a"}, {"name": "b", "weight": 1, "cluster": "rr_b"}]},
    {"name": "banner", "traffic_percent": 80, "bandit": {"metric": "click"},
     "variants": [{"name": "x", "weight": 1}, {"name": "y", "weight": 1}, {"name": "z", "weight": 1}]}
  ]}"#;

#[test]
fn the_request_path_allocates_nothing_in_the_module() {
    let _g = fake::lock();
    let cfg = unsafe {
        dm::envoy_dynamic_module_on_http_filter_config_new(
            8 as *mut c_void,
            buf(b"abmesh"),
            buf(CONFIG.as_bytes()),
        )
    };
    assert!(!cfg.is_null());
    // A halt and bandit weights in force (as the sidecar's answer sets
    // them).
    unsafe { dm::envoy_dynamic_module_on_http_filter_config_scheduled(8 as *mut c_void, cfg, 0) };
    let id = fake::with(|f| f.callouts[0].id);
    let k = b":status";
    let status = b"200";
    let headers = [dm::abi::HttpHeader {
        key_ptr: k.as_ptr(),
        key_length: k.len(),
        value_ptr: status.as_ptr(),
        value_length: 3,
    }];
    let reply = br#"{"halted": [{"experiment": "banner", "variant": "z"}],
        "allocations": [{"experiment": "banner", "period": 2, "weights": {"x": 0.34, "y": 0.5, "z": 0.16}}]}"#;
    let chunks = [buf(reply)];
    unsafe {
        dm::envoy_dynamic_module_on_http_filter_config_http_callout_done(
            8 as *mut c_void,
            cfg,
            id,
            0,
            headers.as_ptr(),
            1,
            chunks.as_ptr(),
            1,
        )
    };
    assert!(fake::logs().iter().any(|l| l.contains("bandit period 2")));

    let ids: Vec<Vec<u8>> = (0..600)
        .map(|i| match i % 5 {
            0 => (0..8192).map(|j| b'a' + ((i + j) % 26) as u8).collect(),
            1 => vec![b'u', 0xff, (i % 256) as u8, 0x80],
            _ => format!("{:08x}-user-{i}", i * 7919).into_bytes(),
        })
        .collect();
    let cookies: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| [&b"lang=en; uid="[..], id].concat())
        .collect();
    let long_path = format!("/v2/models/ranker/infer?{}", "q".repeat(4000));
    let run = |round: usize| {
        for (i, (id, cookie)) in ids.iter().zip(&cookies).enumerate() {
            let path: &[u8] = if i % 3 == 0 {
                long_path.as_bytes()
            } else {
                b"/v2/models/ranker/infer"
            };
            let by_header: [(&str, &[u8]); 5] = [
                (":path", path),
                (":method", b"POST"),
                (":authority", b"front"),
                ("x-user-id", id),
                ("x-abmesh-cluster", b"spoofed"),
            ];
            let by_cookie: [(&str, &[u8]); 5] = [
                (":path", b"/other"),
                (":method", b"GET"),
                ("cookie", b"theme=dark"),
                ("cookie", cookie),
                ("x-abmesh-force", b"banner=x, ranker=control"),
            ];
            let qa: [(&str, &[u8]); 2] =
                [(":path", b"/v2/models/ranker/x"), ("x-user-id", b"qa-user")];
            let anonymous: [(&str, &[u8]); 1] = [(":path", b"/")];
            for (j, headers) in [&by_header[..], &by_cookie[..], &qa[..], &anonymous[..]]
                .iter()
                .enumerate()
            {
                fake::set_request(headers);
                let fenv = ((round * 100_000 + i * 4 + j + 1) * 64) as *mut c_void;
                let f = unsafe { dm::envoy_dynamic_module_on_http_filter_new(cfg, fenv) };
                unsafe { dm::envoy_dynamic_module_on_http_filter_request_headers(fenv, f, true) };
                if j != 3 {
                    unsafe {
                        dm::envoy_dynamic_module_on_http_filter_response_headers(fenv, f, true)
                    };
                }
                unsafe { dm::envoy_dynamic_module_on_http_filter_stream_complete(fenv, f) };
                unsafe { dm::envoy_dynamic_module_on_http_filter_destroy(f) };
            }
        }
    };
    // Warm-up: buffers reach the sizes these requests need.
    run(0);
    let start = allocations();
    run(1);
    run(2);
    let allocated = allocations() - start;
    assert_eq!(
        allocated,
        0,
        "{allocated} allocations over {} requests",
        2 * 4 * ids.len()
    );
    // The work really happened.
    assert!(fake::with(|f| f.route_cache_cleared) > 3000);
    assert!(
        fake::response_header("x-abmesh-assignment").is_none(),
        "the last, anonymous, request"
    );
    unsafe { dm::envoy_dynamic_module_on_http_filter_config_destroy(cfg) };
}

#[test]
fn the_counter_does_count() {
    let start = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert_eq!(allocations() - start, 1);
    drop(v);
}
