"""The peer design the model host is compared with: Python FastAPI +
onnxruntime under uvicorn, serving the same KServe v2 JSON infer endpoint
for the same model repository, written the way such a service usually is
(one InferenceSession per model version, request JSON -> numpy -> run ->
JSON).

    MODEL_REPO=examples/models/repo uvicorn fastapi_peer:app \
        --app-dir benches/model_host --port 8100 --log-level warning --no-access-log

Only what the benchmark exercises is implemented: POST
/v2/models/{name}/versions/{version}/infer with JSON tensors, and
/v2/health/ready.
"""

import os
import pathlib

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

REPO = pathlib.Path(os.environ.get("MODEL_REPO", "examples/models/repo"))
INTRA_OP_THREADS = int(os.environ.get("INTRA_OP_THREADS", "1"))

DTYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def load_sessions():
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = INTRA_OP_THREADS
    opts.inter_op_num_threads = 1
    sessions = {}
    for path in sorted(REPO.glob("*/*/model.onnx")):
        name, version = path.parent.parent.name, path.parent.name
        sessions[(name, version)] = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    return sessions


SESSIONS = load_sessions()
app = FastAPI()


@app.get("/v2/health/ready")
def ready():
    return {"ready": True}


@app.post("/v2/models/{name}/versions/{version}/infer")
async def infer(name: str, version: str, request: Request):
    sess = SESSIONS.get((name, version))
    if sess is None:
        raise HTTPException(404, f"unknown model {name} version {version}")
    body = await request.json()
    feeds = {}
    for i in body["inputs"]:
        dtype = DTYPES.get(i["datatype"])
        if dtype is None:
            raise HTTPException(400, f"unsupported datatype {i['datatype']}")
        feeds[i["name"]] = np.asarray(i["data"], dtype=dtype).reshape(i["shape"])
    names = [o.name for o in sess.get_outputs()]
    results = sess.run(names, feeds)
    return JSONResponse(
        {
            "model_name": name,
            "model_version": version,
            "outputs": [
                {
                    "name": n,
                    "datatype": NAMES[r.dtype],
                    "shape": list(r.shape),
                    "data": r.ravel().tolist(),
                }
                for n, r in zip(names, results)
            ],
        }
    )
