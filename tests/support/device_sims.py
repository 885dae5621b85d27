"""Safety-device simulators on loopback: real sockets, misbehaving on purpose.

- :class:`TcpDevice`: accepts connections; with ``reply`` it answers each
  request line; ``flapping`` answers correctly only every other connection;
  ``stop()``/``start()`` take it off and back on the same port (a restart).
- :class:`HttpDevice`: an HTTP(S) health endpoint whose status, body, delay or
  sanity can be changed while it runs.
- :class:`HeartbeatSender`: a device that reports on its own every so often,
  and can pause (a gap in its heartbeats).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from localstack import free_port


class TcpDevice:
    def __init__(self, *, reply: bytes | None = None, flapping: bool = False) -> None:
        self.port = free_port()
        self.reply = reply
        self.flapping = flapping
        self.connections = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, args=(listener,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the port: checks get ``connection_refused`` until :meth:`start`."""
        if self._listener is not None:
            self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        if self._thread is not None:
            self._thread.join(5)

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(
                target=self._answer, args=(conn, self.connections), daemon=True
            ).start()

    def _answer(self, conn: socket.socket, number: int) -> None:
        with conn:
            conn.settimeout(5)
            if self.reply is None:
                return
            try:
                conn.recv(1024)
                good = not self.flapping or number % 2 == 1
                conn.sendall(self.reply if good else b"ERR\n")
            except OSError:
                return


class _HttpHandler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        device = self.server.device
        device.requests += 1
        if device.delay_s:
            time.sleep(device.delay_s)
        if device.garbage:
            self.wfile.write(b"this is not HTTP at all\r\n\r\n")
            self.close_connection = True
            return
        body = device.body.encode()
        self.send_response(device.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, device: HttpDevice) -> None:
        self.device = device
        super().__init__(("127.0.0.1", device.port), _HttpHandler)


class HttpDevice:
    def __init__(self, *, certificate: tuple[Path, Path] | None = None) -> None:
        self.port = free_port()
        self.status = 200
        self.body = "status: ok"
        self.delay_s = 0.0
        self.garbage = False
        self.requests = 0
        self._server = _HttpServer(self)
        self.scheme = "http"
        if certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(certificate[0]), str(certificate[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/health"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (also its own CA), made by openssl."""
    cert, key = directory / "device.crt", directory / "device.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class HeartbeatSender:
    """POSTs a heartbeat every ``interval_s`` until closed; :meth:`pause` makes a gap."""

    def __init__(self, url: str, token: str, interval_s: float) -> None:
        self.url = url
        self.token = token
        self.interval_s = interval_s
        self.answers: list[int] = []
        self._running = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._running.set()
        if not self._thread.is_alive():
            self._thread.start()

    def pause(self) -> None:
        self._running.clear()

    def close(self) -> None:
        self._closed.set()
        self._running.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._running.wait()
            if self._closed.is_set():
                return
            self.answers.append(send_heartbeat(self.url, self.token))
            self._closed.wait(self.interval_s)


def send_heartbeat(url: str, token: str | None, method: str = "POST") -> int:
    """One heartbeat; the HTTP status the agent answered (0 when unreachable)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(  # noqa: S310 - an http:// URL on loopback
        url,
        data=b"" if method == "POST" else None,
        headers=headers,
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0
