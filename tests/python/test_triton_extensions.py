"""Triton's REST extensions through `tritonclient[http]` against `abmesh
serve` (issue 12): model configuration, repository index, load/unload on
the admin listener with its token, inference statistics, and the
extensions `GET /v2` lists.

Expected values are read from the model files (onnx) and from the flags the
server is started with, not written down: the configuration must say what
the server really does.

Run directly (after `cargo build -p abmesh --bin abmesh`):

    python3 -m pytest -q tests/python/test_triton_extensions.py

or through `cargo test -p abmesh --test model_tritonclient` (all of
tests/python, with the freshly built binary in ABMESH_BIN).
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

try:
    import onnx
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException
except ImportError as e:  # pragma: no cover - depends on the machine
    if os.environ.get("CI"):
        raise  # CI installs them: a missing package is a failure there
    pytest.skip(
        f"SKIPPED LOUDLY: {e}. Install: pip install onnx numpy 'tritonclient[http]' pytest",
        allow_module_level=True,
    )

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE_REPO = ROOT / "examples" / "models" / "repo"
LIGHT = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
TOKEN = "triton-admin-token-5b8e2c71"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The batcher settings the server is started with, which the model
# configuration must report.
MAX_BATCH = 32
QUEUE_DELAY_US = 250
QUEUE_CAPACITY = 77
INSTANCES = 2

ONNX_TO_TRITON = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}


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
    """The example repository plus the onnx wheel's light squeezenet (input
    [1,3,224,224]: no batch dimension)."""
    d = tmp_path_factory.mktemp("repo")
    shutil.copytree(EXAMPLE_REPO, d, dirs_exist_ok=True)
    (d / "squeezenet" / "1").mkdir(parents=True)
    shutil.copy(LIGHT / "light_squeezenet.onnx", d / "squeezenet" / "1" / "model.onnx")
    return d


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    """`abmesh serve` with an admin token; yields (data, admin) host:port."""
    token_file = tmp_path_factory.mktemp("token") / "admin.token"
    token_file.write_text(TOKEN + "\n")
    proc = subprocess.Popen(
        [abmesh_binary(), "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--admin-token-file", str(token_file), "--models", str(repo), "--device", "cpu",
         "--max-batch-size", str(MAX_BATCH), "--max-queue-delay-us", str(QUEUE_DELAY_US),
         "--queue-capacity", str(QUEUE_CAPACITY), "--instances", str(INSTANCES)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUST_LOG": "info,ort=warn"},
    )
    data = admin = None
    log = []
    deadline = time.time() + 60
    while time.time() < deadline and (data is None or admin is None):
        line = proc.stderr.readline()
        if not line:
            break
        log.append(line)
        m = re.search(r"(admin )?listening on http://([\d.]+:\d+)", line)
        if m:
            if m.group(1):
                admin = m.group(2)
            else:
                data = m.group(2)
    if data is None or admin is None:
        proc.kill()
        pytest.fail("abmesh serve did not start:\n" + "".join(log))
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    yield data, admin
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server[0])
    yield c
    c.close()


@pytest.fixture(scope="module")
def admin(server):
    c = httpclient.InferenceServerClient(server[1])
    yield c
    c.close()


def post(addr, path, body, headers=None):
    """A raw POST: (status, parsed JSON body)."""
    req = urllib.request.Request(f"http://{addr}{path}", data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def on_disk(repo):
    """(name, version) of every model file in the repository."""
    return sorted((p.parts[-3], p.parts[-2]) for p in repo.glob("*/*/model.onnx"))


def onnx_io(path):
    """[(name, triton type, dims)] of a model file's inputs and outputs, a
    symbolic dimension as -1."""
    g = onnx.load(str(path)).graph

    def one(v):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return v.name, ONNX_TO_TRITON[t.elem_type], dims

    # (Old models list their weights among the graph inputs too.)
    weights = {t.name for t in g.initializer}
    return [one(v) for v in g.input if v.name not in weights], [one(v) for v in g.output]


def test_server_metadata_lists_the_extensions_served(client):
    ext = client.get_server_metadata()["extensions"]
    assert sorted(ext) == ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]


@pytest.mark.parametrize("name,version", [("scorer", None), ("scorer", "2"), ("dtypes", None)])
def test_model_config_of_a_batched_model(client, repo, name, version):
    cfg = client.get_model_config(name, version or "")
    inputs, outputs = onnx_io(repo / name / (version or "1") / "model.onnx")
    assert cfg["name"] == name
    assert cfg["platform"] == "onnxruntime_onnx"
    assert cfg["backend"] == "onnxruntime"
    # Every input and output has a dynamic first dimension: batched, and
    # dims are given without the batch dimension, as Triton does.
    assert cfg["max_batch_size"] == MAX_BATCH
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg["input"]] == [
        (n, t, d[1:]) for n, t, d in inputs
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in cfg["output"]] == [
        (n, t, d[1:]) for n, t, d in outputs
    ]
    db = cfg["dynamic_batching"]
    assert db["max_queue_delay_microseconds"] == QUEUE_DELAY_US
    assert db["default_queue_policy"]["max_queue_size"] == QUEUE_CAPACITY
    assert cfg["instance_group"][0]["count"] == INSTANCES
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert cfg["version_policy"] == {"all": {}}


def test_model_config_of_a_model_without_batch_dimension(client, repo):
    cfg = client.get_model_config("squeezenet")
    inputs, outputs = onnx_io(repo / "squeezenet" / "1" / "model.onnx")
    assert cfg["max_batch_size"] == 0
    assert "dynamic_batching" not in cfg
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg["input"]] == inputs
    assert [(o["name"], o["data_type"], o["dims"]) for o in cfg["output"]] == outputs


def test_model_config_of_unknown_models_and_versions(client):
    with pytest.raises(InferenceServerException) as e:
        client.get_model_config("nope")
    assert "unknown model 'nope'" in str(e.value)
    with pytest.raises(InferenceServerException) as e:
        client.get_model_config("scorer", "9")
    assert "has no version '9'" in str(e.value)


def test_repository_index_lists_every_version_on_disk(client, repo, server):
    index = client.get_model_repository_index()
    assert sorted((m["name"], m["version"]) for m in index) == on_disk(repo)
    assert {m["state"] for m in index} == {"READY"}
    status, ready = post(server[0], "/v2/repository/index", b'{"ready": true}')
    assert status == 200
    assert sorted((m["name"], m["version"]) for m in ready) == on_disk(repo)
    status, err = post(server[0], "/v2/repository/index", b'{"ready": 1}')
    assert status == 400 and "invalid JSON body" in err["error"], err


def test_load_and_unload_need_the_admin_listener_and_its_token(client, admin, repo, server):
    assert client.is_model_ready("dtypes")
    # The data plane does not serve them: 404 naming the admin listener.
    for call in (client.unload_model, client.load_model):
        with pytest.raises(InferenceServerException) as e:
            call("dtypes", headers=AUTH)
        assert "served on the admin listener" in str(e.value)
    # The admin listener refuses them without the token, or with another.
    for headers in (None, {"Authorization": "Bearer " + "x" * len(TOKEN)}):
        with pytest.raises(InferenceServerException) as e:
            admin.unload_model("dtypes", headers=headers)
        assert "Authorization: Bearer" in str(e.value) or "not valid" in str(e.value)
    assert client.is_model_ready("dtypes"), "a refused unload unloaded"

    admin.unload_model("dtypes", headers=AUTH)
    assert not client.is_model_ready("dtypes")
    with pytest.raises(InferenceServerException) as e:
        client.infer("dtypes", [])
    assert "unknown model 'dtypes'" in str(e.value)
    index = {(m["name"], m["version"]): m for m in client.get_model_repository_index()}
    assert index[("dtypes", "1")]["state"] == "UNAVAILABLE"
    assert index[("dtypes", "1")]["reason"]
    assert index[("scorer", "1")]["state"] == "READY"
    status, ready = post(server[0], "/v2/repository/index", b'{"ready": true}')
    assert sorted((m["name"], m["version"]) for m in ready) == [
        nv for nv in on_disk(repo) if nv[0] != "dtypes"
    ]
    # Unloading again is a no-op; an unknown model is an error.
    admin.unload_model("dtypes", headers=AUTH)
    with pytest.raises(InferenceServerException) as e:
        admin.unload_model("nope", headers=AUTH)
    assert "unknown model 'nope'" in str(e.value)

    # Configurations sent with the load are refused (the repository is the
    # only source); the model stays unloaded.
    with pytest.raises(InferenceServerException) as e:
        admin.load_model("dtypes", headers=AUTH, config=json.dumps({"max_batch_size": 4}))
    assert "'config' is not supported" in str(e.value)
    assert not client.is_model_ready("dtypes")

    admin.load_model("dtypes", headers=AUTH)
    assert client.is_model_ready("dtypes")
    assert client.is_model_ready("dtypes", "1")
    x = np.array([[1, 2]], dtype=np.int64)
    inp = httpclient.InferInput("i64", [1, 2], "INT64")
    inp.set_data_from_numpy(x)
    # (The other inputs are missing: the model answers, naming one.)
    with pytest.raises(InferenceServerException) as e:
        client.infer("dtypes", [inp])
    assert "missing input" in str(e.value)
    # Loading a loaded model keeps it; a model not in the repository is an
    # error.
    admin.load_model("dtypes", headers=AUTH)
    with pytest.raises(InferenceServerException) as e:
        admin.load_model("nope", headers=AUTH)
    assert "has no version in the repository" in str(e.value)
    with pytest.raises(InferenceServerException) as e:
        admin.load_model("../x", headers=AUTH)


def stat(stats, version):
    (s,) = [m for m in stats["model_stats"] if m["version"] == version]
    return s


def test_statistics_count_what_the_server_did(client):
    before = stat(client.get_inference_statistics("scorer", "1"), "1")
    start_ms = int(time.time() * 1000)
    rng = np.random.default_rng(7)
    n, rows = 6, 3
    for _ in range(n):
        inp = httpclient.InferInput("features", [rows, 16], "FP32")
        inp.set_data_from_numpy(rng.standard_normal((rows, 16)).astype(np.float32))
        client.infer("scorer", [inp], model_version="1")
    bad = httpclient.InferInput("features", [1, 15], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 15), dtype=np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("scorer", [bad], model_version="1")
    after = stat(client.get_inference_statistics("scorer", "1"), "1")

    def delta(path):
        a, b = after, before
        for k in path:
            a, b = a[k], b[k]
        return a - b

    assert after["name"] == "scorer"
    assert delta(["inference_stats", "success", "count"]) == n
    assert delta(["inference_stats", "success", "ns"]) > 0
    assert delta(["inference_stats", "fail", "count"]) == 1
    assert delta(["inference_count"]) == n * rows
    # One client, one request at a time: each request runs alone.
    assert delta(["execution_count"]) == n
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert delta(["inference_stats", phase, "count"]) == n, phase
    assert delta(["inference_stats", "compute_infer", "ns"]) > 0
    # The batcher waited up to --max-queue-delay-us for company each time.
    assert delta(["inference_stats", "queue", "ns"]) >= n * QUEUE_DELAY_US * 1000 * 0.5
    assert start_ms - 1000 <= after["last_inference"] <= int(time.time() * 1000) + 1000
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    old = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    assert sizes.get(rows, 0) - old.get(rows, 0) == n
    # The batch table adds up to the totals.
    assert sum(size * c for size, c in sizes.items()) == after["inference_count"]
    assert sum(sizes.values()) == after["execution_count"]


def test_statistics_of_a_model_and_of_every_model(client, repo):
    versions = [m["version"] for m in client.get_inference_statistics("scorer")["model_stats"]]
    assert sorted(versions) == sorted(v for n, v in on_disk(repo) if n == "scorer")
    # `/v2/models/stats` is the statistics of everything loaded, not a
    # model named "stats".
    every = client.get_inference_statistics()["model_stats"]
    assert sorted((m["name"], m["version"]) for m in every) == on_disk(repo)
    for m in every:
        assert m["inference_stats"]["cache_hit"] == {"count": 0, "ns": 0}
    with pytest.raises(InferenceServerException) as e:
        client.get_inference_statistics("nope")
    assert "unknown model 'nope'" in str(e.value)
    with pytest.raises(InferenceServerException) as e:
        client.get_inference_statistics("scorer", "9")
    assert "has no version '9'" in str(e.value)


def test_concurrent_requests_are_batched_and_counted(server):
    """Concurrent requests share runs; the statistics say so exactly:
    fewer executions than requests, every row counted."""
    import concurrent.futures

    c0 = httpclient.InferenceServerClient(server[0])
    before = stat(c0.get_inference_statistics("scorer", "2"), "2")

    def one(i):
        c = httpclient.InferenceServerClient(server[0])
        try:
            inp = httpclient.InferInput("features", [1, 16], "FP32")
            inp.set_data_from_numpy(np.full((1, 16), i, dtype=np.float32))
            c.infer("scorer", [inp], model_version="2")
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(128)))
    after = stat(c0.get_inference_statistics("scorer", "2"), "2")
    c0.close()
    assert after["inference_count"] - before["inference_count"] == 128
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 128
    executions = after["execution_count"] - before["execution_count"]
    assert 1 <= executions < 128, executions
    assert max(b["batch_size"] for b in after["batch_stats"]) > 1
