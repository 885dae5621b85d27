"""A self-hosted speed server speaking the "Speedtest Mini" protocol of speedtest-cli.

    GET  /                              page naming the upload extension (php)
    GET  /speedtest/latency.txt         "test=test"
    GET  /speedtest/random{N}x{N}.jpg   about 2*N*N incompressible bytes
    POST /speedtest/upload.php          reads the body, answers "size=<bytes>"

Run it with ``school-collector speed-server --port 8080``. The README shows
the same thing served by nginx, for a ministry that hosts its own.

Downloads are sent by the server, so the server's TCP congestion control
decides how soon a download reaches a long link's rate: it asks for BBR on its
listening socket (accepted connections inherit it), see agent/speed/congestion.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from agent.speed import congestion

log = logging.getLogger(__name__)

MIN_SIDE, MAX_SIDE = 100, 8000
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
_CHUNK = 256 * 1024
_RANDOM_BLOCK = memoryview(os.urandom(4 * 1024 * 1024))
_RANDOM_PATH = re.compile(r"^/speedtest/random(\d+)x(\d+)\.jpg$")
INDEX_PAGE = b"""<!doctype html>
<html><head><title>school-monitor speed server</title></head>
<body><p>Speedtest Mini compatible speed server.</p>
<script>var upload_extension: "php";</script></body></html>
"""


def image_size(side: int) -> int:
    """Bytes served for ``random{side}x{side}.jpg``: close to Ookla's own files."""
    return 2 * side * side


class SpeedRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "school-monitor-speed/1"
    # Headers and a small body are separate writes: with Nagle's algorithm the
    # body would wait for the client's delayed ACK, adding 40 ms to every reply.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html", "/speedtest", "/speedtest/"):
            self._reply(200, INDEX_PAGE, "text/html")
        elif path == "/speedtest/latency.txt":
            self._reply(200, b"test=test\n", "text/plain")
        elif path == "/speedtest/upload.php":
            self._reply(200, b"size=0", "text/plain")
        elif match := _RANDOM_PATH.match(path):
            side, other = int(match[1]), int(match[2])
            if side != other or not MIN_SIDE <= side <= MAX_SIDE:
                self._reply(404, b"no such image\n", "text/plain")
            else:
                self._send_random(image_size(side))
        else:
            self._reply(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/speedtest/upload.php":
            self._reply(404, b"not found\n", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._reply(411, b"Content-Length required\n", "text/plain")
            return
        if not 0 <= length <= MAX_UPLOAD_BYTES:
            self._reply(413, b"upload too large\n", "text/plain")
            return
        received = 0
        while received < length:
            chunk = self.rfile.read(min(_CHUNK, length - received))
            if not chunk:
                self.close_connection = True
                return
            received += len(chunk)
        self._reply(200, f"size={received}".encode(), "text/plain")

    def _send_random(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        left = size
        while left > 0:
            take = min(left, _CHUNK)
            offset = (size - left) % (len(_RANDOM_BLOCK) - _CHUNK)
            self.wfile.write(_RANDOM_BLOCK[offset : offset + take])
            left -= take

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            # A client that stops mid-transfer (speedtest-cli does at its time limit).
            self.close_connection = True


class SpeedServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, congestion_control: str | None = "bbr"
    ) -> None:
        self._congestion_control = congestion_control
        self.congestion: str | None = None  # in force for every connection it accepts
        super().__init__((host, port), SpeedRequestHandler)

    def server_bind(self) -> None:
        super().server_bind()
        self.congestion = congestion.choose(self.socket, self._congestion_control)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="speed-server", daemon=True)
        thread.start()
        return thread


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    parser.add_argument(
        "--congestion-control",
        default="bbr",
        metavar="NAME",
        help="TCP congestion control for downloads (default: bbr; 'system' keeps the "
        "system's default); where refused, the system's default is used and named",
    )


def serve(host: str, port: int, congestion_control: str = "bbr") -> int:
    wanted = None if congestion_control == "system" else congestion_control
    try:
        server = SpeedServer(host, port, wanted)
    except OSError as exc:
        print(f"speed-server: cannot listen on {host}:{port}: {exc.strerror}; pick another --port")  # noqa: T201
        return 2
    used = server.congestion or "unknown"
    if wanted and server.congestion != wanted:
        print(  # noqa: T201
            f"speed-server: congestion control {wanted} refused, downloads use {used}: "
            f"load it (modprobe tcp_{wanted}) or choose another with --congestion-control",
            flush=True,
        )
    print(  # noqa: T201
        f"speed server listening on {server.url} (congestion control {used}; Ctrl-C to stop)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m collector.speed_server", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return serve(args.host, args.port, args.congestion_control)


if __name__ == "__main__":
    raise SystemExit(main())
