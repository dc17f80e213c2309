#!/usr/bin/env python3
"""Before/after comparison of `abmesh serve` builds, interleaved in one run:
the issue-12 throughput ratios for each build.

    python3 benches/model_host/ab.py --variant base=/path/to/old/abmesh \\
        --variant new=target/release/abmesh [--models scorer] [--concurrency 1,16,64] [--rounds 3]

All variants stay up side by side (HTTP and --grpc-listen, same model
repository, same flags). For each round, concurrency and variant (the
variant order alternates between rounds), right after one another:
wrk `/v2/health/live` (no model, no body), wrk HTTP JSON infer (post.lua,
batch 1), perf_analyzer HTTP infer and perf_analyzer gRPC infer, each for
--seconds (perf_analyzer: three windows of a third of that, taken as they
come, `--stability-percentage 100 --max-trials 3`, so that every point
costs the same time; its figure is their mean). Ratios are taken within a round
(infer/live with wrk as the client of both; perf_analyzer gRPC / HTTP),
the median over rounds is printed with its range. Only ratios mean
anything on a shared machine.
"""

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402
import perf  # noqa: E402


def pa(url, protocol, model, version, c, seconds, tmp):
    out_csv = os.path.join(tmp, f"pa-{protocol}-{c}.csv")
    cmd = [perf.PERF_ANALYZER, "-m", model, "-x", version, "-u", url, "-i", protocol,
           "--concurrency-range", str(c), "--measurement-interval", str(seconds * 1000 // 3),
           "--max-trials", "3", "--stability-percentage", "100", "-f", out_csv]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0 or not os.path.exists(out_csv):
        raise RuntimeError(f"perf_analyzer failed ({' '.join(cmd)}):\n{run.stdout}\n{run.stderr}")
    with open(out_csv) as f:
        row = next(csv.DictReader(f))
    os.remove(out_csv)
    return float(row["Inferences/Second"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", required=True, help="NAME=BINARY")
    ap.add_argument("--models", default="scorer")
    ap.add_argument("--version", default="1")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--abmesh-args", default="")
    args = ap.parse_args()
    bench.ensure_setup()
    if "ORT_DYLIB_PATH" not in os.environ:
        import glob
        import onnxruntime
        libs = glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*"))
        os.environ["ORT_DYLIB_PATH"] = sorted(libs)[-1]
    variants = [v.split("=", 1) for v in args.variant]
    conc = [int(c) for c in args.concurrency.split(",")]
    tmp = tempfile.mkdtemp(prefix="abmesh-ab-")
    repo = os.path.join(tmp, "repo")
    shutil.copytree(os.path.join(bench.ROOT, "examples", "models", "repo"), repo)
    if "ranker" in args.models.split(","):
        subprocess.run([sys.executable, os.path.join(bench.ROOT, "examples", "models", "make_models.py"),
                        "--out", os.path.join(tmp, "unused"), "--bench-out", repo], check=True,
                       capture_output=True)
    report = {"loadavg_before": os.getloadavg(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "settings": vars(args), "models": {}}
    for model in args.models.split(","):
        body = perf.body_file(os.path.join(repo, model, args.version, "model.onnx"), model, tmp)
        procs = {}
        try:
            for name, binary in variants:
                hp, gp = bench.free_port(), bench.free_port()
                cmd = [binary, "serve", "--listen", f"127.0.0.1:{hp}", "--grpc-listen", f"127.0.0.1:{gp}",
                       "--admin-listen", "127.0.0.1:0", "--models", repo, "--device", "cpu"] + args.abmesh_args.split()
                log = os.path.join(tmp, f"{name}.log")
                p = perf.start_logged(cmd, {**os.environ, "RUST_LOG": "warn"}, log)
                procs[name] = (p, hp, gp)
                perf.wait_ready(f"http://127.0.0.1:{hp}/v2/models/{model}/versions/{args.version}/ready", p, log)
            for name, (p, hp, gp) in procs.items():  # warm-up
                bench.wrk(f"http://127.0.0.1:{hp}/v2/models/{model}/versions/{args.version}/infer", 16, 1, body, p.pid)
            rows = []
            for rnd in range(args.rounds):
                order = list(procs) if rnd % 2 == 0 else list(procs)[::-1]
                print(f"--- {model} round {rnd + 1}/{args.rounds} (load {os.getloadavg()[0]:.2f})", flush=True)
                for c in conc:
                    for name in order:
                        p, hp, gp = procs[name]
                        base = f"http://127.0.0.1:{hp}"
                        infer = f"{base}/v2/models/{model}/versions/{args.version}/infer"
                        r = {"round": rnd, "variant": name, "c": c}
                        r["live"] = bench.wrk(f"{base}/v2/health/live", c, args.seconds, None, p.pid)["throughput"]
                        r["infer"] = bench.wrk(infer, c, args.seconds, body, p.pid)["throughput"]
                        r["pa_http"] = pa(f"127.0.0.1:{hp}", "http", model, args.version, c, args.seconds, tmp)
                        r["pa_grpc"] = pa(f"127.0.0.1:{gp}", "grpc", model, args.version, c, args.seconds, tmp)
                        rows.append(r)
                        print(f"  {name:8} c={c:<3} live {r['live']:8.0f}  wrk infer {r['infer']:8.0f}  "
                              f"pa http {r['pa_http']:7.0f}  pa grpc {r['pa_grpc']:7.0f}", flush=True)
        finally:
            for p, _, _ in procs.values():
                bench.stop(p)

        def med(vals):
            return statistics.median(vals), min(vals), max(vals)

        def fmt(t):
            return f"{t[0]:.2f} ({t[1]:.2f}–{t[2]:.2f})"

        print(f"\n{model}: medians over {args.rounds} rounds (range)\n")
        print("| variant | c | wrk live req/s | wrk infer req/s | infer/live (wrk) | pa HTTP infer/s | pa gRPC infer/s "
              "| pa gRPC/HTTP | pa HTTP / wrk live | pa gRPC / wrk live |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        summary = []
        for c in conc:
            for name, _ in variants:
                rs = [r for r in rows if r["variant"] == name and r["c"] == c]
                s = {"variant": name, "c": c,
                     "live": med([r["live"] for r in rs]), "infer": med([r["infer"] for r in rs]),
                     "infer_vs_live": med([r["infer"] / r["live"] for r in rs]),
                     "pa_http": med([r["pa_http"] for r in rs]), "pa_grpc": med([r["pa_grpc"] for r in rs]),
                     "grpc_vs_http": med([r["pa_grpc"] / r["pa_http"] for r in rs]),
                     "pa_http_vs_live": med([r["pa_http"] / r["live"] for r in rs]),
                     "pa_grpc_vs_live": med([r["pa_grpc"] / r["live"] for r in rs])}
                summary.append(s)
                print(f"| {name} | {c} | {s['live'][0]:.0f} | {s['infer'][0]:.0f} | {fmt(s['infer_vs_live'])} | "
                      f"{s['pa_http'][0]:.0f} | {s['pa_grpc'][0]:.0f} | {fmt(s['grpc_vs_http'])} | "
                      f"{fmt(s['pa_http_vs_live'])} | {fmt(s['pa_grpc_vs_live'])} |")
        # Within-round ratio of each variant to the first one.
        first = variants[0][0]
        for name, _ in variants[1:]:
            for key in ("infer", "pa_http", "pa_grpc"):
                vals = []
                for c in conc:
                    for rnd in range(args.rounds):
                        a = next(r for r in rows if r["variant"] == first and r["c"] == c and r["round"] == rnd)
                        b = next(r for r in rows if r["variant"] == name and r["c"] == c and r["round"] == rnd)
                        vals.append(b[key] / a[key])
                print(f"{name} / {first}, {key}: per point {', '.join(f'{v:.2f}' for v in vals)}")
        report["models"][model] = {"rows": rows, "summary": summary}
    report["loadavg_after"] = os.getloadavg()
    print(f"\nload average before/after: {report['loadavg_before']} / {report['loadavg_after']}")
    os.makedirs(os.path.join(bench.ROOT, "bench-results"), exist_ok=True)
    with open(os.path.join(bench.ROOT, "bench-results", "model_host_ab.json"), "w") as f:
        json.dump(report, f, indent=1)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
