"""Writes to InfluxDB 2.x, 3.x and Cloud through influxdb-client's ``/api/v2/write``.

``influx.database`` is the bucket. InfluxDB 1.8+ also serves this endpoint
(bucket ``database/retention-policy``, token ``user:password``, org ``-``).
"""

from __future__ import annotations

import urllib3
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from collector.influx.errors import InfluxUnavailable, explain
from collector.influx.v1 import error_message
from collector.settings import InfluxSettings


class V2Writer:
    def __init__(self, settings: InfluxSettings) -> None:
        if settings.token is None or settings.org is None:
            raise ValueError("influx.token and influx.org are required for api v2")
        self._settings = settings
        self._org = settings.org
        self._bucket = settings.database
        if settings.retention_policy:
            self._bucket += "/" + settings.retention_policy
        self._client = InfluxDBClient(
            url=settings.url,
            token=settings.token.get_secret_value(),
            org=self._org,
            timeout=int(settings.timeout_s * 1000),
            retries=False,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def __str__(self) -> str:
        return f"InfluxDB v2 {self._settings.url} bucket {self._bucket!r}"

    def write(self, lines: list[str]) -> None:
        try:
            self._write_api.write(
                bucket=self._bucket,
                org=self._org,
                record=lines,
                write_precision=WritePrecision.NS,  # type: ignore[arg-type]  # a str enum
            )
        except ApiException as exc:
            body = exc.body.encode() if isinstance(exc.body, str) else (exc.body or b"")
            raise explain(int(exc.status or 0), error_message(body) or str(exc.reason)) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise InfluxUnavailable(f"cannot reach {self._settings.url}: {exc}") from exc

    def ensure_database(self) -> None:
        """Buckets are created by the InfluxDB administrator, not by the collector."""

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]
