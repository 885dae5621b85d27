"""Run one speed test and turn every outcome into a SpeedMeasurement.

speedtest-cli finds the server (Ookla's selection, or a self-hosted mini
server); latency and jitter are measured against it; then each direction is
measured by the configured method:

- ``confidence`` (default): persistent connections with the agent's own
  sockets on ``speedtest.congestion_control`` (BBR), warm-up discarded,
  stopped once the rate is known to ±2 % (transfer.py, confident_rate.py);
- ``stable``: the same connections, stopped once two halves of a long stretch
  agree (stable_rate.py); the default before December 2026, kept to compare;
- ``speedtest-cli``: speedtest-cli's own download() and upload(), all bytes
  over all the time, kept to compare with the figures of earlier tools.

Every result names its method (``method`` in the contract): the rule, the
congestion control the agent's sockets used, and the connections.

A failed test is data: it comes back with a ``result`` and ``result_code``
and no figures, never as an exception.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import speedtest

from agent.contract import (
    SPEED_RESULT_CODES,
    ServerKind,
    SpeedMeasurement,
    SpeedMethod,
    SpeedMethodName,
    SpeedResult,
    SpeedServer,
)
from agent.settings import SpeedtestSettings
from agent.speed import congestion
from agent.speed.confident_rate import ConfidentRate
from agent.speed.endpoint import Endpoint, SpeedTestFailed, classify
from agent.speed.latency import Latency, measure_latency
from agent.speed.progress import Progress, SilentProgress
from agent.speed.self_hosted import SelfHostedSpeedtest
from agent.speed.stable_rate import StableRate
from agent.speed.transfer import Direction, StoppingRule, choose_connections, transfer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Figures:
    download_bps: float
    upload_bps: float
    bytes_received: int
    bytes_sent: int
    method: SpeedMethod


class StopFlag:
    """A threading.Event with the ``isSet`` spelling speedtest-cli calls."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def isSet(self) -> bool:  # noqa: N802 - speedtest-cli's name
        return self._event.is_set()


def self_hosted_base(server_url: str) -> str:
    """``http://host:port`` for any URL of a mini server (root or ``.../speedtest/...``)."""
    url = server_url.rstrip("/")
    cut = url.find("/speedtest")
    return url[:cut] if cut > 0 else url


def self_hosted_server(url: str, name: str | None = None) -> SpeedServer:
    """A self-hosted server as results record it; ``id`` is ``name`` or the URL's host."""
    base = self_hosted_base(url)
    parts = urlsplit(base)
    host = (parts.hostname or "server").replace(":", "-").strip("-.") or "self-hosted"
    return SpeedServer(kind=ServerKind.SELF_HOSTED, id=name or host, name=parts.netloc, url=base)


class SpeedTester:
    """Runs speed tests as configured: a self-hosted server, or Ookla's selection."""

    def __init__(self, settings: SpeedtestSettings) -> None:
        self._settings = settings
        self.stop = StopFlag()
        self._method = SpeedMethod(name=SpeedMethodName(settings.method))  # filled in by a test

    def measure(
        self, progress: Progress | None = None, *, max_bytes: int | None = None
    ) -> SpeedMeasurement:
        """One test; ``max_bytes`` caps the data both directions together may use."""
        progress = progress or SilentProgress()
        started = time.monotonic()
        self._method = SpeedMethod(name=SpeedMethodName(self._settings.method))
        candidates = self._self_hosted_candidates()
        server = candidates[0] if candidates else None  # named in a failure before the choice
        moved = [0, 0]
        try:
            tester, server, endpoint = self._prepare(candidates, progress)
            latency = measure_latency(endpoint, timeout_s=self._settings.timeout_s)
            progress.figure(
                "Latency", f"{latency.median_ms:.1f} ms, jitter {latency.jitter_ms:.1f} ms"
            )
            figures = self._transfer(
                tester, endpoint, latency, progress, moved=moved, max_bytes=max_bytes
            )
            measurement = self._success(server, latency, figures, started)
        except SpeedTestFailed as failure:
            measurement = self._failed(
                failure.result, str(failure), server=server, moved=moved, started=started
            )
        except speedtest.SpeedtestException as exc:
            named = _classify_speedtest_error(exc)
            measurement = self._failed(
                named.result, str(named), server=server, moved=moved, started=started
            )
        except Exception as exc:  # failure is data: a bug must not kill the agent's loop
            log.exception("speed test crashed")
            measurement = self._failed(
                SpeedResult.INTERNAL_ERROR,
                f"internal error: {exc!r}",
                server=server,
                moved=moved,
                started=started,
            )
        return measurement

    # -- steps -----------------------------------------------------------

    def _self_hosted_candidates(self) -> list[SpeedServer]:
        urls = self._settings.self_hosted_urls()
        name = self._settings.server_name if len(urls) == 1 else None
        return [self_hosted_server(url, name) for url in urls]

    def _prepare(
        self, candidates: list[SpeedServer], progress: Progress
    ) -> tuple[Any, SpeedServer, Endpoint]:
        timeout = self._settings.timeout_s
        if candidates:
            server = self._closest_self_hosted(candidates, progress)
            tester = SelfHostedSpeedtest(timeout=timeout, shutdown_event=self.stop)
            tester.set_mini_server(server.url)
            if self._settings.method == "speedtest-cli":
                best = tester.get_best_server(tester.servers)  # its transfers need "best"
            else:
                best = tester.servers[0]
        else:
            progress.phase("Finding the best Ookla server")
            try:
                tester = speedtest.Speedtest(secure=True, timeout=timeout, shutdown_event=self.stop)
            except speedtest.ConfigRetrievalError as exc:
                raise classify(exc.args[0], "fetching the speedtest.net configuration") from exc
            try:
                tester.get_servers(
                    servers=self._settings.server_ids or None,
                    exclude=self._settings.exclude_server_ids or None,
                )
            except speedtest.ServersRetrievalError as exc:
                raise classify(exc.args[0], "fetching the speedtest.net server list") from exc
            best = tester.get_best_server()
            server = SpeedServer(
                kind=ServerKind.OOKLA,
                id=str(best["id"]),
                name=f"{best.get('sponsor', '')} ({best.get('name', '')})"[:200],
                url=str(best["url"])[:500],
            )
        return tester, server, Endpoint(str(best["url"]))

    def _closest_self_hosted(
        self, candidates: list[SpeedServer], progress: Progress
    ) -> SpeedServer:
        """The server with the lowest latency that answers; a failure names its cause.

        A short latency probe reaches each server before speedtest-cli does, whose
        own errors ("Failed to connect") would hide whether DNS, the connection,
        HTTP or the server itself is at fault.
        """
        progress.phase(f"Server {candidates[0].name}" if len(candidates) == 1 else "Servers")
        answered: list[tuple[float, SpeedServer]] = []
        failures: list[SpeedTestFailed] = []
        # Choosing needs a few samples each; one server only needs to answer once
        # (each request is a round trip: 0.6 s on a satellite link).
        count = 3 if len(candidates) > 1 else 1
        for candidate in candidates:
            try:
                probe = measure_latency(
                    Endpoint(f"{candidate.url}/speedtest/upload.php"),
                    count=count,
                    timeout_s=self._settings.timeout_s,
                )
            except SpeedTestFailed as failure:
                log.info("speed server %s does not answer: %s", candidate.name, failure)
                failures.append(failure)
                continue
            answered.append((probe.median_ms, candidate))
        if not answered:
            raise failures[0]
        return min(answered, key=lambda pair: pair[0])[1]

    def _rule(self, rtt_s: float) -> StoppingRule:
        if self._settings.method == "stable":
            return StableRate(rtt_s)
        return ConfidentRate(rtt_s)

    def _congestion_control(self) -> str | None:
        """What to ask for on the test's sockets: ``stable`` keeps the system's, as it did."""
        wanted = self._settings.congestion_control
        if self._settings.method == "stable" or wanted == "system":
            return None
        return wanted

    def _transfer(
        self,
        tester: Any,
        endpoint: Endpoint,
        latency: Latency,
        progress: Progress,
        *,
        moved: list[int],
        max_bytes: int | None,
    ) -> _Figures:
        if self._settings.method == "speedtest-cli":
            return self._transfer_speedtest_cli(tester, progress, moved)
        connections = self._settings.connections or choose_connections(latency.rtt_s)
        wanted = self._congestion_control()
        rates = []
        used: str | None = None
        for index, direction in enumerate((Direction.DOWNLOAD, Direction.UPLOAD)):
            progress.phase(direction.value.capitalize())
            cap = None  # a budget is shared: half for the download, the rest for the upload
            if max_bytes is not None:
                cap = max_bytes // 2 if index == 0 else max(1, max_bytes - moved[0])

            def record(count: int, index: int = index) -> None:
                moved[index] = count

            result = transfer(
                direction,
                endpoint,
                rtt_s=latency.rtt_s,
                connections=connections,
                timeout_s=self._settings.timeout_s,
                stop=self.stop,
                progress=progress,
                max_bytes=cap,
                on_moved=record,
                rule=self._rule(latency.rtt_s),
                congestion_control=wanted,
            )
            if direction is Direction.UPLOAD:  # the agent's sockets send only the upload
                used = result.congestion
            if result.bytes_moved == 0:
                raise SpeedTestFailed(SpeedResult.NO_DATA, f"no {direction.value} data moved")
            rates.append(result.verdict.mbps * 1e6)
            progress.figure(direction.value.capitalize(), f"{result.verdict.mbps:.2f} Mbps")
        if wanted and used != wanted:
            log.info(
                "congestion control %s refused on this system, the upload used %s: add it to "
                "net.ipv4.tcp_allowed_congestion_control (the agent's package does)",
                wanted,
                used or "the default",
            )
        self._method = SpeedMethod(
            name=SpeedMethodName(self._settings.method),
            congestion_control=used,
            connections=connections,
        )
        return _Figures(rates[0], rates[1], moved[0], moved[1], self._method)

    def _transfer_speedtest_cli(
        self, tester: Any, progress: Progress, moved: list[int]
    ) -> _Figures:
        progress.phase("Download")
        download_bps = tester.download(callback=_counter(progress))
        moved[0] = int(tester.results.bytes_received)
        if moved[0] == 0:
            raise SpeedTestFailed(SpeedResult.NO_DATA, "no download data moved")
        progress.figure("Download", f"{download_bps / 1e6:.2f} Mbps")
        progress.phase("Upload")
        upload_bps = tester.upload(callback=_counter(progress), pre_allocate=True)
        moved[1] = int(tester.results.bytes_sent)
        if moved[1] == 0:
            raise SpeedTestFailed(SpeedResult.NO_DATA, "no upload data moved")
        progress.figure("Upload", f"{upload_bps / 1e6:.2f} Mbps")
        if self.stop.isSet():
            raise SpeedTestFailed(SpeedResult.CANCELLED, "speed test cancelled")
        # speedtest-cli opens its own sockets: they use the system's default.
        self._method = SpeedMethod(
            name=SpeedMethodName.SPEEDTEST_CLI, congestion_control=congestion.system_default()
        )
        return _Figures(download_bps, upload_bps, moved[0], moved[1], self._method)

    def _success(
        self, server: SpeedServer, latency: Latency, figures: _Figures, started: float
    ) -> SpeedMeasurement:
        download_mbps = round(figures.download_bps / 1e6, 3)
        threshold = self._settings.threshold_mbps
        return SpeedMeasurement(
            result=SpeedResult.SUCCESS,
            result_code=SPEED_RESULT_CODES[SpeedResult.SUCCESS],
            threshold_mbps=threshold,
            download_mbps=download_mbps,
            upload_mbps=round(figures.upload_bps / 1e6, 3),
            latency_ms=latency.median_ms,
            jitter_ms=latency.jitter_ms,
            meets_threshold=download_mbps >= threshold,
            bytes_received=figures.bytes_received,
            bytes_sent=figures.bytes_sent,
            duration_s=round(time.monotonic() - started, 3),
            server=server,
            method=figures.method,
        )

    def _failed(
        self,
        result: SpeedResult,
        message: str,
        *,
        server: SpeedServer | None,
        moved: list[int],
        started: float,
    ) -> SpeedMeasurement:
        return SpeedMeasurement.failed(
            result,
            message,
            threshold_mbps=self._settings.threshold_mbps,
            server=server,
            duration_s=round(time.monotonic() - started, 3),
            bytes_received=moved[0],
            bytes_sent=moved[1],
            method=self._method,
        )


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
