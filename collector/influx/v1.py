"""Writes to InfluxDB 1.x through its ``/write`` endpoint (line protocol, ns precision)."""

from __future__ import annotations

import json
import logging
from urllib.parse import urlencode

import urllib3

from collector.influx import HISTORY, STATE, STATE_DURATION
from collector.influx.errors import InfluxUnavailable, explain
from collector.settings import InfluxSettings

log = logging.getLogger(__name__)


def error_message(body: bytes) -> str:
    """InfluxDB puts its reason in ``{"error": ...}``; fall back to the raw body."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:300]
    if isinstance(decoded, dict):
        return str(decoded.get("error") or decoded.get("message") or decoded)[:300]
    return str(decoded)[:300]


def _statement_error(body: bytes) -> str | None:
    """A /query reply is 200 even when its statement failed; the error is in its result."""
    try:
        results = json.loads(body).get("results") or [{}]
    except (ValueError, AttributeError):
        return None
    error = results[0].get("error")
    return str(error) if error else None


class V1Writer:
    def __init__(self, settings: InfluxSettings) -> None:
        self._settings = settings
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(total=settings.timeout_s), retries=False, maxsize=2
        )
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else ""
            self._headers |= urllib3.make_headers(basic_auth=f"{settings.username}:{password}")
        self._params = {"db": settings.database, "precision": "ns"}
        if settings.retention_policy:
            self._params["rp"] = settings.retention_policy

    def __str__(self) -> str:
        return f"InfluxDB v1 {self._settings.url} database {self._settings.database!r}"

    def write(self, lines: list[str]) -> None:
        body = "\n".join(lines).encode("utf-8")
        reply = self._request("/write", self._params, body)
        if reply.status != 204:
            raise explain(reply.status, error_message(reply.data))

    def ensure_database(self) -> None:
        """``CREATE DATABASE``, its ``history`` and ``state`` policies; a refusal is logged.

        Both statements are idempotent: a policy that exists already (perhaps
        with another duration, see :mod:`collector.retention`) is left alone.
        """
        quoted = self._settings.database.replace("\\", "\\\\").replace('"', '\\"')
        for statement in (
            f'CREATE DATABASE "{quoted}"',
            f'CREATE RETENTION POLICY "{HISTORY}" ON "{quoted}" DURATION INF REPLICATION 1',
            (
                f'CREATE RETENTION POLICY "{STATE}" ON "{quoted}" DURATION {STATE_DURATION} '
                "REPLICATION 1 SHARD DURATION 1h"
            ),
        ):
            reply = self._request("/query", {"q": statement}, b"")
            problem = (
                error_message(reply.data) if reply.status != 200 else _statement_error(reply.data)
            )
            if problem and "already exists" not in problem:
                log.warning(
                    "could not run %s (%s); run it yourself or give an admin user",
                    statement,
                    problem,
                )
                return

    def close(self) -> None:
        self._http.clear()

    def _request(self, path: str, params: dict[str, str], body: bytes) -> urllib3.BaseHTTPResponse:
        url = f"{self._settings.url}{path}?{urlencode(params)}"
        try:
            return self._http.request("POST", url, body=body, headers=self._headers, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxUnavailable(f"cannot reach {self._settings.url}: {exc}") from exc
