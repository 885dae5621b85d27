"""InfluxQL over the ``/query`` endpoint: InfluxDB 1.x, and 2.x/3.x through their v1 API.

>>> InfluxQL(settings).query('SELECT last("download_mbps") FROM "speed"')  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
        params = {"db": self._settings.database, "q": influxql}
        if self._settings.retention_policy:
            params["rp"] = self._settings.retention_policy
        if epoch:
            params["epoch"] = epoch
        url = f"{self._settings.url}/query"
        try:
            reply = self._http.request(
                "POST",
                url,
                body=urlencode(params),
                headers=self._headers | {"Content-Type": "application/x-www-form-urlencoded"},
            )
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxUnavailable(f"cannot reach {self._settings.url}: {exc}") from exc
        if reply.status != 200:
            raise InfluxQueryError(f"HTTP {reply.status}: {error_message(reply.data)}")
        document = json.loads(reply.data)
        found: list[Series] = []
        for result in document.get("results", []):
            if "error" in result:
                raise InfluxQueryError(result["error"])
            found.extend(
                Series(
                    name=s.get("name", ""),
                    columns=s["columns"],
                    values=s.get("values", []),
                    tags=s.get("tags") or {},
                )
                for s in result.get("series", [])
            )
        return found

    def close(self) -> None:
        self._http.clear()


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
