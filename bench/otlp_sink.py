"""An OTLP/HTTP endpoint that accepts every export and discards it: what traced servers export to in bench/load.py.

It runs on a thread of the benchmark's own process (on the load generator's CPU, not the server's), reads
each body whole and answers 200 with an empty `ExportTraceServiceResponse` (zero bytes in protobuf).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Discard(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporter's session reuses its connection

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.exports += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


class OtlpSink:
    """`with OtlpSink() as sink:` serves on 127.0.0.1 until the block ends; `sink.endpoint` is the base URL."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
        self.server.exports = 0  # type: ignore[attr-defined]
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="otlp-sink", daemon=True)

    @property
    def exports(self) -> int:
        """Export requests received so far."""
        return int(self.server.exports)  # type: ignore[attr-defined]

    def __enter__(self) -> OtlpSink:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
