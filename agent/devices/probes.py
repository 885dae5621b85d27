"""Active checks: TCP connect (and an optional exchange), HTTP(S), ICMP echo.

Every check is a coroutine bounded by the device's ``timeout_s`` as a whole
(name lookup, connect, TLS, request and reply together), never raises, and
returns an :class:`~agent.devices.state.Outcome` whose ``result`` names what
went wrong. The response time is measured on success only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import icmplib

from agent.contract import DeviceResult
from agent.devices.inventory import CheckKind, DeviceConfig, split_address
from agent.devices.state import Outcome

MAX_BODY_BYTES = 1024 * 1024
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}


class IcmpUnavailable(Exception):
    """This system lets the agent send no ICMP echo; the message says how to allow it."""


def icmp_privileged() -> bool:
    """How icmplib may ping here: False for unprivileged datagram sockets, True for raw.

    Raise :class:`IcmpUnavailable` when neither is allowed.
    """
    for kind, privileged in ((socket.SOCK_DGRAM, False), (socket.SOCK_RAW, True)):
        try:
            socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP).close()
        except PermissionError:
            continue
        return privileged
    raise IcmpUnavailable(
        f"ICMP checks are not allowed for this user (uid {os.getuid()}): allow unprivileged "
        "ping with `sysctl -w net.ipv4.ping_group_range='0 2147483647'` (persist it in "
        "/etc/sysctl.d/), or give the agent CAP_NET_RAW (systemd: AmbientCapabilities="
        "CAP_NET_RAW), or check the device over tcp or http instead"
    )


def icmp_mode(devices: Iterable[DeviceConfig]) -> bool:
    """How these devices' ICMP checks may run (see :func:`icmp_privileged`).

    False when no device is checked over ICMP; raise :class:`IcmpUnavailable`,
    naming the devices, when the system allows no ICMP at all.
    """
    names = [device.id for device in devices if device.check is CheckKind.ICMP]
    if not names:
        return False
    try:
        return icmp_privileged()
    except IcmpUnavailable as exc:
        raise IcmpUnavailable(f"devices {', '.join(names)}: {exc}") from exc


@functools.cache
def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """One context per CA file, shared by the devices: each holds its CAs in memory."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


class Prober:
    """Runs one device's check; TLS settings are prepared once, not per check."""

    def __init__(self, device: DeviceConfig, *, privileged_icmp: bool = False) -> None:
        self.device = device
        self._privileged = privileged_icmp
        self._tls: ssl.SSLContext | bool = False  # plain http://: no TLS to set up
        if device.check is CheckKind.HTTP and (device.url or "").lower().startswith("https:"):
            self._tls = _tls_context(device.ca_file) if device.verify_tls is not False else False

    async def check(self) -> Outcome:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.device.timeout_s):
                outcome = await self._run()
        except TimeoutError:
            return Outcome(DeviceResult.TIMEOUT, detail=f"no answer in {self.device.timeout_s:g} s")
        except Exception as exc:  # noqa: BLE001 - a check reports, it never raises
            return _classify(exc)
        if outcome.ok and outcome.response_ms is None:
            return Outcome(outcome.result, _ms_since(started))
        return outcome

    async def _run(self) -> Outcome:
        check = self.device.check
        if check is CheckKind.TCP:
            return await self._tcp()
        if check is CheckKind.HTTP:
            return await self._http()
        if check is CheckKind.ICMP:
            return await self._icmp()
        raise ValueError(f"{check} devices are not probed")

    async def _tcp(self) -> Outcome:
        assert self.device.address is not None  # noqa: S101 - checked by DeviceConfig
        host, port = split_address(self.device.address)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            if self.device.send is not None:
                writer.write(_unescape(self.device.send))
                await writer.drain()
            if self.device.expect is not None:
                return await _expect(reader, _unescape(self.device.expect))
            return Outcome(DeviceResult.SUCCESS)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _http(self) -> Outcome:
        assert self.device.url is not None  # noqa: S101 - checked by DeviceConfig
        limit = self.device.timeout_s
        async with httpx.AsyncClient(verify=self._tls, timeout=limit, trust_env=False) as client:
            return await self._fetch(client, self.device.url)

    async def _fetch(self, client: httpx.AsyncClient, url: str) -> Outcome:
        started = time.perf_counter()  # the request's own time, not the client's set-up
        async with client.stream("GET", url, headers={"Connection": "close"}) as reply:
            wanted = self.device.expect_status
            if (wanted and reply.status_code not in wanted) or (
                not wanted and not 200 <= reply.status_code < 400
            ):
                expected = ", ".join(map(str, wanted)) if wanted else "2xx or 3xx"
                return Outcome(
                    DeviceResult.STATUS_MISMATCH,
                    detail=f"HTTP {reply.status_code}, expected {expected}",
                )
            if self.device.expect_body is None:
                return Outcome(DeviceResult.SUCCESS, _ms_since(started))
            body = b""
            async for chunk in reply.aiter_bytes():
                body += chunk
                if len(body) >= MAX_BODY_BYTES:
                    break
            if self.device.expect_body not in body.decode("utf-8", "replace"):
                return Outcome(
                    DeviceResult.BODY_MISMATCH,
                    detail=f"{self.device.expect_body!r} not in the first {len(body)} bytes",
                )
            return Outcome(DeviceResult.SUCCESS, _ms_since(started))

    async def _icmp(self) -> Outcome:
        assert self.device.host is not None  # noqa: S101 - checked by DeviceConfig
        host = await icmplib.async_ping(
            self.device.host,
            count=1,
            timeout=self.device.timeout_s,
            privileged=self._privileged,
        )
        if host.is_alive:
            return Outcome(DeviceResult.SUCCESS)
        return Outcome(DeviceResult.TIMEOUT, detail=f"no echo reply from {host.address}")


async def _expect(reader: asyncio.StreamReader, wanted: bytes) -> Outcome:
    received = b""
    while wanted not in received:
        chunk = await reader.read(4096)
        if not chunk:
            return Outcome(
                DeviceResult.REPLY_MISMATCH,
                detail=f"closed after {len(received)} bytes without {wanted!r}",
            )
        received = (received + chunk)[-(64 * 1024) :]
    return Outcome(DeviceResult.SUCCESS)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _unescape(text: str) -> bytes:
    r"""Bytes to send or expect: ``\n``, ``\r``, ``\x00`` escapes allowed in the config."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _classify(exc: Exception) -> Outcome:  # noqa: PLR0911, PLR0912 - one answer per kind of failure
    detail = f"{type(exc).__name__}: {exc}"[:200]
    for cause in _chain(exc):
        if isinstance(cause, socket.gaierror | icmplib.NameLookupError):
            return Outcome(DeviceResult.DNS_ERROR, detail=detail)
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            return Outcome(DeviceResult.TLS_ERROR, detail=detail)
        if isinstance(cause, ConnectionRefusedError):
            return Outcome(DeviceResult.CONNECTION_REFUSED, detail=detail)
        if isinstance(cause, ConnectionResetError | BrokenPipeError | asyncio.IncompleteReadError):
            return Outcome(DeviceResult.CONNECTION_RESET, detail=detail)
        if isinstance(cause, TimeoutError | httpx.TimeoutException):
            return Outcome(DeviceResult.TIMEOUT, detail=detail)
        if isinstance(cause, OSError) and cause.errno in _UNREACHABLE:
            return Outcome(DeviceResult.UNREACHABLE, detail=detail)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return Outcome(DeviceResult.PROTOCOL_ERROR, detail=detail)
    if isinstance(exc, httpx.ConnectError):
        message = str(exc).lower()
        if "name" in message and ("resolution" in message or "known" in message):
            return Outcome(DeviceResult.DNS_ERROR, detail=detail)
        if "refused" in message:
            return Outcome(DeviceResult.CONNECTION_REFUSED, detail=detail)
        return Outcome(DeviceResult.UNREACHABLE, detail=detail)
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return Outcome(DeviceResult.CONNECTION_RESET, detail=detail)
    if isinstance(exc, OSError | httpx.HTTPError | icmplib.ICMPLibError):
        return Outcome(DeviceResult.UNREACHABLE, detail=detail)
    return Outcome(DeviceResult.INTERNAL_ERROR, detail=detail)
