#!/usr/bin/env python3
"""A stand-in for `abmesh serve`'s exposure endpoint, for benchmarks and
smoke tests of the filter's shipping: answers every `POST /v1/exposures`
with 200 and `{"accepted": N, "duplicate_batch": false, "halted": [...],
"config_needed": false}` the way the sidecar does, and nothing else.

Envoy's cost of a batch (the tick, the http call, reading the answer) is the
same as with the real sidecar, and it has no moving parts (no store, no
guardrails), so icount.sh can use it (`SIDECAR=stub`) while the real sidecar
is being changed.

Usage: stub_sidecar.py PORT [--halted FILE] [--log FILE]
  --halted FILE  JSON list of {"experiment", "variant"} read on every batch
                 (edit it to halt or lift variants while Envoy runs)
  --log FILE     append every batch body received, one per line
  --config-needed  answer "config_needed": true to batches without "config"
"""
import http.server
import json
import sys


def main(argv):
    port = int(argv[1])
    opts = {"--halted": None, "--log": None}
    config_needed = "--config-needed" in argv
    for k in opts:
        if k in argv:
            opts[k] = argv[argv.index(k) + 1]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            try:
                batch = json.loads(body)
            except ValueError:
                self.send_error(400, "not JSON")
                return
            if opts["--log"]:
                with open(opts["--log"], "ab") as f:
                    f.write(body + b"\n")
            halted = []
            if opts["--halted"]:
                try:
                    with open(opts["--halted"]) as f:
                        halted = json.load(f)
                except (OSError, ValueError):
                    pass
            answer = json.dumps(
                {
                    "accepted": len(batch.get("exposures", [])),
                    "duplicate_batch": False,
                    "halted": halted,
                    "config_needed": config_needed and "config" not in batch,
                }
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    # Envoy closing pooled connections at exit is not an error here.
    server.handle_error = lambda request, client_address: None
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
