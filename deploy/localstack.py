#!/usr/bin/env python3
"""Run the pipeline's services on this machine, as the current user, on loopback.

    python3 deploy/localstack.py install     # Debian's mosquitto and influxdb, if missing
    python3 deploy/localstack.py up          # broker, database, speed server, collector
    python3 deploy/localstack.py status
    python3 deploy/localstack.py down

Config, data, logs and pid files live in a run directory (default ``.run/stack``);
nothing is installed as a system service. The test suite starts its own broker
and database on free ports through the same classes (see tests/conftest.py).
Standard library only: it runs before the virtual environment exists.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED_BROKER_CONFIG = REPO / "deploy" / "mosquitto" / "school-monitor.conf"
DEFAULT_RUN_DIR = REPO / ".run" / "stack"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PACKAGES = {"mosquitto": "mosquitto", "influxd": "influxdb"}
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])
DEFAULT_PORTS = {"mqtt": 21883, "influx": 28086, "influx_rpc": 28088, "speed": 28080}


class StackError(Exception):
    """A service could not be installed or started; the message says what to do."""


def find(program: str) -> str | None:
    return shutil.which(program, path=SEARCH_PATH)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def ensure_installed() -> None:
    """Install Debian's mosquitto and influxdb packages when their programs are missing."""
    missing = [package for program, package in PACKAGES.items() if find(program) is None]
    if not missing:
        return
    if find("apt-get") is None:
        raise StackError(f"install {' '.join(missing)} with your package manager (no apt-get)")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(missing)} from Debian's packages...", flush=True)
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        result = subprocess.run([*sudo, *command], env=env, check=False)
        if result.returncode != 0:
            raise StackError(f"'{' '.join(command)}' failed; run it yourself and retry")


@dataclass
class Process:
    """A program started in the background, with its pid file and log in ``run_dir``."""

    name: str
    argv: list[str]
    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=os.environ | self.env,
                start_new_session=True,  # survives the shell that started it, like a service
            )
        self.pid_file.write_text(f"{self.popen.pid}\n")

    def pid(self) -> int | None:
        if self.popen is not None:
            return self.popen.pid if self.popen.poll() is None else None
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL at once: a crash or a power cut, as far as the process can tell."""
        self._signal(signal.SIGKILL, 5.0)

    def _signal(self, signum: signal.Signals, timeout: float) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._alive(pid):
            time.sleep(0.05)
        if self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid)
        self.pid_file.unlink(missing_ok=True)

    def _alive(self, pid: int) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def _wait_gone(self, pid: int) -> None:
        if self.popen is not None:
            self.popen.wait(timeout=10)
            return
        for _ in range(200):
            if not self._alive(pid):
                return
            time.sleep(0.05)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Poll ``ready()`` until true; fail with the log's tail if the process died or hung."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise StackError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.05)
        raise StackError(f"{self.name} was not {what} after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Mosquitto:
    """A Mosquitto broker on 127.0.0.1 with persistence in ``run_dir``.

    Its limits are the ones the project ships for production,
    deploy/mosquitto/school-monitor.conf (persistence, queue sizes), appended
    to the listener and paths written here.
    """

    def __init__(
        self, run_dir: Path, port: int, extra_config: str = "", *, listeners: str | None = None
    ) -> None:
        """``listeners`` replaces the anonymous loopback listener (e.g. TLS and an ACL)."""
        self.run_dir = run_dir
        self.port = port
        self.extra_config = extra_config
        self.listeners = listeners
        program = find("mosquitto")
        if program is None:
            raise StackError(
                "mosquitto is not installed; run: python3 deploy/localstack.py install"
            )
        self.process = Process(
            "mosquitto", [program, "-c", str(run_dir / "mosquitto.conf")], run_dir
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        user = "user root\n" if os.geteuid() == 0 else ""
        listeners = self.listeners or f"listener {self.port} 127.0.0.1\nallow_anonymous true"
        (self.run_dir / "mosquitto.conf").write_text(
            f"""# written by deploy/localstack.py
{user}{listeners}
persistence_location {self.run_dir}/
log_dest stdout
log_type error
log_type warning
log_type notice
{SHIPPED_BROKER_CONFIG.read_text()}
{self.extra_config}
"""
        )

    def start(self) -> None:
        self.write_config()
        self.process.start()
        self.process.wait_until(lambda: port_open(self.port), f"listening on port {self.port}")

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()


class InfluxDB:
    """An InfluxDB 1.x server on 127.0.0.1 with its meta, data and WAL in ``run_dir``."""

    def __init__(self, run_dir: Path, port: int, rpc_port: int, *, auth: bool = False) -> None:
        self.run_dir = run_dir
        self.port = port
        self.rpc_port = rpc_port
        self.auth = auth
        program = find("influxd")
        if program is None:
            raise StackError("influxd is not installed; run: python3 deploy/localstack.py install")
        config = run_dir / "influxdb.conf"
        self.process = Process("influxdb", [program, "-config", str(config)], run_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data = self.run_dir / "influxdb"
        (self.run_dir / "influxdb.conf").write_text(
            f"""# written by deploy/localstack.py
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{data}/meta"
  logging-enabled = false
[data]
  dir = "{data}/data"
  wal-dir = "{data}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {str(self.auth).lower()}
  log-enabled = false
  pprof-enabled = false
[logging]
  level = "warn"
  suppress-logo = true
"""
        )

    def ping(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            connection.request("GET", "/ping")
            return connection.getresponse().status == 204  # /ping needs no credentials
        except OSError:
            return False
        finally:
            connection.close()

    def start(self) -> None:
        self.write_config()
        self.process.start()
        self.process.wait_until(self.ping, f"answering /ping on port {self.port}")

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()


# --------------------------------------------------------------- the stack --


class PythonService:
    """One of our own commands run from the virtual environment."""

    def __init__(self, process: Process, port: int | None) -> None:
        self.process = process
        self.port = port

    def start(self) -> None:
        self.process.start()
        if self.port is not None:
            port = self.port
            self.process.wait_until(lambda: port_open(port), f"listening on port {port}")
        else:
            time.sleep(1.0)
            if not self.process.running():
                raise StackError(f"{self.process.name} exited at start:\n{self.process.log_tail()}")


Service = Mosquitto | InfluxDB | PythonService


def stack_services(run_dir: Path, ports: dict[str, int]) -> dict[str, Service]:
    """The services of ``up``, in start order (``down`` stops them in reverse)."""
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable)
    speed = ["-m", "collector", "speed-server", "--port", str(ports["speed"])]
    return {
        "mosquitto": Mosquitto(run_dir, ports["mqtt"]),
        "influxdb": InfluxDB(run_dir, ports["influx"], ports["influx_rpc"]),
        "speed-server": PythonService(
            Process("speed-server", [python, *speed], run_dir), ports["speed"]
        ),
        "collector": PythonService(
            Process("collector", [python, "-m", "collector", "run"], run_dir, stack_env(ports)),
            None,
        ),
    }


def stack_env(ports: dict[str, int]) -> dict[str, str]:
    """Settings that point the agent and the collector at this stack."""
    return {
        "SCHOOL_COLLECTOR_MQTT__URL": f"mqtt://127.0.0.1:{ports['mqtt']}",
        "SCHOOL_COLLECTOR_MQTT__CLIENT_ID": "demo-collector",
        "SCHOOL_COLLECTOR_INFLUX__URL": f"http://127.0.0.1:{ports['influx']}",
        "SCHOOL_COLLECTOR_INFLUX__DATABASE": "school_monitor",
        "SCHOOL_COLLECTOR_STATS_INTERVAL_S": "10",
        "SCHOOL_AGENT_MQTT__URL": f"mqtt://127.0.0.1:{ports['mqtt']}",
        "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": f"http://127.0.0.1:{ports['speed']}",
    }


def up(run_dir: Path, ports: dict[str, int]) -> None:
    ensure_installed()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "ports.json").write_text(json.dumps(ports))
    env_lines = [f"export {k}={v}" for k, v in stack_env(ports).items()]
    (run_dir / "stack.env").write_text("\n".join(env_lines) + "\n")
    for name, service in stack_services(run_dir, ports).items():
        if service.process.running():
            print(f"  {name:<13} already running (pid {service.process.pid()})")
            continue
        if service.port is not None and port_open(service.port):
            raise StackError(
                f"port {service.port} for {name} is taken by another program; "
                "stop it, or choose other ports (see --help)"
            )
        service.start()
        print(f"  {name:<13} started (log {service.process.log_file})")


def load_ports(run_dir: Path) -> dict[str, int]:
    try:
        return dict(json.loads((run_dir / "ports.json").read_text()))
    except (OSError, ValueError):
        return dict(DEFAULT_PORTS)


def down(run_dir: Path) -> None:
    for name, service in reversed(stack_services(run_dir, load_ports(run_dir)).items()):
        if service.process.running():
            service.process.stop()
            print(f"  {name:<13} stopped")


def status(run_dir: Path) -> int:
    ports = load_ports(run_dir)
    down_count = 0
    for name, service in stack_services(run_dir, ports).items():
        pid = service.process.pid()
        down_count += pid is None
        state = f"running (pid {pid})" if pid else "stopped"
        print(f"  {name:<13} {state}")
    return 1 if down_count else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="localstack.py", description=__doc__.splitlines()[1] if __doc__ else None
    )
    parser.add_argument("command", choices=["install", "up", "down", "status"])
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="default: .run/stack")
    for name, port in DEFAULT_PORTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}-port", type=int, default=port)
    args = parser.parse_args(argv)
    ports = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
    try:
        if args.command == "install":
            ensure_installed()
        elif args.command == "up":
            up(args.run_dir, ports)
        elif args.command == "down":
            down(args.run_dir)
        else:
            return status(args.run_dir)
    except StackError as exc:
        print(f"localstack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
