#!/usr/bin/env python3
"""Summarizes icount.sh's callgrind dumps: instructions per request per
config, split by object file (Envoy's own code, anonymous memory = code JIT-
compiled by V8 / LuaJIT plus valgrind's own stubs, libc, ...).

Usage: icount_report.py COUNTS_TSV OUT_JSON   (COUNTS_TSV: config, requests, dump path)
"""
import json
import os
import re
import sys


def by_object(path):
    """Self cost (Ir) per object file of a callgrind dump. Object names are
    defined once (`ob=(n) name` or `cob=(n) name`) and referred to by number
    afterwards; the cost line after a `calls=` line is an inclusive call cost
    and is skipped."""
    names, cur, skip, total = {}, None, False, {}
    for line in open(path, errors="replace"):
        if line.startswith(("ob=", "cob=")):
            m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.strip())
            if m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("ob="):
                cur = m.group(1)
        elif line.startswith("calls="):
            skip = True
        elif line[:1] in "0123456789+-*" and cur is not None:
            if skip:
                skip = False
                continue
            parts = line.split()
            if len(parts) >= 2:
                total[cur] = total.get(cur, 0) + int(parts[-1])
    return {names.get(k, k): v for k, v in total.items()}


def label(ob):
    if ob.endswith("/envoy"):
        return "envoy"
    if ob == "???":
        return "anon"
    return os.path.basename(ob).split(".so")[0]


def main():
    rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
    result = {}
    for c, n, dump in rows:
        n = int(n)
        objs = {}
        for ob, ir in by_object(dump).items():
            objs[label(ob)] = objs.get(label(ob), 0) + ir
        total = sum(objs.values())
        result[c] = {
            "requests": n,
            "ir_per_request": round(total / n),
            "by_object_per_request": {k: round(v / n) for k, v in sorted(objs.items(), key=lambda kv: -kv[1])},
        }
    base = result.get("none")
    cols = ["envoy", "anon", "libc"]
    print(f"{'config':<18}{'requests':>9}{'instr/req':>11}{'vs none':>10}" + "".join(f"{c:>10}" for c in cols) + f"{'other':>8}")
    for c, r in result.items():
        if base and c != "none":
            r["added_vs_none"] = r["ir_per_request"] - base["ir_per_request"]
            r["added_by_object"] = {
                k: r["by_object_per_request"].get(k, 0) - base["by_object_per_request"].get(k, 0)
                for k in set(r["by_object_per_request"]) | set(base["by_object_per_request"])
            }
        objs = r["by_object_per_request"]
        other = sum(v for k, v in objs.items() if k not in cols)
        add = f"{r['added_vs_none']:+d}" if "added_vs_none" in r else ""
        print(f"{c:<18}{r['requests']:>9}{r['ir_per_request']:>11}{add:>10}" + "".join(f"{objs.get(k, 0):>10}" for k in cols) + f"{other:>8}")
    print("instr/req: instructions Envoy executed per request (callgrind); envoy / anon (JIT code) / libc: split by object")
    with open(sys.argv[2], "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
