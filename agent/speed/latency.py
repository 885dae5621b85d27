"""Latency and jitter, measured for real against the chosen server.

One connection is opened first (its handshake is not counted), then
``count`` small requests of ``latency.txt`` follow on it, one at a time:
each takes one round trip. Latency is their median; jitter is the mean
difference between consecutive samples (as Ookla and RFC 3550 define it).
On a long link the samples stop after ``within_s`` once there are
``MIN_SAMPLES``: 10 round trips of a satellite link would take 6 s.
"""

from __future__ import annotations

import http.client
import itertools
import statistics
import time
from dataclasses import dataclass

from agent.contract import SpeedResult
from agent.speed.endpoint import Endpoint, SpeedTestFailed, classify


@dataclass(frozen=True)
class Latency:
    median_ms: float
    jitter_ms: float
    samples_ms: tuple[float, ...]

    @property
    def rtt_s(self) -> float:
        return self.median_ms / 1000


MIN_SAMPLES = 5


def measure_latency(
    endpoint: Endpoint, *, count: int = 10, timeout_s: float = 10, within_s: float = 3.0
) -> Latency:
    connection = endpoint.connection(timeout_s)
    samples: list[float] = []
    try:
        connection.connect()
        first = time.monotonic()
        for i in range(count + 1):
            if len(samples) >= MIN_SAMPLES and time.monotonic() - first >= within_s:
                break
            started = time.monotonic()
            connection.request("GET", f"{endpoint.latency_path}?x={time.time_ns()}.{i}")
            reply = connection.getresponse()
            body = reply.read(64)
            reply.read()
            took_ms = (time.monotonic() - started) * 1000
            if reply.status != 200:
                raise SpeedTestFailed(
                    SpeedResult.HTTP_ERROR,
                    f"latency probe to {endpoint.directory}: HTTP {reply.status} {reply.reason}",
                )
            if not body.startswith(b"test=test"):
                raise SpeedTestFailed(
                    SpeedResult.INVALID_SERVER,
                    f"{endpoint.directory} is not a speed server: "
                    "latency.txt did not say test=test",
                )
            if i > 0:  # the first request warms the connection up
                samples.append(took_ms)
    except (OSError, http.client.HTTPException) as exc:
        raise classify(exc, f"latency probe to {endpoint.directory}") from exc
    finally:
        connection.close()
    steps = [abs(b - a) for a, b in itertools.pairwise(samples)]
    jitter = statistics.fmean(steps) if steps else 0.0  # one sample: a reachability probe
    return Latency(
        median_ms=round(statistics.median(samples), 3),
        jitter_ms=round(jitter, 3),
        samples_ms=tuple(samples),
    )
