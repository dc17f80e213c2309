#!/usr/bin/env python3
"""Checks that the Lua peer assigns exactly like the wasm filter.

Sends the same requests to running Envoys (the `wasm` and `lua`
configurations of render.py) and compares, per user id:

  * the request headers the filter left (the /verify route echoes them:
    cluster header and every experiment's variant header), with a spoofed
    cluster header and variant header on the request, which both filters
    must remove or overwrite;
  * the route Envoy selected afterwards (the body of `GET /` names the
    cluster route, or "default");
  * both against render.py's Python model of filter/src/{hash,plan,decide}.rs
    (itself checked against the Rust crate; see README.md).

Users: N pseudo-random ids of every length from 1 to 70 bytes (so every
SipHash tail length is exercised), UUID-shaped ids like the load uses, and
edge cases (no header, empty value, non-ASCII bytes, the header twice).

Usage: verify.py [--users N] [--ports wasm=10101,lua=10102]
Exit status 1 on any disagreement.
"""

import argparse
import http.client
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import render  # noqa: E402


def users(n):
    rnd = random.Random(20261121)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@"
    out = [None, b""]  # no header; empty header (= no identity)
    for i in range(n):
        length = 1 + i % 70
        out.append("".join(rnd.choice(alphabet) for _ in range(length)).encode())
    # what users.lua sends under load
    out += [render_uuid(i).encode() for i in range(0, 4096, 97)]
    out += [b"\xe9t\xe9", b"caf\xc3\xa9-user", bytes(range(0x80, 0x98))]
    # longer than the peer's unrolled 64 bytes
    out += [("L%d-" % n).encode() * (n // 4) for n in (64, 65, 72, 100, 255, 256, 300)]
    # the header twice: both filters read the first value
    out += [(b"u1", b"u2"), (b"abcdefgh", b"zz")]
    return out


def render_uuid(i):
    # Same ids as users.lua: 36-byte UUID-shaped, deterministic.
    x = (i * 2654435761) & 0xFFFFFFFF
    return f"{x:08x}-{i & 0xffff:04x}-4{(x >> 4) & 0xfff:03x}-a{(x >> 16) & 0xfff:03x}-{i:012x}"


def fetch(conn, path, uid, spoof):
    conn.putrequest("GET", path, skip_accept_encoding=True)
    for value in uid if isinstance(uid, tuple) else () if uid is None else (uid,):
        conn.putheader("x-user-id", value)
    if spoof:
        for h in spoof:
            conn.putheader(h, "spoofed")
    conn.endheaders()
    r = conn.getresponse()
    body = r.read().decode().strip()
    return r.status, {k.lower(): v for k, v in r.getheaders() if k.lower().startswith("x-seen-")}, body


def observe(conn, plan, uid):
    spoof = [plan["cluster_header"]] + [e["header"] for e in plan["experiments"]]
    status, seen, _ = fetch(conn, "/verify", uid, spoof)
    status2, _, route = fetch(conn, "/", uid, None)
    assert status == 200 and status2 == 200, (status, status2)
    headers = {plan["cluster_header"]: seen.get("x-seen-cluster")}
    for e in plan["experiments"]:
        headers[e["header"]] = seen.get("x-seen-" + e["name"])
    return headers, route


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--ports", default="wasm=10101,lua=10102")
    args = ap.parse_args()
    ports = dict(p.split("=") for p in args.ports.split(","))
    plan = render.compile_plan(render.load_config())
    conns = {name: http.client.HTTPConnection("127.0.0.1", int(port), timeout=10) for name, port in ports.items()}
    ids = users(args.users)
    bad = 0
    tally = {}
    for uid in ids:
        want = render.assign(plan, uid[0] if isinstance(uid, tuple) else uid)
        want_route = want[plan["cluster_header"]] or "default"
        got = {name: observe(c, plan, uid) for name, c in conns.items()}
        ok = all(h == want and r == want_route for h, r in got.values())
        if not ok:
            bad += 1
            if bad <= 10:
                print(f"DISAGREE user={uid!r}: model={want} route={want_route}", file=sys.stderr)
                for name, (h, r) in got.items():
                    print(f"    {name}: {h} route={r}", file=sys.stderr)
        key = tuple(want[e["header"]] or "-" for e in plan["experiments"])
        tally[key] = tally.get(key, 0) + 1
    print(f"verify: {len(ids)} users x {sorted(ports)} vs model: {len(ids) - bad} agree, {bad} disagree")
    for k in sorted(tally):
        print(f"    {','.join(k)}: {tally[k]}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
