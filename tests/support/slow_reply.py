"""A loopback HTTP proxy whose answers to writes arrive late: requests pass at once.

Put between the collector and InfluxDB, it holds the answer to every
``POST /write`` for ``delay_s`` (queries pass untouched): a write is already
stored while the collector still waits to hear so. That opens a wide window
in which to kill the collector after InfluxDB stored a batch and before the
collector published its receipts.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class SlowReplyProxy:
    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self._upstream = upstream_port
        self._delay_s = delay_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closing.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self._upstream), timeout=5)
            except OSError:
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            writing = threading.Event()  # the request on this connection is a write
            threading.Thread(
                target=self._pipe, args=(client, upstream, writing, False), daemon=True
            ).start()
            threading.Thread(
                target=self._pipe, args=(upstream, client, writing, True), daemon=True
            ).start()

    def _pipe(
        self, source: socket.socket, target: socket.socket, writing: threading.Event, reply: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if not reply and chunk.startswith(b"POST /write"):
                    writing.set()
                elif reply and writing.is_set():
                    writing.clear()
                    time.sleep(self._delay_s)
                target.sendall(chunk)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
