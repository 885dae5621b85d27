"""A shaped link between a server and a client, built from network namespaces.

    server ns            middle ns                        client ns
    [srv0] ══ veth ══ [mid0] ─ delay line ─ [mid1] ══ veth ══ [cli0]
    10.77.0.1   tbf rate on srv0 (download) and on cli0 (upload)   10.77.0.2

Offloads are off on every veth end, so frames cross whole with real
checksums; the delay line (delay_line.py) adds the round trip and the loss.
Before a link is used, its round trip is measured with TCP connects and must
match what was asked. Needs root, iproute2 and ethtool. Every name carries a
random suffix, so links never collide; everything is removed on exit.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from localstack import find

DELAY_LINE = Path(__file__).with_name("delay_line.py")
SERVER_IP, CLIENT_IP = "10.77.0.1", "10.77.0.2"
RTT_CHECK_PORT = 9


class LinkError(Exception):
    """The link could not be built or does not behave as asked."""


@dataclass(frozen=True)
class LinkShape:
    rate_mbps: float
    rtt_ms: float
    loss: float = 0.0

    def __str__(self) -> str:
        return f"{self.rate_mbps:g} Mbps, {self.rtt_ms:g} ms, {self.loss * 100:g} % loss"


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LinkError(f"{' '.join(argv)}: {result.stderr.strip()}")


class ShapedLink:
    def __init__(self, shape: LinkShape) -> None:
        self.shape = shape
        suffix = uuid.uuid4().hex[:6]
        self.server_ns, self.middle_ns, self.client_ns = (
            f"sl{suffix}-srv",
            f"sl{suffix}-mid",
            f"sl{suffix}-cli",
        )
        self._devices = {
            "srv": f"s{suffix}",
            "mid0": f"m{suffix}a",
            "mid1": f"m{suffix}b",
            "cli": f"c{suffix}",
        }
        self._delay_line: subprocess.Popen[bytes] | None = None
        self.measured_rtt_ms: float | None = None

    # -- building ---------------------------------------------------------

    def __enter__(self) -> ShapedLink:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _build(self) -> None:
        ethtool = find("ethtool")
        if ethtool is None:
            raise LinkError("ethtool is missing; deploy/setup.sh --dev installs it")
        d = self._devices
        for ns in (self.server_ns, self.middle_ns, self.client_ns):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run(
            "ip",
            "link",
            "add",
            d["srv"],
            "netns",
            self.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            d["mid0"],
            "netns",
            self.middle_ns,
        )
        _run(
            "ip",
            "link",
            "add",
            d["cli"],
            "netns",
            self.client_ns,
            "type",
            "veth",
            "peer",
            "name",
            d["mid1"],
            "netns",
            self.middle_ns,
        )
        _run("ip", "-n", self.server_ns, "addr", "add", f"{SERVER_IP}/24", "dev", d["srv"])
        _run("ip", "-n", self.client_ns, "addr", "add", f"{CLIENT_IP}/24", "dev", d["cli"])
        ends = [
            (self.server_ns, d["srv"]),
            (self.middle_ns, d["mid0"]),
            (self.middle_ns, d["mid1"]),
            (self.client_ns, d["cli"]),
        ]
        for ns, device in ends:
            _run(
                "ip",
                "netns",
                "exec",
                ns,
                ethtool,
                "-K",
                device,
                "tso",
                "off",
                "gso",
                "off",
                "gro",
                "off",
                "tx",
                "off",
                "rx",
                "off",
            )
            _run("ip", "-n", ns, "link", "set", device, "up")
        self._shape(self.server_ns, d["srv"])
        self._shape(self.client_ns, d["cli"])
        self._delay_line = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.middle_ns,
                sys.executable,
                str(DELAY_LINE),
                d["mid0"],
                d["mid1"],
                "--delay-ms",
                str(self.shape.rtt_ms / 2),
                "--loss",
                str(self.shape.loss),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.measured_rtt_ms = self._verify_rtt()

    def _shape(self, ns: str, device: str) -> None:
        """tbf at ``rate_mbps``, a burst of 4 ms, and a bottleneck buffer of 50 ms or half the
        round trip, whichever is longer (satellite terminals buffer deeply), 64 KB at least."""
        rate_bytes = self.shape.rate_mbps * 1e6 / 8
        burst = max(16_000, int(rate_bytes * 0.004))
        limit = max(64_000, int(rate_bytes * max(0.050, self.shape.rtt_ms / 2000)))
        _run(
            "ip",
            "netns",
            "exec",
            ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            device,
            "root",
            "tbf",
            "rate",
            f"{self.shape.rate_mbps}mbit",
            "burst",
            str(burst),
            "limit",
            str(limit),
        )

    def _verify_rtt(self) -> float:
        """TCP connect time, client to server, must be the asked round trip (±10 %, +1.5 ms)."""
        listener = self.popen_in_server(
            [
                sys.executable,
                "-c",
                (
                    "import socket\n"
                    f"s=socket.create_server(('{SERVER_IP}',{RTT_CHECK_PORT}))\n"
                    "while True:\n c,_=s.accept(); c.close()"
                ),
            ],
        )
        try:
            probe = (
                "import socket,time,sys\n"
                "r=[]\n"
                "end=time.monotonic()+30\n"
                "while len(r)<5 and time.monotonic()<end:\n"
                " t=time.monotonic()\n"
                " try:\n"
                f"  c=socket.create_connection(('{SERVER_IP}',{RTT_CHECK_PORT}),timeout=5)\n"
                " except OSError:\n"
                "  time.sleep(0.2); continue\n"
                " r.append((time.monotonic()-t)*1000); c.close()\n"
                "print(' '.join(f'{x:.3f}' for x in r))"
            )
            out = self.run_in_client([sys.executable, "-c", probe], timeout=60)
        finally:
            listener.kill()
            listener.wait()
        samples = [float(x) for x in out.split()]
        if len(samples) < 5:
            raise LinkError(f"the link did not carry TCP connects: {samples}")
        rtt = statistics.median(samples)
        want = self.shape.rtt_ms
        if not (want * 0.9 <= rtt <= want * 1.1 + 1.5):
            raise LinkError(f"emulated round trip is {rtt:.2f} ms, asked {want:g} ms")
        return rtt

    # -- using ------------------------------------------------------------

    def popen_in_server(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        command = ["ip", "netns", "exec", self.server_ns, *argv]
        return subprocess.Popen(command, **kwargs)  # type: ignore[call-overload, no-any-return]

    def popen_in_client(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        command = ["ip", "netns", "exec", self.client_ns, *argv]
        return subprocess.Popen(command, **kwargs)  # type: ignore[call-overload, no-any-return]

    def run_in_client(
        self, argv: list[str], timeout: float = 300, env: dict[str, str] | None = None
    ) -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", self.client_ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if result.returncode != 0:
            raise LinkError(f"{argv[:3]} failed in the client namespace:\n{result.stderr[-2000:]}")
        return result.stdout

    def server_port_open(self, port: int) -> bool:
        probe = (
            "import socket,sys; s=socket.socket(); s.settimeout(1); "
            f"sys.exit(s.connect_ex(('{SERVER_IP}',{port})))"
        )
        return (
            subprocess.run(
                ["ip", "netns", "exec", self.client_ns, sys.executable, "-c", probe], check=False
            ).returncode
            == 0
        )

    def wait_for_server_port(self, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.server_port_open(port):
            if time.monotonic() > deadline:
                raise LinkError(f"nothing listens on {SERVER_IP}:{port} in the server namespace")
            time.sleep(0.2)

    def cut(self) -> None:
        """Take the client's side of the link down: a lost uplink."""
        _run("ip", "-n", self.client_ns, "link", "set", self._devices["cli"], "down")

    # -- removing ---------------------------------------------------------

    def close(self) -> None:
        if self._delay_line is not None:
            self._delay_line.kill()
            self._delay_line.wait()
            self._delay_line = None
        for ns in (self.server_ns, self.middle_ns, self.client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
