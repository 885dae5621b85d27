"""InfluxQL over the ``/query`` endpoint: InfluxDB 1.x, and 2.x/3.x through their v1 API.

>>> InfluxQL(settings).query('SELECT last("download_mbps") FROM "speed"')  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import urllib3

from collector.device_book import KnownDevice
from collector.influx.errors import InfluxError, InfluxUnavailable
from collector.influx.v1 import error_message
from collector.settings import InfluxSettings


class InfluxQueryError(InfluxError):
    """The query was refused: a syntax error, an unknown database, bad credentials."""


@dataclass(frozen=True)
class Series:
    name: str
    columns: list[str]
    values: list[list[Any]]
    tags: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """Each value row as a dict of column to value, tags included."""
        return [self.tags | dict(zip(self.columns, row, strict=True)) for row in self.values]


# Rows per chunk of a streamed answer (InfluxDB 1.x ``chunked=true``): what a long read
# (the state keeper's after a backlog) holds at once, instead of its whole answer.
CHUNK_ROWS = 5000


class InfluxQL:
    def __init__(self, settings: InfluxSettings) -> None:
        self._settings = settings
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(total=settings.timeout_s), retries=False, maxsize=2
        )
        self._headers: dict[str, str] = {}
        if settings.api == "v2" and settings.token is not None:
            self._headers["Authorization"] = f"Token {settings.token.get_secret_value()}"
        elif settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else ""
            self._headers |= urllib3.make_headers(basic_auth=f"{settings.username}:{password}")

    def query(self, influxql: str, *, epoch: str | None = None) -> list[Series]:
        """Run one or more statements; return every series of every statement, in order."""
        reply = self._post(self._params(influxql, epoch))
        if reply.status != 200:
            raise InfluxQueryError(f"HTTP {reply.status}: {error_message(reply.data)}")
        return list(_series_of(json.loads(reply.data)))

    def stream(self, influxql: str, *, epoch: str | None = None) -> Iterator[Series]:
        """As :meth:`query`, but the series come as InfluxDB sends them, ``CHUNK_ROWS`` rows
        at most at a time (one series may come in several parts, in order): a reader that
        folds rows as they come holds one chunk, not the whole answer.

        InfluxDB 1.x only (``chunked=true``); with ``api = "v2"`` the whole answer is read.
        """
        if self._settings.api != "v1":
            yield from self.query(influxql, epoch=epoch)
            return
        params = self._params(influxql, epoch) | {"chunked": "true", "chunk_size": str(CHUNK_ROWS)}
        reply = self._post(params, preload_content=False)
        try:
            if reply.status != 200:
                raise InfluxQueryError(f"HTTP {reply.status}: {error_message(reply.data)}")
            pending = b""
            try:
                for data in reply.stream(2**16):
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield from _series_of(json.loads(line))
            except urllib3.exceptions.HTTPError as exc:
                raise InfluxUnavailable(f"cannot read from {self._settings.url}: {exc}") from exc
            if pending.strip():
                yield from _series_of(json.loads(pending))
        finally:
            reply.release_conn()

    def _params(self, influxql: str, epoch: str | None) -> dict[str, str]:
        params = {"db": self._settings.database, "q": influxql}
        if self._settings.retention_policy:
            params["rp"] = self._settings.retention_policy
        if epoch:
            params["epoch"] = epoch
        return params

    def _post(self, params: dict[str, str], *, preload_content: bool = True) -> Any:
        try:
            return self._http.request(
                "POST",
                f"{self._settings.url}/query",
                body=urlencode(params),
                headers=self._headers | {"Content-Type": "application/x-www-form-urlencoded"},
                preload_content=preload_content,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxUnavailable(f"cannot reach {self._settings.url}: {exc}") from exc

    def close(self) -> None:
        self._http.clear()


def _series_of(document: dict[str, Any]) -> Iterator[Series]:
    for result in document.get("results", []):
        if "error" in result:
            raise InfluxQueryError(result["error"])
        for s in result.get("series", []):
            yield Series(
                name=s.get("name", ""),
                columns=s["columns"],
                values=s.get("values", []),
                tags=s.get("tags") or {},
            )


def quote_literal(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def influx_lookup(ql: InfluxQL, days: int = 30) -> Callable[[str], list[KnownDevice]]:
    """The devices a school reported within ``days``, as stored in the ``device`` measurement."""

    def lookup(school_id: str) -> list[KnownDevice]:
        series = ql.query(
            'SELECT last("state_code") FROM "device" '  # noqa: S608 - the id is quoted
            f'WHERE "school_id" = {quote_literal(school_id)} AND time > now() - {days}d '
            'GROUP BY "agent_id", "device_id", "kind"'
        )
        return [
            KnownDevice(s.tags["agent_id"], s.tags["device_id"], s.tags["kind"])
            for s in series
            if {"agent_id", "device_id", "kind"} <= s.tags.keys()
        ]

    return lookup
