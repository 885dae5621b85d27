"""Run one speed test with speedtest-cli and turn every outcome into a SpeedMeasurement.

A failed test is data: it comes back with a ``result`` and ``result_code``
and no figures, never as an exception.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import speedtest

from agent.contract import (
    SPEED_RESULT_CODES,
    ServerKind,
    SpeedMeasurement,
    SpeedResult,
    SpeedServer,
    utc_now,
)
from agent.settings import SpeedtestSettings
from agent.speed.progress import Progress, SilentProgress
from agent.speed.self_hosted import SelfHostedSpeedtest

log = logging.getLogger(__name__)

_UNREACHABLE_LATENCY_MS = 1_000_000  # speedtest-cli scores a failed ping as 3600 s


class SpeedTestFailed(Exception):
    """A classified failure: becomes a result with no figures."""

    def __init__(self, result: SpeedResult, message: str) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class TimedMeasurement:
    started_at: datetime
    measurement: SpeedMeasurement


class StopFlag:
    """A threading.Event with the ``isSet`` spelling speedtest-cli calls."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def isSet(self) -> bool:  # noqa: N802 - speedtest-cli's name
        return self._event.is_set()


def self_hosted_base(server_url: str) -> str:
    """``http://host:port`` for any URL of a mini server (root or ``.../speedtest/...``)."""
    url = server_url.rstrip("/")
    cut = url.find("/speedtest")
    return url[:cut] if cut > 0 else url


def self_hosted_server(settings: SpeedtestSettings) -> SpeedServer:
    base = self_hosted_base(settings.server_url or "")
    parts = urlsplit(base)
    host = (parts.hostname or "server").replace(":", "-").strip("-.") or "self-hosted"
    return SpeedServer(
        kind=ServerKind.SELF_HOSTED,
        id=settings.server_name or host,
        name=parts.netloc,
        url=base,
    )


def classify(exc: BaseException, doing: str) -> SpeedTestFailed:
    """Name a network error: DNS, refused, timeout, TLS or HTTP status."""
    reason: object = exc
    if isinstance(exc, urllib.error.HTTPError):
        return SpeedTestFailed(SpeedResult.HTTP_ERROR, f"{doing}: HTTP {exc.code} {exc.reason}")
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
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


class SpeedTester:
    """Runs speed tests as configured: a self-hosted server, or Ookla's selection."""

    def __init__(self, settings: SpeedtestSettings) -> None:
        self._settings = settings
        self.stop = StopFlag()

    def measure(self, progress: Progress | None = None) -> TimedMeasurement:
        progress = progress or SilentProgress()
        started_at = utc_now()
        started = time.monotonic()
        server = self_hosted_server(self._settings) if self._settings.server_url else None
        tester: Any = None
        try:
            tester, server = self._prepare(server, progress)
            measurement = self._transfer(tester, server, progress, started)
        except SpeedTestFailed as failure:
            measurement = self._failed(failure.result, str(failure), server, tester, started)
        except speedtest.SpeedtestException as exc:
            named = self._classify_speedtest_error(exc)
            measurement = self._failed(named.result, str(named), server, tester, started)
        except Exception as exc:  # failure is data: a bug must not kill the agent's loop
            log.exception("speed test crashed")
            measurement = self._failed(
                SpeedResult.INTERNAL_ERROR, f"internal error: {exc!r}", server, tester, started
            )
        return TimedMeasurement(started_at, measurement)

    # -- steps -----------------------------------------------------------

    def _prepare(self, server: SpeedServer | None, progress: Progress) -> tuple[Any, SpeedServer]:
        timeout = self._settings.timeout_s
        if server is not None:
            progress.phase(f"Server {server.name}")
            self._check_self_hosted(server.url)
            tester = SelfHostedSpeedtest(timeout=timeout, shutdown_event=self.stop)
            tester.set_mini_server(server.url)
            best = tester.get_best_server(tester.servers)
        else:
            progress.phase("Finding the best Ookla server")
            try:
                tester = speedtest.Speedtest(secure=True, timeout=timeout, shutdown_event=self.stop)
            except speedtest.ConfigRetrievalError as exc:
                raise classify(exc.args[0], "fetching the speedtest.net configuration") from exc
            try:
                tester.get_servers()
            except speedtest.ServersRetrievalError as exc:
                raise classify(exc.args[0], "fetching the speedtest.net server list") from exc
            best = tester.get_best_server()
            server = SpeedServer(
                kind=ServerKind.OOKLA,
                id=str(best["id"]),
                name=f"{best.get('sponsor', '')} ({best.get('name', '')})"[:200],
                url=str(best["url"])[:500],
            )
        if best["latency"] >= _UNREACHABLE_LATENCY_MS:
            raise SpeedTestFailed(
                SpeedResult.CONNECTION_FAILED, f"no answer to latency probes from {server.name}"
            )
        progress.figure("Latency", f"{best['latency']:.1f} ms ({server.name})")
        return tester, server

    def _check_self_hosted(self, base: str) -> None:
        """Reach the server once ourselves, so a failure gets its real cause."""
        url = f"{base}/speedtest/latency.txt"
        try:
            with urllib.request.urlopen(url, timeout=self._settings.timeout_s) as reply:  # noqa: S310 - http(s) checked in settings
                body = reply.read(64)
        except (urllib.error.URLError, OSError) as exc:
            raise classify(exc, f"reaching speed server {base}") from exc
        if not body.startswith(b"test=test"):
            raise SpeedTestFailed(
                SpeedResult.INVALID_SERVER,
                f"{base} is not a speed server: /speedtest/latency.txt did not say test=test",
            )

    def _transfer(
        self, tester: Any, server: SpeedServer, progress: Progress, started: float
    ) -> SpeedMeasurement:
        progress.phase("Download")
        download_bps = tester.download(callback=_counter(progress))
        if tester.results.bytes_received == 0:
            raise SpeedTestFailed(SpeedResult.NO_DATA, f"no data received from {server.name}")
        progress.figure("Download", f"{download_bps / 1e6:.2f} Mbps")
        progress.phase("Upload")
        upload_bps = tester.upload(callback=_counter(progress), pre_allocate=True)
        if tester.results.bytes_sent == 0:
            raise SpeedTestFailed(SpeedResult.NO_DATA, f"no data accepted by {server.name}")
        progress.figure("Upload", f"{upload_bps / 1e6:.2f} Mbps")
        if self.stop.isSet():
            raise SpeedTestFailed(SpeedResult.CANCELLED, "speed test cancelled")
        download_mbps = round(download_bps / 1e6, 3)
        threshold = self._settings.threshold_mbps
        return SpeedMeasurement(
            result=SpeedResult.SUCCESS,
            result_code=SPEED_RESULT_CODES[SpeedResult.SUCCESS],
            threshold_mbps=threshold,
            download_mbps=download_mbps,
            upload_mbps=round(upload_bps / 1e6, 3),
            latency_ms=round(float(tester.results.ping), 3),
            meets_threshold=download_mbps >= threshold,
            bytes_received=int(tester.results.bytes_received),
            bytes_sent=int(tester.results.bytes_sent),
            duration_s=round(time.monotonic() - started, 3),
            server=server,
        )

    def _failed(
        self,
        result: SpeedResult,
        message: str,
        server: SpeedServer | None,
        tester: Any,
        started: float,
    ) -> SpeedMeasurement:
        results = getattr(tester, "results", None)
        return SpeedMeasurement.failed(
            result,
            message,
            threshold_mbps=self._settings.threshold_mbps,
            server=server,
            duration_s=round(time.monotonic() - started, 3),
            bytes_received=int(getattr(results, "bytes_received", 0) or 0),
            bytes_sent=int(getattr(results, "bytes_sent", 0) or 0),
        )

    @staticmethod
    def _classify_speedtest_error(exc: speedtest.SpeedtestException) -> SpeedTestFailed:
        if isinstance(exc, speedtest.NoMatchedServers):
            return SpeedTestFailed(SpeedResult.NO_SERVERS, "no Ookla server matched")
        if isinstance(exc, speedtest.SpeedtestConfigError):
            return SpeedTestFailed(SpeedResult.CONFIG_UNAVAILABLE, f"bad configuration: {exc}")
        if isinstance(
            exc, speedtest.SpeedtestMiniConnectFailure | speedtest.InvalidSpeedtestMiniServer
        ):
            return SpeedTestFailed(SpeedResult.INVALID_SERVER, str(exc))
        if isinstance(exc, speedtest.SpeedtestBestServerFailure):
            return SpeedTestFailed(SpeedResult.CONNECTION_FAILED, str(exc))
        return SpeedTestFailed(SpeedResult.INTERNAL_ERROR, f"speedtest-cli: {exc!r}")


def _counter(progress: Progress) -> Callable[..., None]:
    """A speedtest-cli callback that counts finished requests."""
    lock = threading.Lock()
    finished = [0]

    def callback(_i: int, total: int, **flags: bool) -> None:
        if flags.get("end"):
            with lock:
                finished[0] += 1
                done = finished[0]
            progress.step(done, total)

    return callback
