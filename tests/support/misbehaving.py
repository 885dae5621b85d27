"""Local servers that fail on purpose, for the speed test's failure paths."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from collector.speed_server import SpeedRequestHandler, SpeedServer


class _FixedReply(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FixedReplyServer

    def do_GET(self) -> None:
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class FixedReplyServer(ThreadingHTTPServer):
    """Answers every GET with the same status and body."""

    daemon_threads = True

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _FixedReply)
        self.status = status
        self.body = body
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def _stop_listening(listener: socket.socket, thread: threading.Thread) -> None:
    """Close ``listener`` and end the thread accepting on it.

    close() alone does not wake a thread blocked in accept(): it would go on
    accepting on the descriptor's number, which the next server's socket reuses,
    and answer that server's clients (a flaky test's cause).
    """
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(timeout=5)


class StallingServer:
    """Accepts connections and never says a word."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(connection)

    def close(self) -> None:
        _stop_listening(self._listener, self._thread)
        for connection in self._held:
            connection.close()


class _MisbehavingSpeed(SpeedRequestHandler):
    """Answers latency probes properly, then spoils the download as ``server.mode`` says."""

    server: MisbehavingSpeedServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        mode = self.server.mode
        if mode == "slow" and "latency.txt" in self.path:
            time.sleep(0.05)  # a server farther away
        if mode == "slow" or "/random" not in self.path:
            super().do_GET()
            return
        if mode == "garbage":
            self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(32 * 1024 * 1024))
        self.end_headers()
        self.wfile.write(b"x" * (256 * 1024))
        if mode == "stall":
            self.server.released.wait(60)  # holds the connection open, silent
        self.close_connection = True  # "close": hang up in the middle of the body


class MisbehavingSpeedServer(SpeedServer):
    """A speed server that misbehaves on purpose: downloads that are ``garbage``, that
    ``stall`` or ``close`` midway; or a ``slow`` one, 50 ms further away."""

    def __init__(self, mode: str) -> None:
        super().__init__("127.0.0.1", 0)
        self.RequestHandlerClass = _MisbehavingSpeed
        self.mode = mode
        self.released = threading.Event()
        self.start_in_background()

    def close(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()


class GarbageServer:
    """Answers every connection with bytes that are not HTTP."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with connection:
                connection.sendall(b"\x00\x01garbage\xff\r\n\r\n")

    def close(self) -> None:
        _stop_listening(self._listener, self._thread)
