#!/usr/bin/env python3
"""Triton Inference Server as a peer of `abmesh serve`: the real
`tritonserver` (2.51.0) that ships in the nvidia-pytriton 0.7.0 wheel,
serving an ONNX model through onnxruntime inside a pytriton-bound Python
function, with Triton's dynamic batcher in front of it.

    python triton_peer.py --model-file M.onnx --name scorer --version 1 \
        --http-port P --grpc-port Q [--max-batch-size 64]

Run by benches/model_host/perf.py with the interpreter of the benchmark's
own venv (.venv-triton, created there; the wheel's Triton has the Python
backend only: its ONNX Runtime backend cannot be had here, so the model
runs in a Python process, as any pytriton user's would). Two things are
needed for it to start at all:

- LD_LIBRARY_PATH must hold the interpreter's own lib directory (perf.py
  sets it), or the Python backend stub loads Debian's libpython and dies;
- TritonSecurityConfig(restricted_endpoints=[]): pytriton 0.7.0 puts
  shared-memory, model-repository, statistics, ... behind a generated
  token by default, and perf_analyzer, which sends none and reads the
  statistics, would be refused.

With dynamic batching, Triton hands the function every request of a batch
at once, concatenated along the batch axis (the @batch decorator); the
function runs them in one Session::run, as abmesh's batcher does. One
intra-op thread, as abmesh and the FastAPI peer use.
"""

import argparse
import signal

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

NP_TYPES = {"tensor(float)": np.float32, "tensor(bool)": np.bool_, "tensor(int64)": np.int64,
            "tensor(int32)": np.int32, "tensor(double)": np.float64}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-file", required=True)
    ap.add_argument("--name", default="scorer")
    ap.add_argument("--version", type=int, default=1)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--workspace", default=None,
                    help="pytriton's workspace (model store, sockets, a copy of tritonserver); "
                         "default: a new one under ~/.cache/pytriton")
    args = ap.parse_args()

    # perf.py stops the peer with SIGTERM: leave through the context
    # manager, which stops tritonserver and the proxy and removes the
    # workspace (the default SIGTERM action would leave them behind).
    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model_file, sess_options=opts, providers=["CPUExecutionProvider"])
    ins, outs = session.get_inputs(), session.get_outputs()
    out_names = [o.name for o in outs]

    @batch
    def infer(**inputs):
        results = session.run(out_names, {i.name: inputs[i.name] for i in ins})
        return dict(zip(out_names, results))

    config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port,
                          grpc_address="127.0.0.1", grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, log_verbose=0)
    with Triton(config=config, workspace=args.workspace,
                security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        triton.bind(
            model_name=args.name,
            model_version=args.version,
            infer_func=infer,
            inputs=[Tensor(name=i.name, dtype=NP_TYPES[i.type], shape=tuple(-1 if not isinstance(d, int) else d
                                                                              for d in i.shape[1:]))
                    for i in ins],
            outputs=[Tensor(name=o.name, dtype=NP_TYPES[o.type], shape=tuple(-1 if not isinstance(d, int) else d
                                                                               for d in o.shape[1:]))
                     for o in outs],
            config=ModelConfig(max_batch_size=args.max_batch_size,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=0)),
            strict=False,
        )
        try:
            triton.serve()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
