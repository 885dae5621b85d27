"""Where a speed test sends its requests, and how its failures are named.

Every Speedtest server, Ookla's or a self-hosted one, serves one directory:
``<dir>/latency.txt``, ``<dir>/random{N}x{N}.jpg`` and an upload script
(``<dir>/upload.php``, sometimes ``.asp`` or ``.jsp``).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.error
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.contract import SpeedResult

DOWNLOAD_FILE = "random4000x4000.jpg"


class SpeedTestFailed(Exception):
    """A classified failure: becomes a result with no figures."""

    def __init__(self, result: SpeedResult, message: str) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Endpoint:
    """A server's speedtest directory, from the URL of its upload script."""

    upload_url: str

    @property
    def directory(self) -> str:
        return self.upload_url.rsplit("/", 1)[0]

    @property
    def latency_path(self) -> str:
        return urlsplit(self.directory).path + "/latency.txt"

    @property
    def download_path(self) -> str:
        return urlsplit(self.directory).path + "/" + DOWNLOAD_FILE

    @property
    def upload_path(self) -> str:
        return urlsplit(self.upload_url).path

    def connection(self, timeout_s: float) -> http.client.HTTPConnection:
        parts = urlsplit(self.upload_url)
        host = parts.hostname or ""
        if parts.scheme == "https":
            return http.client.HTTPSConnection(host, parts.port or 443, timeout=timeout_s)
        return http.client.HTTPConnection(host, parts.port or 80, timeout=timeout_s)


def classify(exc: BaseException, doing: str) -> SpeedTestFailed:  # noqa: PLR0911 - one per kind
    """Name a network error: DNS, refused, timeout, TLS, HTTP status or garbage."""
    reason: object = exc
    if isinstance(exc, SpeedTestFailed):
        return exc
    if isinstance(exc, urllib.error.HTTPError):
        return SpeedTestFailed(SpeedResult.HTTP_ERROR, f"{doing}: HTTP {exc.code} {exc.reason}")
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
    if isinstance(reason, ConnectionResetError | BrokenPipeError | http.client.IncompleteRead):
        # RemoteDisconnected is both a reset and an HTTPException: a hang-up, not garbage.
        return SpeedTestFailed(
            SpeedResult.CONNECTION_FAILED, f"{doing}: the server closed the connection"
        )
    if isinstance(reason, http.client.HTTPException):
        return SpeedTestFailed(
            SpeedResult.PROTOCOL_ERROR, f"{doing}: the server does not speak HTTP ({reason!r})"
        )
    if isinstance(reason, socket.gaierror):
        return SpeedTestFailed(SpeedResult.DNS_ERROR, f"{doing}: DNS lookup failed ({reason})")
    if isinstance(reason, TimeoutError | socket.timeout):
        return SpeedTestFailed(SpeedResult.TIMEOUT, f"{doing}: timed out")
    if isinstance(reason, ssl.SSLError):
        return SpeedTestFailed(SpeedResult.CONNECTION_FAILED, f"{doing}: TLS error ({reason})")
    if isinstance(reason, OSError):
        detail = reason.strerror or str(reason)
        return SpeedTestFailed(SpeedResult.CONNECTION_FAILED, f"{doing}: {detail}")
    return SpeedTestFailed(SpeedResult.CONNECTION_FAILED, f"{doing}: {reason}")
