"""One direction of a speed test: several persistent connections, sampled every 100 ms.

Each connection is an HTTP/1.1 keep-alive stream that downloads
``random4000x4000.jpg`` (or uploads bodies) again and again, so TCP warms up
once per connection instead of once per file as with speedtest-cli.
An upload connection's bodies double from 4 MB to 64 MB: after each body it
waits a round trip for the server's answer, sending nothing, and at 300 Mbps
on a 600 ms link 4 MB bodies kept each connection idle a quarter of the time
(the test read 81-91 % of the link). A server that refuses the larger bodies
(HTTP 413, or hanging up on them) keeps the connection at the largest it took.
Downloads count the bytes read; uploads count the bytes the server's TCP
acknowledged (``tcpi_bytes_acked``), not the bytes handed to the kernel,
which would run ahead by a socket buffer. :class:`StableRate` decides when
the rate is stable.

Those counts stall on a lossy link: a lost segment holds back everything
behind it on its connection for a round trip (1.2 s on a satellite link with
its retransmission), then it all arrives at once. The link itself went on
carrying the other segments. For a rule that judges how steady the rate is
(``ConfidentRate``), the streams also count *segments the link delivered*,
from the kernel: data segments received (``tcpi_data_segs_in``) for a
download, data segments the peer acknowledged or selectively acknowledged
(``tcpi_delivered``) for an upload, each times the segment size. The bytes a
test reports as moved (and the data budget) stay the application's count.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from agent.contract import SpeedResult
from agent.speed import congestion
from agent.speed.endpoint import Endpoint, SpeedTestFailed, classify
from agent.speed.progress import Progress
from agent.speed.stable_rate import StableRate, StableRateVerdict

SAMPLE_EVERY_S = 0.1
UPLOAD_BODY_BYTES = 4 * 1024 * 1024  # an upload connection's first body; the random block
MAX_UPLOAD_BODY_BYTES = 64 * 1024 * 1024  # the speed server's limit, and the nginx recipe's
_READ_CHUNK = 64 * 1024
# Offsets in Linux's struct tcp_info (include/uapi/linux/tcp.h).
_TCP_INFO_SND_MSS = 16
_TCP_INFO_RCV_MSS = 20
_TCP_INFO_BYTES_ACKED = 120  # u64, Linux 4.1+
_TCP_INFO_DATA_SEGS_IN = 152  # u32, Linux 4.6+
_TCP_INFO_DELIVERED = 192  # u32, Linux 4.18+
_TCP_INFO_LENGTH = 256
# A stream's own socket timeout only guards against a dead peer: one upload body
# on a slow share of a link may take longer than the test's timeout to be answered.
# Stalls are caught for the transfer as a whole (nothing moved for timeout_s).
STREAM_SOCKET_TIMEOUT_S = 120.0


class Direction(StrEnum):
    DOWNLOAD = "download"
    UPLOAD = "upload"


class StopSignal(Protocol):
    def isSet(self) -> bool: ...  # noqa: N802 - speedtest-cli's spelling, shared with it


class StoppingRule(Protocol):
    """Decides, from the bytes moved so far, when a direction has its figure."""

    @property
    def max_duration_s(self) -> float: ...
    @property
    def counts_delivered(self) -> bool: ...  # judge segments delivered, not bytes in order
    def add(self, at_s: float, total_bytes: int) -> None: ...
    def verdict(self) -> StableRateVerdict | None: ...
    def final(self) -> StableRateVerdict: ...


@dataclass(frozen=True)
class TransferResult:
    verdict: StableRateVerdict
    bytes_moved: int
    duration_s: float
    connections: int
    congestion: str | None  # the algorithm the sending sockets used, where known


def choose_connections(rtt_s: float) -> int:
    """16 connections on any link but a short one, 8 there.

    Each TCP connection is held to about its window per round trip (a few MB
    with default buffers: ~40 Mbps at 600 ms), and on a lossy link each one's
    rate falls with the round trip; many connections together fill the link.
    On short links 8 already do, with less work for a small computer.
    """
    return 8 if rtt_s < 0.020 else 16


def _tcp_info(sock: socket.socket, needed: int) -> bytes | None:
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LENGTH)
    except (OSError, AttributeError):
        return None
    return info if len(info) >= needed else None


# A kernel count read from one socket: (units so far, bytes per unit now), None where unknown.
Reading = tuple[int, int] | None


def bytes_acked(sock: socket.socket) -> Reading:
    """What the peer acknowledged on ``sock``, in bytes, from the kernel."""
    info = _tcp_info(sock, _TCP_INFO_BYTES_ACKED + 8)
    if info is None:
        return None
    return max(0, int(struct.unpack_from("Q", info, _TCP_INFO_BYTES_ACKED)[0]) - 1), 1  # the SYN


def delivered_in(sock: socket.socket) -> Reading:
    """The data segments that reached ``sock``, in order or not, and the segment size."""
    info = _tcp_info(sock, _TCP_INFO_DATA_SEGS_IN + 4)
    if info is None:
        return None
    (mss,) = struct.unpack_from("I", info, _TCP_INFO_RCV_MSS)
    (segments,) = struct.unpack_from("I", info, _TCP_INFO_DATA_SEGS_IN)
    return int(segments), int(mss)


def delivered_out(sock: socket.socket) -> Reading:
    """Data segments ``sock``'s peer acknowledged or selectively acknowledged, and their size."""
    info = _tcp_info(sock, _TCP_INFO_DELIVERED + 4)
    if info is None:
        return None
    (mss,) = struct.unpack_from("I", info, _TCP_INFO_SND_MSS)
    (segments,) = struct.unpack_from("I", info, _TCP_INFO_DELIVERED)
    return int(segments), int(mss)


class SocketCount:
    """A per-socket kernel count in bytes, summed over the sockets one stream used in turn.

    Segment counts are turned into bytes one reading at a time, each new segment
    at the size in force when it was counted: the kernel's estimate of the size
    changes during a connection (the receiver's ``tcpi_rcv_mss`` shrinks when two
    shorter segments arrive in a row), and the count times the latest size would
    fall, which once made a 13 Gbps loopback download read -2787 Mbps.
    """

    def __init__(self, read: Callable[[socket.socket], Reading]) -> None:
        self._read = read
        self._sock: socket.socket | None = None  # the socket last read
        self._units = 0  # the count on _sock, as last read
        self._bytes = 0  # bytes over this and earlier sockets: it never falls

    def update(self, sock: socket.socket | None) -> int:
        if sock is not self._sock:  # http.client reconnected: the new socket counts from 0
            self._sock, self._units = sock, 0
        reading = self._read(sock) if sock is not None else None
        if reading is not None:
            units, unit_bytes = reading
            self._bytes += max(0, units - self._units) * unit_bytes
            self._units = max(units, self._units)
        return self._bytes


class Allowance:
    """Bytes a transfer may still move, shared by its streams (None: no limit).

    Each stream takes bytes before it reads or sends them, so a data budget
    holds exactly, whatever the speed, instead of being checked between samples.
    """

    def __init__(self, limit: int | None) -> None:
        self._left = limit
        self._lock = threading.Lock()

    @property
    def spent(self) -> bool:
        return self._left is not None and self._left <= 0

    def take(self, wanted: int) -> int:
        with self._lock:
            if self._left is None:
                return wanted
            granted = min(wanted, self._left)
            self._left -= granted
            return granted

    def give_back(self, unused: int) -> None:
        if unused > 0:
            with self._lock:
                if self._left is not None:
                    self._left += unused


class _Stream(threading.Thread):
    """One persistent connection moving data in one direction until stopped."""

    def __init__(
        self,
        endpoint: Endpoint,
        direction: Direction,
        allowance: Allowance,
        body: memoryview,
        congestion_control: str | None = None,
    ) -> None:
        super().__init__(daemon=True, name=f"speed-{direction.value}")
        self._body = body
        self._congestion_control = congestion_control
        self.congestion: str | None = None  # in force on this stream's socket
        self._endpoint = endpoint
        self._direction = direction
        self._allowance = allowance
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None
        self._done = 0  # downloads: bytes read
        self._acked = SocketCount(bytes_acked)  # uploads
        upload = direction is Direction.UPLOAD
        self._delivered = SocketCount(delivered_out if upload else delivered_in)
        self._body_bytes = UPLOAD_BODY_BYTES  # the next upload body's size
        self._largest_body = MAX_UPLOAD_BODY_BYTES  # lowered when the server refuses one
        self._accepted = 0  # the largest body the server answered 200
        self.error: SpeedTestFailed | None = None

    def _socket(self) -> socket.socket | None:
        return self._connection.sock if self._connection else None

    def moved(self) -> int:
        """Bytes read (download) or acknowledged in order (upload)."""
        if self._direction is Direction.DOWNLOAD:
            return self._done
        with self._lock:
            return self._acked.update(self._socket())

    def delivered(self) -> int:
        """Bytes of the segments the link delivered, whatever their order (see the module)."""
        with self._lock:
            return self._delivered.update(self._socket())

    def stop(self) -> None:
        self.moved()  # the last counts, before the socket goes away
        self.delivered()
        self._stopped.set()
        with self._lock:
            sock = self._connection.sock if self._connection else None
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed by the peer
                # Abort, do not close gracefully: a graceful close still sends what the
                # socket holds (megabytes on a long link), after the test and uncounted.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        doing = f"{self._direction.value} from {self._endpoint.directory}"
        try:
            connection = self._endpoint.connection(STREAM_SOCKET_TIMEOUT_S)
            self._connect(connection)
            while not self._stopped.is_set() and not self._allowance.spent:
                if self._direction is Direction.DOWNLOAD:
                    self._download_once(connection)
                else:
                    self._upload_once(connection)
        except SpeedTestFailed as failure:
            if not self._stopped.is_set():
                self.error = failure
        except (OSError, http.client.HTTPException) as exc:
            if not self._stopped.is_set():
                self.error = classify(exc, doing)
        finally:
            self.moved()  # the last counts, before the socket closes
            self.delivered()
            with self._lock:
                if self._connection is not None:
                    self._connection.close()

    def _connect(self, connection: http.client.HTTPConnection) -> None:
        connection.connect()
        if connection.sock is not None:  # the agent sends uploads: its choice governs them
            self.congestion = congestion.choose(connection.sock, self._congestion_control)
        with self._lock:
            self._connection = connection

    def _download_once(self, connection: http.client.HTTPConnection) -> None:
        connection.request("GET", f"{self._endpoint.download_path}?x={time.time_ns()}")
        reply = connection.getresponse()
        if reply.status != 200:
            raise SpeedTestFailed(
                SpeedResult.HTTP_ERROR,
                f"download from {self._endpoint.directory}: HTTP {reply.status} {reply.reason}",
            )
        while not self._stopped.is_set():
            granted = self._allowance.take(_READ_CHUNK)
            if not granted:
                break
            # read1 returns what has arrived; readinto would wait to fill its buffer,
            # and the count would move in steps too coarse to time a slow link.
            read = len(reply.read1(granted))
            self._allowance.give_back(granted - read)
            if not read:
                reply.read()  # http.client closes a response only on read(), not read1()
                break
            self._done += read

    def _upload_once(self, connection: http.client.HTTPConnection) -> None:
        size = self._body_bytes
        status: int | None = None  # None: the server hung up on the body
        reason = "no answer"
        try:
            connection.request(
                "POST",
                f"{self._endpoint.upload_path}?x={time.time_ns()}",
                body=self._upload_body(size),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
            reply = connection.getresponse()
            reply.read()
            status, reason = reply.status, reply.reason
        except (OSError, http.client.HTTPException):
            if self._stopped.is_set() or not self._accepted or size <= self._accepted:
                raise
        if status == 200:
            self._accepted = max(self._accepted, size)
            self._body_bytes = min(size * 2, self._largest_body)
        elif self._accepted and size > self._accepted and status in (None, 413):
            # The server's limit lies between: stay at the largest body it took.
            self._largest_body = self._body_bytes = self._accepted
            connection.close()
            self._connect(connection)
        else:
            raise SpeedTestFailed(
                SpeedResult.HTTP_ERROR,
                f"upload to {self._endpoint.directory}: HTTP {status} {reason}",
            )

    def _upload_body(self, size: int) -> Iterator[memoryview]:
        """``size`` bytes of the random block repeated, each piece taken from the allowance.

        Where the allowance runs out the body stops short; the server then waits
        for the rest until the transfer, its data spent, stops the stream.
        """
        left = size
        while left > 0 and not self._stopped.is_set():
            granted = self._allowance.take(min(left, len(self._body)))
            if not granted:
                return
            yield self._body[:granted]
            left -= granted


def transfer(
    direction: Direction,
    endpoint: Endpoint,
    *,
    rtt_s: float,
    connections: int,
    timeout_s: float,
    stop: StopSignal,
    progress: Progress,
    max_bytes: int | None = None,
    on_moved: Callable[[int], None] | None = None,
    rule: StoppingRule | None = None,
    congestion_control: str | None = None,
    on_sample: Callable[[float, int, int], None] | None = None,
) -> TransferResult:
    """Move data until ``rule`` has its figure, time is up, or ``max_bytes`` moved; or fail.

    ``rule`` defaults to :class:`StableRate`. ``congestion_control`` is asked for
    on every socket (uploads: the agent sends); the result names what was used.
    ``on_moved`` learns the bytes moved even when the transfer fails, so that a
    failed test still reports (and the data budget still counts) what it used.
    ``on_sample`` sees every sample: seconds, bytes moved, bytes delivered.
    """
    rate = rule if rule is not None else StableRate(rtt_s)
    allowance = Allowance(max_bytes)
    # Random, so that no compression on the path inflates the upload; made per test
    # and shared by the streams, so that an idle agent does not hold it.
    body = memoryview(os.urandom(UPLOAD_BODY_BYTES if direction is Direction.UPLOAD else 0))
    streams = [
        _Stream(endpoint, direction, allowance, body, congestion_control)
        for _ in range(connections)
    ]
    started = time.monotonic()
    for stream in streams:
        stream.start()
    last_progress_at, last_total = started, 0
    try:
        while True:
            time.sleep(SAMPLE_EVERY_S)
            now = time.monotonic()
            elapsed = now - started
            total = sum(stream.moved() for stream in streams)
            delivered = sum(stream.delivered() for stream in streams)
            if on_sample is not None:
                on_sample(elapsed, total, delivered)
            # Where the kernel keeps no delivery counts, the rule judges what moved.
            rate.add(elapsed, delivered if rate.counts_delivered and delivered else total)
            progress.step(
                elapsed, rate.max_duration_s, f"{total * 8 / max(elapsed, 1e-3) / 1e6:.1f} Mbps"
            )
            if total > last_total:
                last_progress_at, last_total = now, total
            if stop.isSet():
                raise SpeedTestFailed(SpeedResult.CANCELLED, "speed test cancelled")
            if verdict := rate.verdict():
                break
            if elapsed >= rate.max_duration_s or allowance.spent:
                verdict = rate.final()
                break
            _check_streams(streams, total, now - last_progress_at, timeout_s, endpoint)
    finally:
        for stream in streams:
            stream.stop()
        for stream in streams:
            stream.join(timeout=timeout_s)
        moved = sum(stream.moved() for stream in streams)
        if on_moved is not None:
            on_moved(moved)
    used = next((s.congestion for s in streams if s.congestion is not None), None)
    return TransferResult(verdict, moved, time.monotonic() - started, connections, used)


def _check_streams(
    streams: list[_Stream], total: int, stalled_s: float, timeout_s: float, endpoint: Endpoint
) -> None:
    """Fail when every connection died, or nothing moved for ``timeout_s``."""
    failed = [s.error for s in streams if s.error is not None and not s.is_alive()]
    if len(failed) == len(streams):
        first = failed[0]
        if (
            total > 0
            and first is not None
            and first.result
            in (
                SpeedResult.TIMEOUT,
                SpeedResult.CONNECTION_FAILED,
            )
        ):
            raise SpeedTestFailed(SpeedResult.INTERRUPTED, f"link lost mid-test: {first}")
        raise first if first is not None else SpeedTestFailed(SpeedResult.NO_DATA, "no data")
    if stalled_s >= timeout_s:
        if total == 0:
            raise SpeedTestFailed(
                SpeedResult.TIMEOUT, f"no data from {endpoint.directory} in {timeout_s:g} s"
            )
        raise SpeedTestFailed(
            SpeedResult.INTERRUPTED,
            f"transfer stalled mid-test (link lost, or the server stopped): "
            f"no data for {timeout_s:g} s",
        )
