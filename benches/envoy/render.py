#!/usr/bin/env python3
"""Renders the Envoy throughput benchmark's bootstraps and the Lua peer's plan.

One bootstrap template (envoy.yaml.in) is rendered once per configuration;
the configurations differ only in their HTTP filter chain (and ports):

    none          no filter (router only)
    wasm          the abmesh wasm filter with experiments.json
    lua           abmesh_peer.lua: the same assignment in LuaJIT
  investigation variants of `wasm` (see README.md):
    wasm_crc      clear_route_cache: true (the filter's default is false)
    wasm_echo     echo_header: x-abmesh-assignment
    wasm_nomatch  every experiment has match.path_prefix "/never/": no hashing
    wasm_1exp     one experiment (ranker, no layer, 2 variants with clusters)
    wasm_null     nullwasm/: a module that exports the same entry points as
                  the filter and does nothing in them (pure VM entry cost)
    wasm_null_noresp  the same without the proxy_on_response_headers export
    wasm_null_min the same without proxy_on_response_headers and
                  proxy_on_context_create: one VM entry per request
    wasm_get      nullwasm reading x-user-id (one header read)
    wasm_get2     ... twice (the marginal cost of a header read)
    wasm_get_set  ... then one header write
    wasm_get_rm   ... then one remove of an absent header
    wasm_get_crc  ... then the clear_route_cache foreign call
    wasm_pairs    nullwasm reading all request headers in one call
    wasm_abi      nullwasm doing the filter's host calls for a typical enrolled
                  user (1 read, 3 writes, 1 remove, clear_route_cache), no hashing
    lua_null      a Lua filter whose envoy_on_request returns at once
    wasm_ship     exposures and health shipped to a sidecar on 127.0.0.1:$SIDECAR_PORT
                  (run.sh starts `abmesh serve`, icount.sh that or a stub);
                  health sampled at the default rate (1 request in 8)
    wasm_ship1    the same, health recorded for every request
    wasm_ship64   the same, health for 1 request in 64
    native        the native dynamic module (filter/dynamic, libabmesh_filter_dynamic.so)
                  with experiments.json, as `wasm`
    native_ship   the same, shipping to the sidecar like wasm_ship
    native_echo   the same, with the echo header like wasm_echo
    wasm_alt      another build of the filter, $WASM_ALT (e.g. a candidate
                  change built elsewhere), with experiments.json updated by
                  the JSON object in $WASM_ALT_SET (e.g. '{"clear_route_cache": false}')

The filter module is target/wasm32-wasip1/release/abmesh_filter.wasm, or
$ABMESH_WASM (e.g. a build in another CARGO_TARGET_DIR).

The Lua peer (abmesh_peer.lua) is hand-written except for the region between
`-- BEGIN GENERATED PLAN` and `-- END GENERATED PLAN`, which this script
writes from experiments.json: the SipHash-1-3 keys the filter derives at
configure time (filter/src/hash.rs: `SipHash-1-3-128(key 0, purpose ‖ 0xFF ‖
salt)`) are derived here by a pure-Python SipHash and embedded as 64-bit
literals, together with the bucket ranges the filter compiles (plan.rs).

The same Python model also assigns users (`assign`), which verify.py uses as
a third opinion next to the wasm filter and the Lua peer.

Usage:
    render.py selftest                 SipHash reference vectors + key dump
    render.py lua [--check]            (re)write the generated region of abmesh_peer.lua
    render.py bootstraps OUT_DIR       write OUT_DIR/<config>.yaml for every config
    render.py ports                    print "config port admin_port" lines
    render.py assign < ids             print the Python model's headers per id (JSON lines)
"""

import copy
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUCKETS = 10_000
MASK = (1 << 64) - 1

# ---------------------------------------------------------------- SipHash-1-3


def _rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & MASK


def _round(v0, v1, v2, v3):
    v0 = (v0 + v1) & MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13(k0, k1, data, wide=False):
    """SipHash-1-3 of `data` (bytes): a 64-bit int, or (h1, h2) if `wide`
    (the 128-bit variant, as siphasher's `finish128().as_u64()`)."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    if wide:
        v1 ^= 0xEE
    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xEE if wide else 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    h1 = v0 ^ v1 ^ v2 ^ v3
    if not wide:
        return h1
    v1 ^= 0xDD
    for _ in range(3):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    return h1, v0 ^ v1 ^ v2 ^ v3


def derive_key(purpose, salt):
    """filter/src/hash.rs BucketKey::derive."""
    return siphash13(0, 0, purpose.encode() + b"\xff" + salt.encode(), wide=True)


def to_bucket(h):
    return (h * BUCKETS) >> 64


def bucket(key, uid):
    return to_bucket(siphash13(key[0], key[1], uid))


def selftest():
    key = bytes(range(16))
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:], "little")
    # Pinned in filter/src/hash.rs (siphash13_reference_vector).
    assert siphash13(k0, k1, b"") == 0xABAC0158050FC4DC, hex(siphash13(k0, k1, b""))
    assert siphash13(k0, k1, b"\x00") == 0xC9F49BF37D57CA93
    assert to_bucket(0) == 0 and to_bucket(MASK) == BUCKETS - 1 and to_bucket(1 << 63) == BUCKETS // 2


# ------------------------------------------------- the plan (plan.rs subset)


def _rust_round(x):
    """f64::round (half away from zero) for x >= 0."""
    f = math.floor(x)
    return int(f + 1 if x - f >= 0.5 else f)


def percent_to_buckets(p):
    b = p * BUCKETS / 100.0
    r = _rust_round(b)
    assert abs(b - r) <= 1e-6, f"{p} is not a multiple of 0.01"
    return r


def compile_plan(cfg):
    """The subset of Plan::compile the Lua peer implements: header identity,
    layers, traffic share, weighted variants with clusters. Anything else is
    refused, so the peer never silently disagrees with the filter."""
    supported = {"identity", "experiments", "cluster_header", "missing_identity", "echo_header", "clear_route_cache"}
    extra = set(cfg) - supported
    assert not extra, f"the Lua peer does not implement {sorted(extra)}"
    assert cfg.get("missing_identity", "pass") == "pass", "the Lua peer implements missing_identity: pass only"
    ident = cfg.get("identity", [{"header": "x-user-id"}])
    assert len(ident) == 1 and list(ident[0]) == ["header"], "the Lua peer implements one header identity only"
    layers = []
    exps = []
    for e in cfg["experiments"]:
        extra = set(e) - {"name", "salt", "traffic_percent", "layer", "variants", "variant_header"}
        assert not extra, f"experiment {e['name']}: the Lua peer does not implement {sorted(extra)}"
        salt = e.get("salt") or e["name"]
        layer = None
        if "layer" in e:
            lname = e["layer"]["name"]
            if lname not in layers:
                layers.append(lname)
            s, t = e["layer"].get("range_percent", [0, 100])
            layer = (layers.index(lname), percent_to_buckets(s), percent_to_buckets(t))
        total = sum(v["weight"] for v in e["variants"])
        cum = 0.0
        variants = []
        for i, v in enumerate(e["variants"]):
            assert set(v) <= {"name", "weight", "cluster"}, f"variant {v['name']}: unsupported fields"
            cum += v["weight"]
            upper = BUCKETS if i + 1 == len(e["variants"]) else _rust_round((cum / total) * BUCKETS)
            variants.append({"name": v["name"], "upper": upper, "cluster": v.get("cluster")})
        exps.append(
            {
                "name": e["name"],
                "header": (e.get("variant_header") or f"x-abmesh-{e['name']}").lower(),
                "traffic": percent_to_buckets(e.get("traffic_percent", 100)),
                "layer": layer,
                "enroll": derive_key("enroll", salt),
                "variant": derive_key("variant", salt),
                "variants": variants,
            }
        )
    return {
        "identity": ident[0]["header"].lower(),
        "cluster_header": cfg.get("cluster_header", "x-abmesh-cluster").lower(),
        "layer_names": layers,
        "layers": [derive_key("layer", n) for n in layers],
        "experiments": exps,
    }


def assign(plan, uid):
    """Headers the filter leaves on a request with x-user-id `uid` (bytes or
    None): {header: value or None (removed)}. decide.rs assign_one + apply."""
    out = {}
    cluster = None
    lb = {}
    for e in plan["experiments"]:
        idx = None
        if uid:
            idx = -1
            if e["layer"] is not None:
                li, s, t = e["layer"]
                if li not in lb:
                    lb[li] = bucket(plan["layers"][li], uid)
                if not (s <= lb[li] < t):
                    idx = None
            if idx is not None and e["traffic"] < BUCKETS and bucket(e["enroll"], uid) >= e["traffic"]:
                idx = None
            if idx is not None:
                b = bucket(e["variant"], uid)
                idx = next((i for i, v in enumerate(e["variants"]) if b < v["upper"]), len(e["variants"]) - 1)
        if idx is None:
            out[e["header"]] = None
        else:
            v = e["variants"][idx]
            out[e["header"]] = v["name"]
            if v["cluster"]:
                cluster = v["cluster"]
    out[plan["cluster_header"]] = cluster
    return out


# ------------------------------------------------------------- the Lua peer

LUA_PATH = os.path.join(HERE, "abmesh_peer.lua")
BEGIN = "-- BEGIN GENERATED PLAN"
END = "-- END GENERATED PLAN"


def _lua_str(s):
    return json.dumps(s)  # ASCII names: a JSON string is a valid Lua string


def _u64(x):
    return f"0x{x:016x}ULL"


def lua_plan(cfg):
    plan = compile_plan(cfg)
    L = [BEGIN, "-- Written by `python3 benches/envoy/render.py lua` from benches/envoy/experiments.json;",
         "-- do not edit by hand. Keys: SipHash-1-3-128(key 0, purpose .. '\\xff' .. salt),",
         "-- i.e. filter/src/hash.rs BucketKey::derive; buckets: filter/src/plan.rs.",
         f"local IDENTITY = {_lua_str(plan['identity'])}",
         f"local CLUSTER_HEADER = {_lua_str(plan['cluster_header'])}",
         "local LAYERS = {"]
    for name, (k0, k1) in zip(plan["layer_names"], plan["layers"]):
        L.append(f"  {{ k0 = {_u64(k0)}, k1 = {_u64(k1)} }}, -- layer {name!r}")
    L.append("}")
    L.append("local EXPERIMENTS = {")
    for e in plan["experiments"]:
        L.append("  {")
        L.append(f"    name = {_lua_str(e['name'])}, header = {_lua_str(e['header'])},")
        if e["layer"] is not None:
            li, s, t = e["layer"]
            L.append(f"    layer = {li + 1}, layer_start = {s}, layer_end = {t},")
        L.append(f"    traffic = {e['traffic']},")
        L.append(f"    ek0 = {_u64(e['enroll'][0])}, ek1 = {_u64(e['enroll'][1])},")
        L.append(f"    vk0 = {_u64(e['variant'][0])}, vk1 = {_u64(e['variant'][1])},")
        L.append("    variants = {")
        for v in e["variants"]:
            c = _lua_str(v["cluster"]) if v["cluster"] else "nil"
            L.append(f"      {{ name = {_lua_str(v['name'])}, upper = {v['upper']}, cluster = {c} }},")
        L.append("    },")
        L.append("  },")
    L.append("}")
    L.append(END)
    return "\n".join(L)


def write_lua(check=False):
    cfg = load_config()
    text = open(LUA_PATH).read()
    a, b = text.index(BEGIN), text.index(END) + len(END)
    new = text[:a] + lua_plan(cfg) + text[b:]
    if check:
        if new != text:
            sys.exit("abmesh_peer.lua's generated plan is stale: run `python3 benches/envoy/render.py lua`")
        return
    if new != text:
        open(LUA_PATH, "w").write(new)


# ------------------------------------------------------------- bootstraps


def load_config():
    with open(os.path.join(HERE, "experiments.json")) as f:
        return json.load(f)


# Fixed order: a config's index gives its ports.
CONFIGS = [
    "none", "wasm", "lua",
    "wasm_crc", "wasm_echo", "wasm_nomatch", "wasm_1exp",
    "wasm_null", "wasm_null_noresp", "wasm_get", "wasm_abi", "lua_null",
    "wasm_null_min", "wasm_alt",
    "wasm_get2", "wasm_get_set", "wasm_get_rm", "wasm_get_crc", "wasm_pairs",
    "wasm_ship", "wasm_ship1", "wasm_ship64",
    "native", "native_ship", "native_echo",
]
NULLWASM = {  # config -> (build dir under target/, plugin configuration)
    "wasm_null": ("bench-nullwasm", ""),
    "wasm_null_noresp": ("bench-nullwasm-noresp", ""),
    "wasm_null_min": ("bench-nullwasm-min", ""),
    "wasm_get": ("bench-nullwasm", "get"),
    "wasm_get2": ("bench-nullwasm", "get,get"),
    "wasm_get_set": ("bench-nullwasm", "get,set"),
    "wasm_get_rm": ("bench-nullwasm", "get,rm"),
    "wasm_get_crc": ("bench-nullwasm", "get,crc"),
    "wasm_pairs": ("bench-nullwasm", "pairs"),
    # the filter's host calls for a user in ranker_a and banner: read the id,
    # set ranker_a, remove ranker_b, set banner, set the cluster, clear_route_cache
    "wasm_abi": ("bench-nullwasm", "get,set,rm,set,set,crc"),
}
BASE_PORT = 10100
BASE_ADMIN = 19100


def ports(name):
    i = CONFIGS.index(name)
    return BASE_PORT + i, BASE_ADMIN + i


def wasm_config(name):
    cfg = load_config()
    if name == "wasm_crc":
        cfg["clear_route_cache"] = True
    elif name == "wasm_echo":
        cfg["echo_header"] = "x-abmesh-assignment"
    elif name == "wasm_nomatch":
        for e in cfg["experiments"]:
            e["match"] = {"path_prefix": "/never/"}
    elif name == "wasm_alt":
        cfg.update(json.loads(os.environ.get("WASM_ALT_SET") or "{}"))
    elif name in ("wasm_ship", "wasm_ship1", "wasm_ship64"):
        # Exposures shipped to a running `abmesh serve` (run.sh starts one).
        cfg["sidecar"] = {"cluster": "abmesh_sidecar"}
        if name != "wasm_ship":
            cfg["sidecar"]["health_sample_every"] = int(name[len("wasm_ship"):])
    elif name == "wasm_1exp":
        e = copy.deepcopy(cfg["experiments"][0])
        e["name"] = "ranker"
        del e["layer"]
        cfg["experiments"] = [e]
    return cfg


def wasm_filter(module, configuration):
    return f"""- name: abmesh
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: abmesh
      root_id: abmesh
      vm_config:
        runtime: envoy.wasm.runtime.v8
        code: {{ local: {{ filename: {json.dumps(module)} }} }}
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: {json.dumps(configuration)}
"""


# The native dynamic module (filter/dynamic): Envoy loads
# lib<name>.so from $ENVOY_DYNAMIC_MODULES_SEARCH_PATH (run.sh and icount.sh
# point it at $ABMESH_DYNAMIC_DIR, default target/release).
DYNAMIC_MODULE = "abmesh_filter_dynamic"


def dynamic_dir():
    return os.path.abspath(os.environ.get("ABMESH_DYNAMIC_DIR") or os.path.join(REPO, "target/release"))


def native_filter(configuration):
    return f"""- name: abmesh
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
    dynamic_module_config: {{ name: {DYNAMIC_MODULE}, do_not_close: true }}
    filter_name: abmesh
    filter_config:
      "@type": type.googleapis.com/google.protobuf.StringValue
      value: {json.dumps(configuration)}
"""


def lua_filter(path):
    return f"""- name: envoy.filters.http.lua
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
    default_source_code: {{ filename: {json.dumps(path)} }}
"""


def filters_for(name, out_dir):
    wasm = os.path.abspath(os.environ.get("ABMESH_WASM") or os.path.join(REPO, "target/wasm32-wasip1/release/abmesh_filter.wasm"))
    if name == "none":
        return ""
    if name == "lua":
        return lua_filter(LUA_PATH)
    if name == "lua_null":
        p = os.path.join(out_dir, "lua_null.lua")
        with open(p, "w") as f:
            f.write("function envoy_on_request(handle)\nend\n")
        return lua_filter(p)
    if name == "wasm_alt":
        alt = os.environ.get("WASM_ALT")
        assert alt, "config wasm_alt needs WASM_ALT=path/to/filter.wasm"
        wasm = os.path.abspath(alt)
    if name.startswith("native"):
        # The same plugin JSON as the wasm configs of the same suffix.
        return native_filter(json.dumps(wasm_config("wasm" + name[len("native"):]), separators=(",", ":")))
    if name in NULLWASM:
        build, configuration = NULLWASM[name]
        return wasm_filter(os.path.join(REPO, "target", build, "wasm32-wasip1/release/nullwasm.wasm"), configuration)
    return wasm_filter(wasm, json.dumps(wasm_config(name), separators=(",", ":")))


def indent(text, n):
    pad = " " * n
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


def render_bootstraps(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    plan = compile_plan(load_config())
    template = open(os.path.join(HERE, "envoy.yaml.in")).read()
    clusters = []
    for e in plan["experiments"]:
        for v in e["variants"]:
            if v["cluster"] and v["cluster"] not in clusters:
                clusters.append(v["cluster"])
    seen = [(plan["cluster_header"], "x-seen-cluster")] + [(e["header"], "x-seen-" + e["name"]) for e in plan["experiments"]]
    verify = "".join(f'- header: {{ key: {s}, value: "%REQ({h})%" }}\n' for h, s in seen)
    routes = "".join(
        f"""- match:
    prefix: "/"
    headers: [{{ name: {plan['cluster_header']}, string_match: {{ exact: {c} }} }}]
  direct_response: {{ status: 200, body: {{ inline_string: "{c}\\n" }} }}
"""
        for c in clusters
    )
    for name in CONFIGS:
        if name == "wasm_alt" and not os.environ.get("WASM_ALT"):
            stale = os.path.join(out_dir, "wasm_alt.yaml")
            if os.path.exists(stale):
                os.remove(stale)
            continue
        port, admin = ports(name)
        text = (
            template.replace("@NAME@", name)
            .replace("@PORT@", str(port))
            .replace("@ADMIN_PORT@", str(admin))
            .replace("@SIDECAR_PORT@", os.environ.get("SIDECAR_PORT", "18000"))
            .replace("@VERIFY_HEADERS@\n", indent(verify, 16))
            .replace("@CLUSTER_ROUTES@\n", indent(routes, 14))
            .replace("@HTTP_FILTERS@\n", indent(filters_for(name, out_dir), 10))
        )
        with open(os.path.join(out_dir, f"{name}.yaml"), "w") as f:
            f.write(text)


def main(argv):
    selftest()
    cmd = argv[1] if len(argv) > 1 else "selftest"
    if cmd == "selftest":
        plan = compile_plan(load_config())
        for n, k in zip(plan["layer_names"], plan["layers"]):
            print(f"layer {n}: k0={k[0]} k1={k[1]}")
        for e in plan["experiments"]:
            print(f"{e['name']}: enroll k0={e['enroll'][0]} k1={e['enroll'][1]} variant k0={e['variant'][0]} k1={e['variant'][1]}")
    elif cmd == "lua":
        write_lua(check="--check" in argv)
    elif cmd == "bootstraps":
        render_bootstraps(argv[2])
    elif cmd == "ports":
        for n in CONFIGS:
            print(n, *ports(n))
    elif cmd == "assign":
        plan = compile_plan(load_config())
        for line in sys.stdin.buffer:
            uid = line.rstrip(b"\n")
            print(json.dumps({"user": uid.decode("latin-1"), "headers": assign(plan, uid)}))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
