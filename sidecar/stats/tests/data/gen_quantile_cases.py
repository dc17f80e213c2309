#!/usr/bin/env python3
"""Generate `quantile` cases for `abmesh stats` (kind defined in
sidecar/stats/src/cases.rs and EVALUATION.md, "Statistics"), with the
expected values computed here by a second implementation of the same
definitions (numpy + scipy.stats.t), so the Rust code is checked against
the written definitions rather than against itself:

    /tmp/gbstats-venv/bin/python sidecar/stats/tests/data/gen_quantile_cases.py \
        > sidecar/stats/tests/data/quantile-cases.json

(any Python with numpy and scipy; the gbstats venv of gen_gbstats_cases.py
has both). Deterministic: numpy PCG64, seed 1414.

Definitions (per arm, histogram bounds b_0 <= ... <= b_K, counts c_i for
(b_i, b_{i+1}]): n = sum c; Q(p) = the value at rank p*n of the
piecewise-linear CDF; z = z_0.975; h = z*sqrt(q(1-q)/n); se = (Q(q+h) -
Q(q-h))/(2z); df_arm = h*n. Absolute: estimate = Q_t - Q_c, terms
v_t = se_t^2, v_c = se_c^2; relative: estimate = (Q_t - Q_c)/Q_c,
v_t = se_t^2/Q_c^2, v_c = Q_t^2 se_c^2/Q_c^4. se = sqrt(v_t + v_c);
df = (v_t + v_c)^2/(v_t^2/df_t + v_c^2/df_c); p = 2 sf_t(|estimate/se|, df);
ci = estimate -/+ t_{1-alpha/2, df} * se.
"""

import json
import math
import sys

import numpy as np
from scipy.stats import norm, t

SEED = 1414
Z = float(norm.ppf(0.975))
FILTER_BOUNDS_US = [500, 1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000,
                    50_000, 75_000, 100_000, 150_000, 200_000, 300_000, 500_000, 750_000,
                    1_000_000, 1_500_000, 2_000_000, 3_000_000, 5_000_000, 10_000_000]


def quantile(bounds, counts, p):
    n = sum(counts)
    rank = p * n
    cum = 0.0
    for i, c in enumerate(counts):
        if c == 0:
            continue
        if cum + c >= rank:
            lo, hi = bounds[i], bounds[i + 1]
            frac = min(max((rank - cum) / c, 0.0), 1.0)
            return lo + frac * (hi - lo)
        cum += c
    last = max(i for i, c in enumerate(counts) if c > 0)
    return bounds[last + 1]


def arm_estimate(bounds, counts, q):
    n = sum(counts)
    h = Z * math.sqrt(q * (1 - q) / n)
    assert 0 < q - h and q + h < 1
    est = quantile(bounds, counts, q)
    se = (quantile(bounds, counts, q + h) - quantile(bounds, counts, q - h)) / (2 * Z)
    return est, se, h * n


def expected(c, tr, q, alpha, relative):
    qc, sc, dfc = arm_estimate(c["bounds"], c["counts"], q)
    qt, st, dft = arm_estimate(tr["bounds"], tr["counts"], q)
    diff = qt - qc
    if relative:
        est, vt, vc = diff / qc, st * st / qc**2, qt * qt * sc * sc / qc**4
    else:
        est, vt, vc = diff, st * st, sc * sc
    var = vt + vc
    se = math.sqrt(var)
    df = var * var / (vt * vt / dft + vc * vc / dfc)
    w = float(t.ppf(1 - alpha / 2, df)) * se
    return {
        "control_quantile": qc,
        "treatment_quantile": qt,
        "estimate": est,
        "se": se,
        "df": df,
        "p_value": float(2 * t.sf(abs(est / se), df)),
        "ci_low": est - w,
        "ci_high": est + w,
    }


def log_histogram(values, growth=1.01):
    """The LogHistogram layout: bucket k = (g^k, g^(k+1)], dense over the
    occupied range, with a point mass [0, 0] for values <= 0."""
    values = np.asarray(values)
    zeros = int((values <= 0).sum())
    pos = values[values > 0]
    k = np.ceil(np.log(pos) / math.log(growth)) - 1
    k = k.astype(np.int64)
    lo, hi = int(k.min()), int(k.max())
    counts = np.bincount(k - lo, minlength=hi - lo + 1).tolist()
    # Bounds rounded to 7 significant digits to keep the file small (the
    # case gives its bounds explicitly; buckets 1 % apart stay distinct).
    bounds = [float(f"{math.exp(j * math.log(growth)):.7g}") for j in range(lo, hi + 2)]
    if zeros:
        bounds = [0.0, 0.0] + bounds
        counts = [zeros, 0] + counts
    return {"bounds": bounds, "counts": [int(c) for c in counts]}


def filter_histogram(values_us):
    """The filter's 25-bucket health histogram (0, 500], ..., (10 s, 1e9]."""
    bounds = [0.0] + [float(b) for b in FILTER_BOUNDS_US] + [1e9]
    idx = np.searchsorted(np.asarray(FILTER_BOUNDS_US), values_us, side="left")
    counts = np.bincount(idx, minlength=len(bounds) - 1).tolist()
    return {"bounds": bounds, "counts": [int(c) for c in counts]}


def draw(rng, shape, n, slower):
    if shape == "lognormal":
        return rng.lognormal(math.log(100.0 * slower), 0.6, n)
    if shape == "expmix":
        slow = rng.random(n) < 0.1 * slower
        return np.where(slow, rng.exponential(400.0, n), rng.exponential(40.0, n))
    # latency in microseconds with some exact zeros (cache hits)
    v = rng.lognormal(math.log(20_000.0 * slower), 1.0, n)
    v[rng.random(n) < 0.02] = 0.0
    return v


def main():
    rng = np.random.default_rng(SEED)
    cases = []
    for i in range(36):
        shape = ["lognormal", "expmix", "zeros"][i % 3]
        q = float(rng.choice([0.5, 0.9, 0.95, 0.99]))
        n = int(rng.choice([2_000, 10_000, 100_000, 1_000_000]))
        if q == 0.99 and n < 10_000:
            n = 10_000
        slower = float(rng.choice([1.0, 1.02, 1.1, 0.95]))
        alpha = float(rng.choice([0.01, 0.05, 0.1]))
        relative = bool(i % 2)
        vc = draw(rng, shape, n, 1.0)
        vt = draw(rng, shape, int(n * rng.uniform(0.7, 1.3)), slower)
        coarse = i % 6 == 5
        if coarse:
            c, tr = filter_histogram(vc * 1000), filter_histogram(vt * 1000)
        else:
            c, tr = log_histogram(vc), log_histogram(vt)
        inp = {"control": c, "treatment": tr, "q": q, "alpha": alpha, "relative": relative}
        label = f"{shape}{'-filter25' if coarse else ''}-q{q}-n{n}-{'rel' if relative else 'abs'}"
        cases.append({"id": f"quantile-{i}-{label}", "kind": "quantile", "input": inp,
                      "expected": expected(c, tr, q, alpha, relative)})
    doc = {"generator": "sidecar/stats/tests/data/gen_quantile_cases.py (numpy PCG64 seed 1414)",
           "cases": cases}
    json.dump(doc, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
