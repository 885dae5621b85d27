"""A school's network in namespaces: its PC, its router, and the internet beyond.

    school ns                 gateway ns                    upstream ns
    [sch0] ════ veth ════ [gw0]   [gw1] ════ veth ════ [up0]
    10.78.1.2/24      10.78.1.1   10.78.2.1       10.78.2.2/24
    default via 10.78.1.1         (forwards)       a TCP service on :1883,
                                                   a DNS server on :53

With ``host_link``, a fourth veth joins the upstream to this machine's own
namespace (10.78.3.2 there, ``HOST_IP`` 10.78.3.1 here), routed both ways, so a
broker started here on ``HOST_IP`` is reachable from the school through its
router, and cut with it.

The school resolves names through the upstream's DNS server (``ip netns
exec`` mounts ``/etc/netns/<school ns>/resolv.conf``): ``broker.test`` is
10.78.2.2, or ``HOST_IP`` with ``host_link``. The faults a school sees: the
uplink cut (the router's upstream side down), the router itself gone (its
school side down), and DNS failing (its server stopped). Needs root and
iproute2; every name carries a random suffix, and everything is removed on
exit. Nothing leaves this machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType

SCHOOL_IP, GATEWAY_IP, UPSTREAM_IP = "10.78.1.2", "10.78.1.1", "10.78.2.2"
HOST_IP, HOST_PEER_IP = "10.78.3.1", "10.78.3.2"
SERVICE_PORT = 1883
BROKER_NAME = "broker.test"
DNS_SERVER = Path(__file__).with_name("dns_server.py")


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


class SchoolNetwork:
    def __init__(self, *, host_link: bool = False) -> None:
        suffix = uuid.uuid4().hex[:6]
        self._host_link = f"h{suffix}a" if host_link else None
        self.broker_ip = HOST_IP if host_link else UPSTREAM_IP
        self.school, self.gateway, self.upstream = (
            f"cn{suffix}-sch", f"cn{suffix}-gw", f"cn{suffix}-up",
        )  # fmt: skip
        self._links = {"sch": f"s{suffix}", "gw0": f"g{suffix}a", "gw1": f"g{suffix}b",
                       "up": f"u{suffix}"}  # fmt: skip
        self._netns_etc = Path("/etc/netns") / self.school
        self._service: subprocess.Popen[bytes] | None = None
        self._dns: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SchoolNetwork:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _build(self) -> None:
        for ns in (self.school, self.gateway, self.upstream):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        links = self._links
        _run("ip", "link", "add", links["sch"], "netns", self.school, "type", "veth",
             "peer", "name", links["gw0"], "netns", self.gateway)  # fmt: skip
        _run("ip", "link", "add", links["gw1"], "netns", self.gateway, "type", "veth",
             "peer", "name", links["up"], "netns", self.upstream)  # fmt: skip
        for ns, device, address in (
            (self.school, links["sch"], f"{SCHOOL_IP}/24"),
            (self.gateway, links["gw0"], f"{GATEWAY_IP}/24"),
            (self.gateway, links["gw1"], "10.78.2.1/24"),
            (self.upstream, links["up"], f"{UPSTREAM_IP}/24"),
        ):
            _run("ip", "-n", ns, "addr", "add", address, "dev", device)
            _run("ip", "-n", ns, "link", "set", device, "up")
        _run("ip", "-n", self.school, "route", "add", "default", "via", GATEWAY_IP)
        _run("ip", "-n", self.upstream, "route", "add", "default", "via", "10.78.2.1")
        _run("ip", "netns", "exec", self.gateway, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if self._host_link is not None:
            self._link_host(self._host_link)
        self._netns_etc.mkdir(parents=True, exist_ok=True)
        (self._netns_etc / "resolv.conf").write_text(
            f"nameserver {UPSTREAM_IP}\noptions timeout:1 attempts:1\n"
        )
        (self._netns_etc / "hosts").write_text("127.0.0.1 localhost\n")
        service = (
            "import socket\n"
            f"s = socket.create_server(('{UPSTREAM_IP}', {SERVICE_PORT}), backlog=64)\n"
            "while True:\n    c, _ = s.accept(); c.close()\n"
        )
        self._service = subprocess.Popen(
            ["ip", "netns", "exec", self.upstream, sys.executable, "-c", service]
        )
        self.dns_up()
        self._wait_reachable()

    def _link_host(self, here: str) -> None:
        """This namespace's end of a veth to the upstream, routed to the school's subnet."""
        there = here[:-1] + "b"
        _run("ip", "link", "add", here, "type", "veth", "peer", "name", there,
             "netns", self.upstream)  # fmt: skip
        _run("ip", "addr", "add", f"{HOST_IP}/24", "dev", here)
        _run("ip", "link", "set", here, "up")
        _run("ip", "-n", self.upstream, "addr", "add", f"{HOST_PEER_IP}/24", "dev", there)
        _run("ip", "-n", self.upstream, "link", "set", there, "up")
        _run("ip", "netns", "exec", self.upstream, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._route_to_host()
        _run("ip", "route", "add", "10.78.1.0/24", "via", HOST_PEER_IP, "dev", here)

    def _route_to_host(self) -> None:
        _run("ip", "-n", self.gateway, "route", "replace", "10.78.3.0/24", "via", UPSTREAM_IP)

    def _wait_reachable(self) -> None:
        deadline = time.monotonic() + 15
        check = (
            f"import socket; socket.create_connection(('{UPSTREAM_IP}', {SERVICE_PORT}), 1); "
            f"socket.getaddrinfo('{BROKER_NAME}', {SERVICE_PORT})"
        )
        while subprocess.run(
            ["ip", "netns", "exec", self.school, sys.executable, "-c", check],
            capture_output=True, check=False,
        ).returncode:  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError("the school cannot reach the upstream service")
            time.sleep(0.2)

    @property
    def school_device(self) -> str:
        """The school PC's interface (in the school namespace)."""
        return self._links["sch"]

    # -- faults ------------------------------------------------------------

    def uplink(self, *, up: bool) -> None:
        """The router's upstream side: the school's link to the internet."""
        _run("ip", "-n", self.gateway, "link", "set", self._links["gw1"], "up" if up else "down")
        if up and self._host_link is not None:  # the kernel dropped the route with the link
            self._route_to_host()

    def router(self, *, up: bool) -> None:
        """The router's school side: the router switched off, as the school sees it."""
        _run("ip", "-n", self.gateway, "link", "set", self._links["gw0"], "up" if up else "down")

    def dns_up(self) -> None:
        self._dns = subprocess.Popen(
            ["ip", "netns", "exec", self.upstream, sys.executable, str(DNS_SERVER),
             UPSTREAM_IP, f"{BROKER_NAME}={self.broker_ip}"],
        )  # fmt: skip
        time.sleep(0.5)

    def dns_down(self) -> None:
        if self._dns is not None:
            self._dns.kill()
            self._dns.wait()
            self._dns = None

    def close(self) -> None:
        for process in (self._service, self._dns):
            if process is not None:
                process.kill()
                process.wait()
        if self._host_link is not None:  # its route goes with it
            subprocess.run(["ip", "link", "del", self._host_link], capture_output=True, check=False)
        for ns in (self.school, self.gateway, self.upstream):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(self._netns_etc, ignore_errors=True)
