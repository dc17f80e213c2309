"""`tritonclient[http]` against `abmesh serve`, compared with onnxruntime in
Python on the same model files.

tritonclient is used with its defaults: `InferInput.set_data_from_numpy`
sends binary tensors (the binary tensor extension) and, when no outputs are
named, asks for every output as binary data.

Run directly (after `cargo build -p abmesh --bin abmesh`):

    python3 -m pytest -q tests/python

or through `cargo test -p abmesh --test model_tritonclient`, which
passes the freshly built binary in ABMESH_BIN. Needs:
    pip install onnxruntime==1.31.1 onnx numpy 'tritonclient[http]' pytest
"""

import os
import pathlib
import re
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

try:
    import onnx
    import onnxruntime as ort
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException
except ImportError as e:  # pragma: no cover - depends on the machine
    if os.environ.get("CI"):
        raise  # CI installs them: a missing package is a failure there
    pytest.skip(
        f"SKIPPED LOUDLY: {e}. Install: pip install onnxruntime==1.31.1 onnx numpy 'tritonclient[http]' pytest",
        allow_module_level=True,
    )

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE_REPO = ROOT / "examples" / "models" / "repo"
LIGHT = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def abmesh_binary():
    env = os.environ.get("ABMESH_BIN")
    if env:
        return env
    candidates = [ROOT / "target" / p / "abmesh" for p in ("debug", "release")]
    existing = [c for c in candidates if c.exists()]
    if not existing:
        pytest.fail("abmesh is not built: run `cargo build -p abmesh --bin abmesh` or set ABMESH_BIN")
    return str(max(existing, key=lambda p: p.stat().st_mtime))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The example repository plus the onnx wheel's light squeezenet and
    resnet50 (inputs [1,3,224,224], no batch dimension)."""
    d = tmp_path_factory.mktemp("repo")
    shutil.copytree(EXAMPLE_REPO, d, dirs_exist_ok=True)
    for name in ("squeezenet", "resnet50"):
        (d / name / "1").mkdir(parents=True)
        shutil.copy(LIGHT / f"light_{name}.onnx", d / name / "1" / "model.onnx")
    return d


@pytest.fixture(scope="module")
def server(repo):
    proc = subprocess.Popen(
        [abmesh_binary(), "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--models", str(repo), "--device", "cpu"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUST_LOG": "info,ort=warn"},
    )
    port = None
    log = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        log.append(line)
        # The data plane's line (the admin listener's says "admin listening").
        m = re.search(r"(?<!admin )listening on http://[\d.]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        proc.kill()
        pytest.fail("abmesh serve did not start:\n" + "".join(log))
    # Keep draining the log so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server)
    yield c
    c.close()


def reference(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


TRITON_DTYPES = {
    np.float32: "FP32",
    np.float64: "FP64",
    np.float16: "FP16",
    np.int64: "INT64",
    np.int32: "INT32",
    np.uint8: "UINT8",
    np.bool_: "BOOL",
}


def inputs_for(feeds):
    out = []
    for name, value in feeds.items():
        i = httpclient.InferInput(name, list(value.shape), TRITON_DTYPES[value.dtype.type])
        i.set_data_from_numpy(value)  # binary_data=True by default
        out.append(i)
    return out


def test_server_and_model_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("scorer", "1")
    assert client.is_model_ready("scorer")
    assert not client.is_model_ready("scorer", "7")
    meta = client.get_model_metadata("scorer")
    assert meta["versions"] == ["1", "2", "3"]
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("version", ["1", "2"])
def test_scorer_versions_match_onnxruntime(client, version):
    x = np.random.default_rng(int(version)).standard_normal((7, 16)).astype(np.float32)
    result = client.infer("scorer", inputs_for({"features": x}), model_version=version)
    want = reference(EXAMPLE_REPO / "scorer" / version / "model.onnx", {"features": x})
    np.testing.assert_allclose(result.as_numpy("score"), want["score"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    assert result.get_response()["model_version"] == version


def test_versions_differ(client):
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    a = client.infer("scorer", inputs_for({"features": x}), model_version="1").as_numpy("score")
    b = client.infer("scorer", inputs_for({"features": x}), model_version="2").as_numpy("score")
    assert np.abs(a - b).max() > 1e-3


def test_requested_outputs_json_and_binary(client):
    x = np.random.default_rng(4).standard_normal((2, 16)).astype(np.float32)
    outputs = [
        httpclient.InferRequestedOutput("score", binary_data=False),
        httpclient.InferRequestedOutput("label", binary_data=True),
    ]
    result = client.infer("scorer", inputs_for({"features": x}), model_version="2", outputs=outputs)
    want = reference(EXAMPLE_REPO / "scorer" / "2" / "model.onnx", {"features": x})
    np.testing.assert_allclose(result.as_numpy("score"), want["score"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    header = result.get_response()
    assert "data" in header["outputs"][0]
    assert header["outputs"][1]["parameters"]["binary_data_size"] == 2


def test_all_common_datatypes(client):
    feeds = {
        "i64": np.array([[1, -2], [3, 2**40]], dtype=np.int64),
        "f64": np.array([[0.1, 2.5], [-3.0, 1e300]], dtype=np.float64),
        "flag": np.array([[True], [False]]),
        "i32": np.array([[1, -2], [2**31 - 1, -(2**31) + 1]], dtype=np.int32),
        "f16": np.array([[1.0, 3.0], [-0.5, 100.0]], dtype=np.float16),
        "u8": np.array([[0, 1], [254, 255]], dtype=np.uint8),
    }
    result = client.infer("dtypes", inputs_for(feeds))
    want = reference(EXAMPLE_REPO / "dtypes" / "1" / "model.onnx", feeds)
    for name, value in want.items():
        got = result.as_numpy(name)
        assert got.dtype == value.dtype, name
        np.testing.assert_array_equal(got, value, err_msg=name)


@pytest.mark.parametrize(
    "name,input_name", [("squeezenet", "data_0"), ("resnet50", "gpu_0/data_0")]
)
def test_light_models_from_the_onnx_wheel(client, repo, name, input_name):
    x = np.random.default_rng(5).random((1, 3, 224, 224), dtype=np.float32)
    result = client.infer(name, inputs_for({input_name: x}))
    want = reference(repo / name / "1" / "model.onnx", {input_name: x})
    for out_name, value in want.items():
        np.testing.assert_allclose(result.as_numpy(out_name), value, rtol=1e-5, atol=1e-7)


def test_errors_reach_the_client_with_their_reason(client):
    x = np.zeros((1, 15), dtype=np.float32)
    with pytest.raises(InferenceServerException) as e:
        client.infer("scorer", inputs_for({"features": x}))
    assert "input 'features': shape [1,15] does not match the model's [-1,16]" in str(e.value)
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", inputs_for({"features": x}))
    assert "unknown model 'nope'" in str(e.value)


def test_concurrent_tritonclient_requests(server):
    """Concurrent binary requests (merged by dynamic batching) each get their
    own rows back."""
    import concurrent.futures

    want_sess = ort.InferenceSession(str(EXAMPLE_REPO / "scorer" / "1" / "model.onnx"))

    def one(i):
        c = httpclient.InferenceServerClient(server)
        try:
            x = np.random.default_rng(100 + i).standard_normal((1 + i % 3, 16)).astype(np.float32)
            got = c.infer("scorer", inputs_for({"features": x}), model_version="1").as_numpy("score")
            np.testing.assert_allclose(got, want_sess.run(["score"], {"features": x})[0], rtol=1e-6, atol=1e-7)
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(64)))
