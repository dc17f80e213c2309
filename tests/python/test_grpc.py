"""`tritonclient[grpc]` against `abmesh serve --grpc-listen`, compared with
onnxruntime in Python on the same model files (issue 12): health,
metadata, inference (batch 1 and larger, raw tensors as tritonclient sends
them, and typed contents), model configuration, repository index,
load/unload with the admin token, statistics, and malformed requests
(INVALID_ARGUMENT naming the input, the server serving on).

Run directly (after `cargo build -p abmesh --bin abmesh`):

    python3 -m pytest -q tests/python/test_grpc.py

or through `cargo test -p abmesh --test model_tritonclient`.
"""

import os
import pathlib
import re
import subprocess
import threading
import time

import numpy as np
import pytest

try:
    import grpc
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import InferenceServerException
except ImportError as e:  # pragma: no cover - depends on the machine
    if os.environ.get("CI"):
        raise  # CI installs them: a missing package is a failure there
    pytest.skip(
        f"SKIPPED LOUDLY: {e}. Install: pip install onnxruntime numpy 'tritonclient[grpc]' pytest",
        allow_module_level=True,
    )

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE_REPO = ROOT / "examples" / "models" / "repo"
TOKEN = "grpc-admin-token-93c1f0a7e2"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MAX_BATCH = 16


def abmesh_binary():
    env = os.environ.get("ABMESH_BIN")
    if env:
        return env
    candidates = [ROOT / "target" / p / "abmesh" for p in ("debug", "release")]
    existing = [c for c in candidates if c.exists()]
    if not existing:
        pytest.fail("abmesh is not built: run `cargo build -p abmesh --bin abmesh` or set ABMESH_BIN")
    return str(max(existing, key=lambda p: p.stat().st_mtime))


def start(args, token_file=None):
    cmd = [abmesh_binary(), "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
           "--grpc-listen", "127.0.0.1:0", "--models", str(EXAMPLE_REPO), "--device", "cpu", *args]
    if token_file:
        cmd += ["--admin-token-file", str(token_file)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RUST_LOG": "info,ort=warn"})
    addr, log = None, []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        log.append(line)
        m = re.search(r"grpc listening on grpc://([\d.]+:\d+)", line)
        if m:
            addr = m.group(1)
            break
    if addr is None:
        proc.kill()
        pytest.fail("abmesh serve did not start:\n" + "".join(log))
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, addr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    token = tmp_path_factory.mktemp("token") / "admin.token"
    token.write_text(TOKEN + "\n")
    proc, addr = start(["--max-batch-size", str(MAX_BATCH)], token)
    yield addr
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server)
    yield c
    c.close()


def reference(version, x):
    sess = ort.InferenceSession(str(EXAMPLE_REPO / "scorer" / version / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"features": x})))


def features(rows, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (rows, 16)).astype(np.float32)


def infer_input(x, name="features"):
    i = grpcclient.InferInput(name, list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("scorer")
    assert client.is_model_ready("scorer", "2")
    assert not client.is_model_ready("scorer", "7")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("scorer", as_json=True)
    assert meta["versions"] == ["1", "2", "3"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "16"]}]
    ext = client.get_server_metadata(as_json=True)["extensions"]
    assert sorted(ext) == ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]


@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("version", ["1", "2"])
def test_infer_matches_onnxruntime(client, version, rows):
    x = features(rows, 10 * rows + int(version))
    r = client.infer("scorer", [infer_input(x)], model_version=version)
    want = reference(version, x)
    np.testing.assert_allclose(r.as_numpy("score"), want["score"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(r.as_numpy("label"), want["label"])
    resp = r.get_response(as_json=True)
    assert resp["model_version"] == version
    # Only the outputs asked for.
    r = client.infer("scorer", [infer_input(x)], model_version=version,
                     outputs=[grpcclient.InferRequestedOutput("label")])
    assert [o["name"] for o in r.get_response(as_json=True)["outputs"]] == ["label"]
    np.testing.assert_array_equal(r.as_numpy("label"), want["label"])


def test_messages_over_grpcs_default_4_mib_are_taken_up_to_the_body_limit(client):
    """tonic's default limit is 4 MiB; abmesh takes messages up to
    --body-limit (64 MiB by default)."""
    x = features(70_000, 5)  # 4.5 MB of FP32
    r = client.infer("scorer", [infer_input(x)], model_version="1")
    np.testing.assert_allclose(r.as_numpy("score"), reference("1", x)["score"], rtol=1e-6, atol=1e-7)


def test_typed_contents_are_accepted_too(server):
    """Inputs in `contents.fp32_contents` instead of raw bytes (what other
    KServe clients send)."""
    x = features(2, 3)
    with grpc.insecure_channel(server) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        req = service_pb2.ModelInferRequest(model_name="scorer", model_version="1")
        t = req.inputs.add(name="features", datatype="FP32", shape=[2, 16])
        t.contents.fp32_contents.extend(x.ravel().tolist())
        resp = stub.ModelInfer(req)
    score = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32).reshape(2, 1)
    np.testing.assert_allclose(score, reference("1", x)["score"], rtol=1e-6, atol=1e-7)


def test_model_config(client):
    cfg = client.get_model_config("scorer", as_json=True)["config"]
    assert cfg["name"] == "scorer"
    assert cfg["platform"] == "onnxruntime_onnx"
    assert cfg["backend"] == "onnxruntime"
    assert cfg["max_batch_size"] == MAX_BATCH
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg["input"]] == [("features", "TYPE_FP32", ["16"])]
    assert [(o["name"], o["data_type"], o["dims"]) for o in cfg["output"]] == [
        ("score", "TYPE_FP32", ["1"]), ("label", "TYPE_BOOL", ["1"])]
    assert "dynamic_batching" in cfg
    with pytest.raises(InferenceServerException) as e:
        client.get_model_config("nope")
    assert "unknown model 'nope'" in str(e.value)


def test_repository_index_and_load_unload_need_the_admin_token(client):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert sorted((m["name"], m["version"], m["state"]) for m in index) == [
        ("dtypes", "1", "READY"), ("scorer", "1", "READY"), ("scorer", "2", "READY"), ("scorer", "3", "READY")]
    for headers in (None, {"authorization": "Bearer " + "y" * len(TOKEN)}):
        with pytest.raises(InferenceServerException) as e:
            client.unload_model("dtypes", headers=headers)
        assert "UNAUTHENTICATED" in str(e.value.status()) or "bearer" in str(e.value).lower(), e.value
    assert client.is_model_ready("dtypes"), "a refused unload unloaded"
    client.unload_model("dtypes", headers=AUTH)
    assert not client.is_model_ready("dtypes")
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m["version"]): m["state"] for m in index}[("dtypes", "1")] == "UNAVAILABLE"
    client.load_model("dtypes", headers=AUTH)
    assert client.is_model_ready("dtypes")
    with pytest.raises(InferenceServerException) as e:
        client.load_model("nope", headers=AUTH)
    assert "has no version in the repository" in str(e.value)


def test_statistics_count_grpc_requests(client):
    def stat():
        return client.get_inference_statistics("scorer", "2", as_json=True)["model_stats"][0]

    before = stat()
    for i in range(4):
        client.infer("scorer", [infer_input(features(3, i))], model_version="2")
    after = stat()
    # (JSON of protobuf uint64s: strings.)
    def d(*path):
        a, b = after, before
        for k in path:
            a, b = a.get(k, {}), b.get(k, {})
        return int(a or 0) - int(b or 0)

    assert d("inference_stats", "success", "count") == 4
    assert d("inference_count") == 12
    assert d("inference_stats", "compute_infer", "count") == 4
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert len(every) == 4


def test_malformed_requests_get_invalid_argument_naming_the_input(client, server):
    cases = [
        (np.zeros((1, 15), dtype=np.float32), "input 'features': shape [1,15] does not match the model's [-1,16]"),
        (np.zeros((1, 16), dtype=np.float64), "input 'features': datatype FP64 does not match the model's FP32"),
    ]
    for x, words in cases:
        i = grpcclient.InferInput("features", list(x.shape), "FP64" if x.dtype == np.float64 else "FP32")
        i.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as e:
            client.infer("scorer", [i], model_version="1")
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value
        assert words in str(e.value)
    # Raw bytes that do not fit the shape, an unknown datatype, no data.
    with grpc.insecure_channel(server) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        bad = [
            (dict(datatype="FP32", shape=[1, 16]), [b"\0" * 63], "input 'features': raw_input_contents has 63 bytes"),
            (dict(datatype="FP99", shape=[1, 16]), [b"\0" * 64], "input 'features': unknown datatype"),
            (dict(datatype="FP32", shape=[1, 16]), [], "input 'features': has no data"),
            (dict(datatype="FP32", shape=[-1, 16]), [b""], "input 'features': shape [-1,16] has a negative dimension"),
        ]
        for fields, raw, words in bad:
            req = service_pb2.ModelInferRequest(model_name="scorer", model_version="1")
            req.inputs.add(name="features", **fields)
            req.raw_input_contents.extend(raw)
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(req)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (fields, e.value)
            assert words in e.value.details(), e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name="nope"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # The server serves on.
    x = features(1, 99)
    r = client.infer("scorer", [infer_input(x)], model_version="1")
    np.testing.assert_allclose(r.as_numpy("score"), reference("1", x)["score"], rtol=1e-6, atol=1e-7)


def test_concurrent_grpc_requests_each_get_their_own_rows(server):
    import concurrent.futures

    def one(i):
        c = grpcclient.InferenceServerClient(server)
        try:
            x = features(1 + i % 3, 1000 + i)
            got = c.infer("scorer", [infer_input(x)], model_version="1").as_numpy("score")
            np.testing.assert_allclose(got, reference("1", x)["score"], rtol=1e-6, atol=1e-7)
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(48)))


def test_without_an_admin_token_grpc_model_control_is_refused():
    proc, addr = start([])
    try:
        c = grpcclient.InferenceServerClient(addr)
        with pytest.raises(InferenceServerException) as e:
            c.unload_model("scorer", headers=AUTH)
        assert "PERMISSION_DENIED" in str(e.value.status()), e.value
        assert "--admin-token-file" in str(e.value)
        assert c.is_model_ready("scorer")
        c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
