#!/usr/bin/env python3
"""Generate the example model repository, offline and byte for byte the same
on every run.

    python3 examples/models/make_models.py [--out examples/models/repo] [--check]

Writes, in the layout `abmesh serve --models` reads ({name}/{version}/model.onnx):

  scorer/1/model.onnx, scorer/2/model.onnx
      A small logistic scorer, the model whose two versions the demo A/B
      tests: features FP32 [N, 16] -> Gemm(16x32) -> Relu -> Gemm(32x1) ->
      Sigmoid -> score FP32 [N, 1], plus label BOOL [N, 1] = score > 0.5.
      N (the batch dimension) is dynamic, so abmesh batches it. Versions 1
      and 2 have the same graph and different weights, so their scores differ.

  scorer/3/model.onnx
      A faulty release of the scorer, for the closed-loop demo's guardrail:
      the same interface and version 2's weights, but rows whose first
      feature is above 0.4 make ONNX Runtime fail at run time (a Gather
      index out of range), so the host answers 500, as a model with a bad
      preprocessing step would. With features uniform in [-1, 1] that is
      30 % of rows.

  dtypes/1/model.onnx
      One input and one output per common datatype, to test the wire
      formats: i64 INT64 [N,2] -> i64_plus_1; f64 FP64 [N,2] -> f64_times_2;
      flag BOOL [N,1] -> flag_not; i32 INT32 [N,2] -> i32_neg;
      f16 FP16 [N,2] -> f16_half; u8 UINT8 [N,2] -> u8_plus_1.

`--bench-out DIR` also writes `ranker/1/model.onnx`, a medium MLP used by
benches/model_host (not committed: about 2 MB).

Weights come from a fixed integer generator (not numpy's RNG, whose streams
may change between releases), and the model's IR version, opset and producer
are pinned, so the files only change when this script does. `--check`
regenerates into a temporary folder and fails if the committed files differ.

Needs only the `onnx` and `numpy` packages (pip install onnx numpy).
"""

import argparse
import filecmp
import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8
OPSET = 17
FEATURES = 16
HIDDEN = 32


def weights(seed, shape, scale):
    """Deterministic weights in [-scale, scale): a 64-bit LCG (Knuth's MMIX
    constants), independent of numpy's random streams."""
    n = int(np.prod(shape))
    state = (seed * 0x9E3779B97F4A7C15 + 1) % 2**64
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        out[i] = (state >> 11) / float(2**53)  # [0, 1)
    return ((out * 2.0 - 1.0) * scale).astype(np.float32).reshape(shape)


def finish(graph, doc):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="abmesh/examples/models/make_models.py",
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def scorer(version, faulty=False):
    seed = 1000 * (2 if faulty else version)
    w1 = weights(seed + 1, (FEATURES, HIDDEN), 0.5)
    b1 = weights(seed + 2, (HIDDEN,), 0.1)
    w2 = weights(seed + 3, (HIDDEN, 1), 0.5)
    b2 = weights(seed + 4, (1,), 0.1)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
    ]
    nodes = [
        helper.make_node("Gemm", ["features", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["h_relu"]),
        helper.make_node("Gemm", ["h_relu", "w2", "b2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score" if not faulty else "raw_score"]),
    ]
    if faulty:
        # gate = [1.0][first feature > 0.4]: index 1 is out of range, so ORT
        # fails the run; for other rows score = raw_score * 1.0.
        inits += [
            numpy_helper.from_array(np.array([0], dtype=np.int64), "col0"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "col1"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array(0.4, dtype=np.float32), "limit"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        ]
        nodes += [
            helper.make_node("Slice", ["features", "col0", "col1", "axis1"], ["first"]),
            helper.make_node("Greater", ["first", "limit"], ["over"]),
            helper.make_node("Cast", ["over"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["one", "index"], ["gate"], axis=0),
            helper.make_node("Mul", ["raw_score", "gate"], ["score"]),
        ]
    nodes.append(helper.make_node("Greater", ["score", "half"], ["label"]))
    graph = helper.make_graph(
        nodes,
        "scorer",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("label", TensorProto.BOOL, ["N", 1]),
        ],
        inits,
    )
    doc = f"abmesh example scorer, version {version}"
    if faulty:
        doc += " (faulty on purpose: fails when features[:, 0] > 0.4)"
    return finish(graph, doc)


def dtypes():
    c = numpy_helper.from_array
    inits = [
        c(np.array(1, dtype=np.int64), "one_i64"),
        c(np.array(2.0, dtype=np.float64), "two_f64"),
        c(np.array(0.5, dtype=np.float16), "half_f16"),
        c(np.array(1, dtype=np.uint8), "one_u8"),
    ]
    nodes = [
        helper.make_node("Add", ["i64", "one_i64"], ["i64_plus_1"]),
        helper.make_node("Mul", ["f64", "two_f64"], ["f64_times_2"]),
        helper.make_node("Not", ["flag"], ["flag_not"]),
        helper.make_node("Neg", ["i32"], ["i32_neg"]),
        helper.make_node("Mul", ["f16", "half_f16"], ["f16_half"]),
        helper.make_node("Add", ["u8", "one_u8"], ["u8_plus_1"]),
    ]
    t = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "dtypes",
        [
            t("i64", TensorProto.INT64, ["N", 2]),
            t("f64", TensorProto.DOUBLE, ["N", 2]),
            t("flag", TensorProto.BOOL, ["N", 1]),
            t("i32", TensorProto.INT32, ["N", 2]),
            t("f16", TensorProto.FLOAT16, ["N", 2]),
            t("u8", TensorProto.UINT8, ["N", 2]),
        ],
        [
            t("i64_plus_1", TensorProto.INT64, ["N", 2]),
            t("f64_times_2", TensorProto.DOUBLE, ["N", 2]),
            t("flag_not", TensorProto.BOOL, ["N", 1]),
            t("i32_neg", TensorProto.INT32, ["N", 2]),
            t("f16_half", TensorProto.FLOAT16, ["N", 2]),
            t("u8_plus_1", TensorProto.UINT8, ["N", 2]),
        ],
        inits,
    )
    return finish(graph, "abmesh datatype test model")


def ranker():
    """A medium MLP (features FP32 [N,256] -> 1024 -> 256 -> score [N,1],
    about 0.5 M weights): where a batch-1 run is dominated by reading the
    weights, so dynamic batching changes the cost per request. Benchmark
    only (benches/model_host), not committed."""
    dims = [256, 1024, 256, 1]
    inits, nodes = [], []
    x = "features"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        inits.append(numpy_helper.from_array(weights(5000 + 2 * i, (a, b), 1.0 / np.sqrt(a)), f"w{i}"))
        inits.append(numpy_helper.from_array(weights(5001 + 2 * i, (b,), 0.05), f"b{i}"))
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"]))
        x = f"h{i}"
        if b != 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Sigmoid", [x], ["score"]))
    graph = helper.make_graph(
        nodes,
        "ranker",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", dims[0]])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    return finish(graph, "abmesh benchmark ranker")


BENCH_MODELS = {("ranker", 1): ranker}

MODELS = {
    ("scorer", 1): lambda: scorer(1),
    ("scorer", 2): lambda: scorer(2),
    ("scorer", 3): lambda: scorer(3, faulty=True),
    ("dtypes", 1): dtypes,
}


def write_all(out, models=None):
    paths = []
    for (name, version), make in (models or MODELS).items():
        path = os.path.join(out, name, str(version), "model.onnx")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(make().SerializeToString(deterministic=True))
        paths.append(path)
    return paths


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(here, "repo"), help="repository folder to write")
    ap.add_argument("--check", action="store_true", help="fail if the files in --out differ from fresh ones")
    ap.add_argument("--bench-out", metavar="DIR", help="also write the benchmark-only models into DIR")
    args = ap.parse_args()
    if args.bench_out:
        for p in write_all(args.bench_out, BENCH_MODELS):
            print(p)
    if not args.check:
        for p in write_all(args.out):
            print(p)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = []
        for fresh in write_all(tmp):
            committed = os.path.join(args.out, os.path.relpath(fresh, tmp))
            if not os.path.exists(committed) or not filecmp.cmp(fresh, committed, shallow=False):
                stale.append(committed)
        if stale:
            print("out of date (run examples/models/make_models.py):", *stale, sep="\n  ", file=sys.stderr)
            return 1
        print(f"{len(MODELS)} models in {args.out} are up to date")
        return 0


if __name__ == "__main__":
    sys.exit(main())
