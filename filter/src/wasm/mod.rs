//! The proxy-wasm glue: ABI exports that feed Envoy's request headers to the
//! assignment core and write its decisions back.
//!
//! Per request Envoy enters the VM four times: `proxy_on_context_create`,
//! `proxy_on_request_headers`, `proxy_on_response_headers`, and once to
//! allocate the copy of the request headers (`proxy_on_memory_allocate`).
//! Nothing else is exported, so nothing else is called. Hostcalls per
//! request: one read of the whole header map, one write per header the
//! decision sets, a removal only for routing headers the client sent. With
//! a `sidecar`, one request in `health_sample_every` also reads the clock
//! twice and the response's `:status` (see `shipping`).

mod abi;
mod shipping;

use crate::streams::StreamTable;
use crate::{HeaderSink, MissingIdentity, Plan, RequestHeaders, Slot, Verdict};
use abi::{LogLevel, MapType};
use std::cell::{OnceCell, RefCell};

/// Longest `:path` the rewrite buffer holds without growing.
const PATH_CAPACITY: usize = 8 * 1024;

/// One configured plugin instance (a root context). Several can share a VM
/// when Envoy runs the same module for several filters.
struct Root {
    id: u32,
    plan: Option<Plan>,
    /// Per-request scratch space, sized once in `proxy_on_configure`.
    scratch: Option<Scratch>,
    /// Assignments of in-flight streams, for the echo header.
    echo: Option<StreamTable>,
    route_cache_fn: bool,
    /// Exposure shipping to the sidecar, when configured.
    shipper: Option<shipping::Shipper>,
}

struct Scratch {
    decisions: crate::Decisions,
    headers: HeaderCache,
    path_buf: Vec<u8>,
    echo_buf: Vec<u8>,
}

struct Vm {
    roots: Vec<Root>,
    /// Stream context id → index in `roots`, needed only with several roots.
    stream_roots: StreamTable,
}

thread_local! {
    static VM: RefCell<Vm> = RefCell::new(Vm {
        roots: Vec::new(),
        stream_roots: StreamTable::new(4096, 1),
    });
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host copies header values and buffers into memory it gets from here.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::with_capacity(size);
    let p = v.as_mut_ptr();
    std::mem::forget(v);
    p
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_context_id: u32) {
    VM.with_borrow_mut(|vm| {
        if parent_context_id == 0 {
            vm.roots.push(Root {
                id: context_id,
                plan: None,
                scratch: None,
                echo: None,
                route_cache_fn: true,
                shipper: None,
            });
        } else if vm.roots.len() > 1 {
            if let Some(i) = vm.roots.iter().position(|r| r.id == parent_context_id) {
                vm.stream_roots
                    .insert(u64::from(context_id), &[i as u16 + 1]);
            }
        }
    })
}

/// Parses and validates the plugin configuration. Returning 0 makes Envoy
/// refuse the plugin; the log line names the offending field.
#[no_mangle]
pub extern "C" fn proxy_on_configure(root_context_id: u32, configuration_size: usize) -> u32 {
    let bytes = abi::plugin_configuration(configuration_size);
    let plan = match Plan::from_json(&bytes) {
        Ok(plan) => plan,
        Err(e) => {
            abi::log(LogLevel::Error, &format!("abmesh: {e}"));
            return 0;
        }
    };
    // What the sidecar gets (and what the config id names): the bytes as
    // given, or without `sidecar.token` when they carry one.
    let redacted = match crate::config::shipped_config(&bytes) {
        Ok(std::borrow::Cow::Borrowed(_)) => None,
        Ok(std::borrow::Cow::Owned(redacted)) => Some(redacted),
        Err(e) => {
            abi::log(
                LogLevel::Error,
                &format!(
                    "abmesh: invalid configuration: cannot leave sidecar.token out of it: {e}"
                ),
            );
            return 0;
        }
    };
    let bytes = redacted.unwrap_or(bytes);
    abi::log(
        LogLevel::Info,
        &format!(
            "abmesh: configured {} experiment(s): {} (config {})",
            plan.experiments().len(),
            plan.experiments()
                .iter()
                .map(|e| e.name())
                .collect::<Vec<_>>()
                .join(", "),
            crate::config_id(&bytes)
        ),
    );
    VM.with_borrow_mut(|vm| {
        let Some(root) = vm.roots.iter_mut().find(|r| r.id == root_context_id) else {
            abi::log(
                LogLevel::Error,
                "abmesh: configure for an unknown root context",
            );
            return 0;
        };
        root.scratch = Some(Scratch {
            decisions: plan.decisions(),
            headers: HeaderCache {
                all: OnceCell::new(),
            },
            path_buf: Vec::with_capacity(PATH_CAPACITY),
            echo_buf: Vec::with_capacity(256),
        });
        root.echo = plan
            .echo_header()
            .map(|_| StreamTable::new(1024, plan.experiments().len()));
        root.shipper = plan.sidecar().map(|cfg| {
            abi::set_tick_period_ms(cfg.flush_interval_ms);
            shipping::Shipper::new(cfg, &plan, root_context_id, bytes)
        });
        root.plan = Some(plan);
        1
    })
}

/// The request's headers, read from the host in one hostcall on first use
/// (`proxy_get_header_map_pairs`) and looked up in place.
///
/// One bulk read costs about as much as one single-header read (both are
/// one hostcall plus one allocation callback into the VM), so reading the
/// whole map is never slower for plans that read one header, faster for
/// plans that read several, and it tells us which headers the client sent,
/// so headers the client must not set are only removed when present.
struct HeaderCache {
    all: OnceCell<Option<Vec<u8>>>,
}

impl HeaderCache {
    fn map(&self) -> Option<&[u8]> {
        self.all
            .get_or_init(|| abi::get_header_pairs(MapType::Request))
            .as_deref()
    }
}

impl RequestHeaders for HeaderCache {
    fn get(&self, _slot: Slot, name: &str) -> Option<&[u8]> {
        crate::header_map::find(self.map()?, name.as_bytes())
    }

    fn contains(&self, name: &str) -> Option<bool> {
        Some(crate::header_map::find(self.map()?, name.as_bytes()).is_some())
    }

    fn cookie(&self, _slot: Slot, name: &str, cookie: &[u8]) -> Option<&[u8]> {
        // Every `cookie` header: HTTP/1.1 requests may carry several.
        crate::header_map::values(self.map()?, name.as_bytes())
            .find_map(|header| crate::identity::cookie_value(header, cookie))
    }
}

struct HostSink;

impl HeaderSink for HostSink {
    fn set(&mut self, name: &str, value: &[u8]) {
        abi::set_header(MapType::Request, name, value);
    }
    fn remove(&mut self, name: &str) {
        abi::remove_header(MapType::Request, name);
    }
}

fn root_of(vm: &mut Vm, context_id: u32) -> Option<&mut Root> {
    if vm.roots.len() == 1 {
        return vm.roots.first_mut();
    }
    let mut idx = [0u16];
    if !vm.stream_roots.get(u64::from(context_id), &mut idx) || idx[0] == 0 {
        return None;
    }
    vm.roots.get_mut(usize::from(idx[0] - 1))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _headers: usize, _eos: u32) -> u32 {
    VM.with_borrow_mut(|vm| {
        let Some(root) = root_of(vm, context_id) else {
            return abi::ACTION_CONTINUE;
        };
        let (Some(plan), Some(s)) = (&root.plan, &mut root.scratch) else {
            return abi::ACTION_CONTINUE;
        };
        s.headers.all.take();
        let verdict = match &root.shipper {
            // Bandit weights as of the sidecar's last answer; halted
            // variants' users are routed like control: one branch when
            // nothing is halted, a bit test per assignment otherwise.
            Some(shipper) => plan.decide_with(
                &s.headers,
                &shipper.halts,
                &shipper.allocation,
                &mut s.decisions,
            ),
            None => plan.decide(&s.headers, &mut s.decisions),
        };
        if verdict == Verdict::RejectMissingIdentity {
            debug_assert_eq!(plan.missing_identity(), MissingIdentity::Reject);
            abi::send_local_response(
                400,
                "abmesh_missing_identity",
                b"abmesh: this request needs a user identity\n",
            );
            return abi::ACTION_PAUSE;
        }
        plan.apply(&s.decisions, &s.headers, &mut s.path_buf, &mut HostSink);
        if plan.clear_route_cache() && root.route_cache_fn {
            // Opt-in: Envoy 1.40 re-selects the route by itself after a
            // Wasm filter changes request headers; this is for proxies that
            // do not.
            if abi::call_foreign("clear_route_cache") == abi::STATUS_NOT_FOUND {
                root.route_cache_fn = false;
                abi::log(
                    LogLevel::Warn,
                    "abmesh: this proxy has no clear_route_cache foreign function; \
                     relying on it to re-select the route after header changes",
                );
            }
        }
        if let Some(echo) = &mut root.echo {
            echo.insert_assignments(u64::from(context_id), s.decisions.assignments());
        }
        if let Some(shipper) = &mut root.shipper {
            shipper.record(context_id, &s.decisions, || plan.identity(&s.headers));
        }
        abi::ACTION_CONTINUE
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, _headers: usize, _eos: u32) -> u32 {
    VM.with_borrow_mut(|vm| {
        let Some(root) = root_of(vm, context_id) else {
            return abi::ACTION_CONTINUE;
        };
        if let Some(shipper) = &mut root.shipper {
            shipper.on_response_headers(context_id);
        }
        let (Some(plan), Some(s), Some(echo)) = (&root.plan, &mut root.scratch, &mut root.echo)
        else {
            return abi::ACTION_CONTINUE;
        };
        if echo.take_assignments(u64::from(context_id), &mut s.decisions) {
            plan.write_echo(&s.decisions, &mut s.echo_buf);
            if !s.echo_buf.is_empty() {
                let name = plan.echo_header().unwrap_or_default();
                abi::set_header(MapType::Response, name, &s.echo_buf);
            }
        }
        abi::ACTION_CONTINUE
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_context_id: u32) {
    VM.with_borrow_mut(|vm| {
        let Some(root) = vm.roots.iter_mut().find(|r| r.id == root_context_id) else {
            return;
        };
        if let Some(shipper) = &mut root.shipper {
            shipper.on_tick();
        }
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    VM.with_borrow_mut(|vm| {
        let Some(root) = vm.roots.iter_mut().find(|r| r.id == context_id) else {
            return;
        };
        if let (Some(shipper), Some(plan)) = (&mut root.shipper, &root.plan) {
            let map = abi::get_header_pairs(MapType::HttpCallResponse);
            let status = map
                .as_deref()
                .and_then(|m| crate::header_map::find(m, b":status"));
            shipper.on_response(plan, token, status, body_size);
        }
    })
}
