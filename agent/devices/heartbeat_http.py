"""The agent's HTTP endpoint for heartbeats on the school network.

    POST /heartbeat/<device_id>        Authorization: Bearer <token>

Answers ``204`` when accepted, ``401`` for a missing or wrong token, ``404``
for a device that is not configured as a heartbeat device, ``405`` for other
methods; ``GET`` is accepted like ``POST`` for panels that can only fetch a URL.
"""

from __future__ import annotations

import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.devices.heartbeats import HeartbeatDesk, Verdict

log = logging.getLogger(__name__)

PATH_PREFIX = "/heartbeat/"
MAX_BODY_BYTES = 4096
_STATUS = {
    Verdict.ACCEPTED: HTTPStatus.NO_CONTENT,
    Verdict.UNKNOWN_DEVICE: HTTPStatus.NOT_FOUND,
    Verdict.BAD_TOKEN: HTTPStatus.UNAUTHORIZED,
    Verdict.MALFORMED: HTTPStatus.BAD_REQUEST,
}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 10

    def do_POST(self) -> None:
        self._heartbeat()

    def do_GET(self) -> None:
        self._heartbeat()

    def do_PUT(self) -> None:
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED, allow="GET, POST")

    do_DELETE = do_PATCH = do_PUT  # noqa: N815

    def _heartbeat(self) -> None:
        if not self._drain_body():
            return
        path = self.path.split("?", 1)[0]
        if not path.startswith(PATH_PREFIX):
            self.server.desk.malformed("http", path)
            self._answer(HTTPStatus.NOT_FOUND)
            return
        device_id = path[len(PATH_PREFIX) :]
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        verdict = self.server.desk.receive(
            device_id, token.strip() if scheme.lower() == "bearer" else None, "http"
        )
        self._answer(_STATUS[verdict])

    def _drain_body(self) -> bool:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.server.desk.malformed("http", "body")
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, close=True)
            return False
        self.rfile.read(length)
        return True

    def _answer(self, status: HTTPStatus, *, allow: str | None = None, close: bool = False) -> None:
        self.send_response(status)
        if status is HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="school-agent heartbeats"')
        if allow:
            self.send_header("Allow", allow)
        self.send_header("Content-Length", "0")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("heartbeat endpoint: %s", format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], desk: HeartbeatDesk) -> None:
        self.desk = desk
        super().__init__(address, _Handler)


class HeartbeatEndpoint:
    """Serves heartbeats in a background thread until :meth:`close`."""

    def __init__(self, host: str, port: int, desk: HeartbeatDesk) -> None:
        try:
            self._server = _Server((host, port), desk)
        except OSError as exc:
            raise OSError(
                f"cannot listen for heartbeats on {host}:{port}: {exc.strerror}; "
                "choose another heartbeat.listen or stop what uses the port"
            ) from exc
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="heartbeat-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info(
            "listening for device heartbeats on http://%s:%d%s<device_id>",
            self._server.server_address[0],
            self.port,
            PATH_PREFIX,
        )

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()  # waits for serve_forever: only once it runs
        self._server.server_close()
