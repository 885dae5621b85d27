"""Tests only: InfluxDB 1.8's ``/api/v2/write`` mapping, in front of a real InfluxDB 1.6.

InfluxDB 1.8 added ``/api/v2/write`` as a thin mapping onto ``/write``:
bucket ``database/retention-policy``, token ``user:password``. Debian's 1.6
lacks it; this shim does the same mapping so that influxdb-client's own write
path runs end to end against the real database.
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: V2WriteShim

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if parts.path != "/api/v2/write":
            self._answer(404, {"code": "not found", "message": f"no route {parts.path}"})
            return
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        database, _, retention = query.get("bucket", "").partition("/")
        params = {"db": database, "precision": query.get("precision", "ns")}
        if retention:
            params["rp"] = retention
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Token "):
            user, _, password = auth[len("Token ") :].partition(":")
            params |= {"u": user, "p": password}
        self.server.requests += 1
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.influx_port, timeout=10)
        try:
            upstream.request("POST", "/write?" + urlencode(params), body=body)
            reply = upstream.getresponse()
            data = reply.read()
        finally:
            upstream.close()
        if reply.status == 204:
            self._answer(204, None)
            return
        try:
            message = json.loads(data).get("error", "")
        except ValueError:
            message = data.decode("utf-8", "replace")
        self._answer(reply.status, {"code": "invalid", "message": message})

    def _answer(self, status: int, document: dict[str, str] | None) -> None:
        payload = b"" if document is None else json.dumps(document).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


class V2WriteShim(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, influx_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.influx_port = influx_port
        self.requests = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> V2WriteShim:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
