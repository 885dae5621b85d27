"""``school-agent``: the command a school's IT person runs."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from agent import __version__
from agent.broker import BrokerError
from agent.budget import MB, DataBudget
from agent.command_line import common_options, setup_logging
from agent.config_file import ConfigError, load_settings
from agent.contract import SpeedMeasurement, SpeedResult
from agent.devices.check import check_devices, describe_devices
from agent.identity import ensure_state_dir
from agent.settings import ENV_PREFIX, AgentSettings
from agent.speed import SilentProgress, SpeedTester, TerminalProgress

EXIT_CONFIG = 2
EXIT_BROKER = 3
EXIT_TEST_FAILED = 1

log = logging.getLogger("agent")


def build_parser() -> argparse.ArgumentParser:
    common = common_options(ENV_PREFIX)
    parser = argparse.ArgumentParser(
        prog="school-agent",
        description="Measure this school's internet speed and publish the results over MQTT.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"school-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        parents=[common],
        help="run the agent (the daemon)",
        description="Run the agent: publish its status, test the speed on schedule, "
        "until stopped with SIGTERM or Ctrl-C. SIGUSR1 asks for a speed test now "
        "(systemctl kill -s USR1 school-agent).",
    )
    run.add_argument(
        "--once",
        action="store_true",
        help="measure everything once, wait until the broker acknowledged every message, exit",
    )

    test = commands.add_parser(
        "speedtest",
        parents=[common],
        help="run one speed test and print the result (publishes nothing)",
        description="Run one speed test against the configured server and print the result. "
        "Needs no school_id or broker: use it to check a link before setting up.",
    )
    test.add_argument("--json", action="store_true", help="print the result as one JSON object")
    test.add_argument(
        "--ignore-budget",
        action="store_true",
        help="run even if speedtest.monthly_budget_mb is spent (the data still counts)",
    )

    devices = commands.add_parser(
        "devices",
        parents=[common],
        help="check every configured device once and print its state (publishes nothing)",
        description="Check every device in the config once, as `run` would (a failing device "
        "is re-checked until it is down), and print a table. Heartbeat devices are listed "
        "but not checked. Exit 0 when every checked device is up, 1 otherwise.",
    )
    devices.add_argument("--json", action="store_true", help="print one JSON object per device")
    commands.add_parser(
        "doctor",
        parents=[common],
        help="check this installation: config, clock, disk, DNS, broker, speed server, devices",
        description="Check everything the agent needs and print a PASS/WARN/FAIL list with what "
        "to do for each failure. Exit 0 when nothing failed, 1 otherwise.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = with_remote_config(load_settings(AgentSettings, args.config), args.config)
    except ConfigError as exc:
        print(f"school-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(args.log_level or settings.log_level)
    if args.command == "speedtest":
        return _speedtest(settings, as_json=args.json, ignore_budget=args.ignore_budget)
    if args.command == "doctor":
        from agent.doctor import Verdict, diagnose  # noqa: PLC0415 - keeps --help light

        findings = diagnose(settings)
        for finding in findings:
            print(finding)
        failed = sum(f.verdict is Verdict.FAIL for f in findings)
        print(f"{failed} check(s) failed" if failed else "all checks passed")
        return EXIT_TEST_FAILED if failed else 0
    if args.command == "devices":
        try:
            return check_devices(settings, as_json=args.json, config_file=args.config)
        except ConfigError as exc:
            print(f"school-agent: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    return _run(settings, once=args.once, config=args.config)


def with_remote_config(settings: AgentSettings, config: Path | None) -> AgentSettings:
    """``settings`` with the ministry's documents in force (agent/remote_config.py) under
    the local ones; as they are when remote configuration is off or nothing applied yet."""
    if settings.remote_config.public_key is None:
        return settings
    from agent.remote_config import REMOTE_CONFIG_FILE  # noqa: PLC0415 - cryptography: when on
    from agent.remote_config import load as load_applied  # noqa: PLC0415

    path = settings.state_dir / REMOTE_CONFIG_FILE
    layers = load_applied(path).layers()
    if not layers:
        return settings
    try:
        return load_settings(AgentSettings, config, layers=tuple(layers))
    except ConfigError as exc:  # e.g. an upgrade changed a setting a document sets
        log.warning(
            "the ministry's configuration in %s no longer gives valid settings (%s); running "
            "on the local configuration until the ministry publishes a newer document",
            path, str(exc).replace("\n", " "),
        )  # fmt: skip
        return settings


def _run(settings: AgentSettings, *, once: bool, config: Path | None) -> int:
    from agent.daemon import Agent  # noqa: PLC0415 - keeps `--help` and `speedtest` light

    def reload(layers: tuple[dict[str, Any], ...]) -> AgentSettings:
        return load_settings(AgentSettings, config, layers=layers)

    try:
        agent = Agent(settings, reload=reload)
    except ConfigError as exc:
        print(f"school-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        agent.stop()

    def on_usr1(_signum: int, _frame: FrameType | None) -> None:
        agent.trigger()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_usr1)
    if not once:
        try:
            agent.run_forever()
        except ConfigError as exc:
            print(f"school-agent: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return 0
    progress = TerminalProgress() if sys.stderr.isatty() else SilentProgress()
    try:
        summary = agent.run_once(progress)
    except BrokerError as exc:
        print(f"school-agent: {exc}", file=sys.stderr)
        return EXIT_BROKER
    print(_describe(summary.speed))
    if summary.devices:
        print(describe_devices(summary.devices))
    line = (
        f"Published  {summary.messages_acknowledged} messages ({summary.published}), all "
        "acknowledged by the broker"
    )
    if summary.receipts and summary.unconfirmed:
        line += (
            f"; {summary.unconfirmed} not yet confirmed stored by the collector (they stay in "
            "the outbox; the next run sends them again if no receipt comes)"
        )
    elif summary.receipts:
        line += ", and confirmed stored in InfluxDB by the collector"
    line += "; then a status 'stopped' as it disconnected"
    print(line)
    return 0


def _speedtest(settings: AgentSettings, *, as_json: bool, ignore_budget: bool) -> int:
    progress = TerminalProgress() if sys.stderr.isatty() and not as_json else SilentProgress()
    budget = _budget_for_cli(settings)
    now = datetime.now(UTC)
    max_bytes = None
    if budget is not None and not ignore_budget:
        if not budget.allows_test(now):
            used, cap = budget.used(now) / MB, (budget.cap_bytes or 0) / MB
            print(
                f"school-agent: {used:.0f} of the {cap:.0f} MB monthly data budget are used; "
                "add --ignore-budget to test anyway, or raise speedtest.monthly_budget_mb",
                file=sys.stderr,
            )
            return EXIT_TEST_FAILED
        max_bytes = budget.remaining(now)
    measurement = SpeedTester(settings.speedtest).measure(progress, max_bytes=max_bytes)
    if budget is not None:
        budget.record(now, measurement.bytes_received + measurement.bytes_sent)
    if as_json:
        print(measurement.model_dump_json())
    else:
        print(_describe(measurement))
    return 0 if measurement.result is SpeedResult.SUCCESS else EXIT_TEST_FAILED


def _budget_for_cli(settings: AgentSettings) -> DataBudget | None:
    """The daemon's budget, when one is set and its state directory is usable."""
    if settings.speedtest.monthly_budget_mb is None:
        return None
    try:
        state_dir = ensure_state_dir(settings.state_dir)
    except ConfigError as exc:
        log.warning("not counting this test against the data budget: %s", exc)
        return None
    return DataBudget(state_dir, settings.speedtest.monthly_budget_mb, settings.schedule.tz())


def _describe(m: SpeedMeasurement) -> str:
    server = f"{m.server.name} ({m.server.kind.value}, id {m.server.id})" if m.server else "none"
    lines = [f"Server     {server}"]
    if m.result is not SpeedResult.SUCCESS:
        lines.append(f"Failed     {m.result.value} (code {m.result_code}): {m.error}")
        return "\n".join(lines)
    verdict = "meets" if m.meets_threshold else "is BELOW"
    lines += [
        f"Latency    {m.latency_ms:.1f} ms",
        f"Download   {m.download_mbps:.2f} Mbps",
        f"Upload     {m.upload_mbps:.2f} Mbps",
        f"Moved      {(m.bytes_received + m.bytes_sent) / 1e6:.1f} MB in {m.duration_s:.1f} s",
        f"Verdict    {verdict} the {m.threshold_mbps:g} Mbps standard",
    ]
    return "\n".join(lines)
