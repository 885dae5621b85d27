"""``school-collector``: the command the ministry's server team runs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.command_line import common_options, setup_logging
from agent.config_file import ConfigError, load_settings, origin
from collector import speed_server
from collector.settings import ENV_PREFIX, CollectorSettings

if TYPE_CHECKING:
    from collector.influx.query import InfluxQL
    from collector.rollout import Row

EXIT_CONFIG = 2
EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    common = common_options(ENV_PREFIX)
    parser = argparse.ArgumentParser(
        prog="school-collector",
        description="Receive school agents' MQTT messages, validate them, store them in InfluxDB.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"school-collector {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "run",
        parents=[common],
        help="run the collector until SIGTERM or Ctrl-C",
        description="Subscribe to every school's topics on a persistent QoS 1 session, write "
        "points to InfluxDB in batches, acknowledge each message once it is stored.",
    )
    query = commands.add_parser(
        "query",
        parents=[common],
        help="run an InfluxQL query against the configured InfluxDB",
        description="Run InfluxQL against influx.url / influx.database and print the result.",
    )
    query.add_argument(
        "influxql", help='for example: SELECT * FROM "speed" ORDER BY time DESC LIMIT 5'
    )
    query.add_argument("--format", choices=["table", "json"], default="table",
                       help="output format: an aligned table for people, JSON for programs "
                       "(default: %(default)s)")  # fmt: skip
    server = commands.add_parser(
        "speed-server",
        help="serve the self-hosted speed-test protocol (Speedtest Mini) for agents",
        description="A speed server agents can test against (speedtest.server_url).",
    )
    speed_server.add_arguments(server)
    registry = commands.add_parser(
        "registry",
        parents=[common],
        help="the national school registry in InfluxDB: import a CSV, show the latest",
        description="The registry is the denominator of every rollout percentage and the "
        "source of each point's region and district tags.",
    )
    actions = registry.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = actions.add_parser(
        "import",
        parents=[common],
        help="validate a registry CSV and import it as a whole",
        description="Check every row (all bad rows are reported with their line numbers; a "
        "file with errors imports nothing), then write it as the newest registry.",
    )
    load.add_argument("file", type=Path, metavar="FILE.csv")
    actions.add_parser(
        "show", parents=[common], help="schools per region in the newest imported registry"
    )
    kept = commands.add_parser(
        "retention",
        parents=[common],
        help="how long InfluxDB keeps raw points and their summaries (InfluxDB 1.x)",
        description="Raw points stay retention.raw_days; the registry, the rollout "
        "percentages and hourly summaries of every measurement stay in the 'history' "
        "retention policy for retention.history_days (0: for ever). 'run' applies this "
        "at start when influx.create_database is true.",
    )
    steps = kept.add_subparsers(dest="action", required=True, metavar="ACTION")
    steps.add_parser(
        "apply", parents=[common],
        help="create or change the retention policies and continuous queries to match settings",
    )  # fmt: skip
    steps.add_parser(
        "show", parents=[common], help="the retention policies and continuous queries in place"
    )
    backfill = steps.add_parser(
        "backfill",
        parents=[common],
        help="summarise raw points of a time range into history (late data, an upgrade)",
        description="Run the continuous queries' SELECT ... INTO over [--since, --until): "
        "for points that arrived after their interval was summarised, or raw points "
        "written before the retention plan was applied. Running it twice changes nothing.",
    )
    backfill.add_argument("--since", type=_moment, required=True, metavar="TIME",
                          help="ISO 8601 start, e.g. 2026-11-01T00:00:00+05:00")  # fmt: skip
    backfill.add_argument("--until", type=_moment, metavar="TIME", help="ISO 8601 end "
                          "(default: now)")  # fmt: skip
    backfill.add_argument("--school", metavar="SCHOOL_ID", help="only this school")
    rollout = commands.add_parser(
        "rollout",
        parents=[common],
        help="rollout percentages, national and per region, from InfluxDB",
        description="The share of registered schools meeting each target (definitions in "
        "collector/README.md, 'Rollout percentages'), computed from InfluxDB as the dashboards "
        "show it.",
    )
    rollout.add_argument("--region", help="only this region (and the national row)")
    rollout.add_argument(
        "--at", type=_moment, metavar="TIME",
        help="ISO 8601 time to compute for from raw points, e.g. 2026-11-01T08:00:00+05:00. "
        "Default: the figures a running collector computed last from its current state "
        "(at most two rollout.interval_s old); without them, computed now from raw points",
    )  # fmt: skip
    rollout.add_argument("--format", choices=["table", "csv", "json"], default="table",
                         help="table: aligned, for people; csv: for a spreadsheet; json: a "
                         "list of {metric, region, schools, total, percent} (default: "
                         "%(default)s)")  # fmt: skip
    simulate = commands.add_parser(
        "simulate",
        parents=[common],
        help="generate a national fleet (registry and history) and send it (demo, load)",
        description="Generate a registry of schools with realistic rollout, links, device "
        "failures and agent outages; write the registry CSV; send the fleet's last 30 days "
        "through the broker (or straight into InfluxDB) and import the registry.",
    )
    simulate.add_argument("--schools", type=int, default=7400,
                          help="how many schools the fleet has (default: %(default)s, the "
                          "national size)")  # fmt: skip
    simulate.add_argument("--seed", type=int, default=1,
                          help="the random seed: the same seed gives the same fleet and the "
                          "same 30 days (default: %(default)s)")  # fmt: skip
    simulate.add_argument("--tests-per-day", type=float, default=1.0,
                          help="speed tests per school per day (default: %(default)s)")  # fmt: skip
    simulate.add_argument("--connectivity-days", type=int, default=1, metavar="DAYS",
                          help="days of hourly reachability checks, with their outages, "
                          "that each live agent reports (24 reports a day; default: "
                          "%(default)s)")  # fmt: skip
    simulate.add_argument("--registry-out", type=Path, metavar="FILE.csv",
                          help="also write the registry here")  # fmt: skip
    simulate.add_argument(
        "--via", choices=["mqtt", "influx"], default="mqtt",
        help="mqtt: publish through mqtt.url to the running collector; influx: write points "
        "directly (fast, no collector needed; default: %(default)s)",
    )  # fmt: skip
    simulate.add_argument("--compression", type=float, default=0.0,
                          help="with mqtt: simulated seconds per real second (0: as fast as "
                          "the broker acknowledges; default: %(default)s)")  # fmt: skip
    provision = commands.add_parser(
        "provision",
        help="issue broker accounts and agent bundles for every school in the registry",
        description="Turn the school registry into Mosquitto's password file and one agent "
        "bundle per school (agent.toml with school id, broker URL, credentials and CA path; "
        "ca.pem), secrets with mode 0600. Running it again changes nothing; --rotate issues "
        "a new password for a school; schools no longer in the registry are revoked.",
    )
    provision.add_argument(
        "--registry",
        type=Path,
        required=True,
        metavar="CSV",
        help="the school registry (columns school_id, region, name)",
    )
    provision.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="where to write mosquitto/passwords and acl, collector/ and schools/",
    )
    provision.add_argument(
        "--broker-url",
        required=True,
        help="the URL agents use, e.g. mqtts://broker.example.edu.kz:8883",
    )
    provision.add_argument(
        "--ca-file",
        type=Path,
        required=True,
        help="PEM of the CA that signed the broker's certificate",
    )
    provision.add_argument(
        "--bundle-ca-path",
        default="/etc/school-agent/ca.pem",
        help="where ca.pem will be on the school's PC (default: %(default)s)",
    )
    provision.add_argument(
        "--rotate",
        action="append",
        default=[],
        metavar="SCHOOL_ID",
        help="issue a new password for this school (repeatable)",
    )
    provision.add_argument(
        "--collector",
        action="append",
        default=[],
        metavar="NAME",
        help="a collector's account, also its client id (repeatable: one per collector sharing "
        "a subscription; default: school-collector). Writes collector/NAME.toml",
    )
    provision.add_argument(
        "--config-key",
        type=Path,
        metavar="config-key.pub",
        help="the ministry's public key for remote configuration (config keygen): copied "
        "into every bundle and named in its agent.toml",
    )
    provision.add_argument(
        "--topic-root",
        default="schools",
        help="the collectors' mqtt.topic_root, for the ACL (default: %(default)s)",
    )
    provision.add_argument(
        "--dead-letter-topic",
        default="school-monitor/dead-letter",
        help="the collectors' mqtt.dead_letter_topic, for the ACL (default: %(default)s)",
    )
    provision.add_argument(
        "--capabilities-topic",
        default="school-monitor/capabilities",
        help="the collectors' and agents' mqtt.capabilities_topic, where the collectors "
        "announce receipts, for the ACL (default: %(default)s)",
    )
    for add in (_add_report, _add_config, _add_fleet):
        add(commands, common)
    _add_alert_routing(commands)
    return parser


def _add_fleet(commands: Any, common: argparse.ArgumentParser) -> None:
    fleet = commands.add_parser(
        "fleet", parents=[common],
        help="which schools run which agent version and configuration, and which are behind",
        description="Every registered school's agent version and remote configuration from the "
        "current state, by region; the schools not on the latest configuration, and those not "
        "heard from for a day.",
    )  # fmt: skip
    fleet.add_argument("--format", choices=["table", "csv", "json"], default="table",
                       help="output format (default: %(default)s)")  # fmt: skip


def _add_alert_routing(commands: Any) -> None:
    routing = commands.add_parser(
        "alert-routing",
        help="write Grafana's contact points and notification policy from a teams file",
        description="Turn a teams file (deploy/alert-teams.example.toml) into Grafana's alerting "
        "provisioning: e-mail, Telegram and webhook contact points, one route per region team, "
        "notifications grouped by rule and region. Secrets stay in Grafana's environment.",
    )
    routing.add_argument("teams", type=Path, help="the teams file (TOML)")
    routing.add_argument(
        "--out",
        type=Path,
        help="write here (e.g. /etc/grafana/provisioning/alerting/notifications.json) "
        "instead of printing",
    )


def _add_config(commands: Any, common: argparse.ArgumentParser) -> None:
    config = commands.add_parser(
        "config",
        help="the ministry's signed settings for all schools, a region or one school",
        description="Make the ministry's key, sign a document of agent settings with it, and "
        "publish it retained for the agents (agent/README.md: Remote configuration).",
    )
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    keygen = actions.add_parser(
        "keygen", help="a new Ed25519 key pair: config-key.pem (private) and config-key.pub",
        description="Write a new key pair. Keep config-key.pem offline; config-key.pub goes "
        "into every school's bundle (school-collector provision --config-key).",
    )  # fmt: skip
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="where to write both files (the private one mode 0600)")  # fmt: skip
    sign = actions.add_parser(
        "sign", help="sign a TOML file of agent settings for a scope",
        description="Check a TOML file of agent settings (only what a ministry may set "
        "remotely) and sign it with the private key, as a document agents verify.",
    )  # fmt: skip
    sign.add_argument("settings", type=Path, metavar="SETTINGS.toml",
                      help="agent settings as in agent.toml (speedtest, ...)")  # fmt: skip
    sign.add_argument("--key", type=Path, required=True, metavar="config-key.pem",
                      help="the ministry's private key (config keygen)")  # fmt: skip
    sign.add_argument("--scope", choices=["all", "region", "school"], required=True,
                      help="who it is for")  # fmt: skip
    sign.add_argument("--target", help="the region's or the school's name (not for all)")
    sign.add_argument("--version", type=int, metavar="N",
                      help="a number above the last one for this scope and target (default: "
                      "now, in seconds since the epoch)")  # fmt: skip
    sign.add_argument("--note", default="", help="a line for people: what it changes, and why")
    sign.add_argument("--out", type=Path, required=True, metavar="FILE.json",
                      help="the signed document, to publish")  # fmt: skip
    publish = actions.add_parser(
        "publish", parents=[common], help="publish a signed document, retained, for the agents",
        description="Publish on <mqtt.topic_root>/config/<scope>[/<target>], retained, QoS 1, "
        "as the config-publisher account of school-collector provision.",
    )  # fmt: skip
    publish.add_argument("document", type=Path, metavar="FILE.json", help="from config sign")
    status = actions.add_parser(
        "status", parents=[common], help="which schools have applied which configuration",
        description="As `school-collector fleet`: the configuration in force at each school, "
        "by region, and the schools not on the latest.",
    )  # fmt: skip
    status.add_argument("--format", choices=["table", "csv", "json"], default="table",
                        help="output format (default: %(default)s)")  # fmt: skip


def _config(args: argparse.Namespace) -> int:
    """keygen and sign (no settings needed); publish is in _config_publish."""
    from agent.remote_config import Scope  # noqa: PLC0415 - cryptography only here
    from collector import config_documents as docs  # noqa: PLC0415

    try:
        if args.action == "keygen":
            private, public = docs.keygen(args.out)
            print(f"wrote {private} (keep offline) and {public} (for every school's bundle)")
            return 0
        document = docs.make_document(
            args.settings, scope=Scope(args.scope), target=args.target, version=args.version,
            note=args.note,
        )  # fmt: skip
        args.out.write_bytes(docs.sign_file(document, args.key))
    except (docs.ConfigDocumentError, OSError) as exc:
        print(f"school-collector config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"signed {document.scope.value}{' ' + document.target if document.target else ''} "
          f"version {document.version} into {args.out}; publish it with: school-collector "
          f"config publish {args.out}")  # fmt: skip
    return 0


def _config_publish(settings: CollectorSettings, document: Path) -> int:
    from collector import config_documents as docs  # noqa: PLC0415

    try:
        topic = docs.publish(document.read_bytes(), settings.mqtt, settings.mqtt.topic_root)
    except (docs.ConfigDocumentError, OSError) as exc:
        print(f"school-collector config publish: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"published {document} on {topic} (retained): agents take it when they next hear "
          "from the broker; their status says which version they run")  # fmt: skip
    return 0


def _fleet(settings: CollectorSettings, fmt: str) -> int:
    from collector.fleet_versions import read_fleet, render  # noqa: PLC0415
    from collector.influx import InfluxError  # noqa: PLC0415
    from collector.influx.query import InfluxQL  # noqa: PLC0415

    client = InfluxQL(settings.influx)
    try:
        rows = read_fleet(client)
    except InfluxError as exc:
        print(f"school-collector fleet: InfluxDB at {settings.influx.url} (influx.url): "
              f"{exc}; the collector writes the state it reads: is it running?",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    finally:
        client.close()
    if not rows:
        print("school-collector fleet: no schools in the current state yet: a running collector "
              "writes it every state.interval_s", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    print(render(rows, fmt))
    return 0


def _add_report(commands: Any, common: argparse.ArgumentParser) -> None:
    report = commands.add_parser(
        "report",
        parents=[common],
        help="one month as a self-contained HTML report for people who do not open Grafana",
        description="The rollout nationally and by region against the previous month, the "
        "trend, the data's coverage, the schools that dropped off or never reported and the "
        "safety devices down longest, in one HTML file with its charts inline: it opens "
        "offline. Needs matplotlib (pip install 'school-monitor[report]').",
    )
    report.add_argument("--period", metavar="YYYY-MM",
                        help="the calendar month, UTC (default: this month, up to now)",
                        )  # fmt: skip
    report.add_argument("--out", type=Path, metavar="FILE.html",
                        help="where to write it (default: report-YYYY-MM.html here)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911, PLR0912 - one per command
    args = build_parser().parse_args(argv)
    if args.command == "speed-server":
        setup_logging(args.log_level or "INFO")
        return speed_server.serve(args.host, args.port, args.congestion_control)
    if args.command == "provision":
        return _provision(args)
    if args.command == "alert-routing":
        return _alert_routing(args.teams, args.out)
    if args.command == "config" and args.action not in ("publish", "status"):
        return _config(args)
    try:
        settings = load_settings(CollectorSettings, args.config)
    except ConfigError as exc:
        print(f"school-collector: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(args.log_level or settings.log_level)
    if args.command == "query":
        return _query(settings, args.influxql, args.format, args.config)
    if args.command == "registry":
        return _registry(settings, args)
    if args.command == "rollout":
        return _rollout(settings, args)
    if args.command == "retention":
        return _retention(settings, args)
    if args.command == "report":
        return _report(settings, args)
    if args.command == "config" and args.action == "status":
        return _fleet(settings, args.format)
    if args.command == "config":
        return _config_publish(settings, args.document)
    if args.command == "fleet":
        return _fleet(settings, args.format)
    if args.command == "simulate":
        from collector.simulate import run_simulation  # noqa: PLC0415

        return int(run_simulation(settings, args))
    from collector.registry import RegistryError  # noqa: PLC0415 - keep --help fast
    from collector.service import run_collector  # noqa: PLC0415

    try:
        return run_collector(settings)
    except RegistryError as exc:
        print(f"school-collector: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _alert_routing(teams_file: Path, out: Path | None) -> int:
    from collector.alert_routing import RoutingError, load_teams, render  # noqa: PLC0415

    try:
        text = render(load_teams(teams_file))
    except RoutingError as exc:
        print(f"school-collector alert-routing: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if out is None:
        sys.stdout.write(text)
        return 0
    try:
        out.write_text(text)
    except OSError as exc:
        print(f"school-collector alert-routing: cannot write {out}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {out}: copy it to /etc/grafana/provisioning/alerting/ and restart Grafana")
    return 0


def _registry(settings: CollectorSettings, args: argparse.Namespace) -> int:
    from collections import Counter  # noqa: PLC0415

    from collector.influx import InfluxError, make_writer  # noqa: PLC0415
    from collector.influx.query import InfluxQL  # noqa: PLC0415
    from collector.registry import RegistryError, SchoolRegistry  # noqa: PLC0415
    from collector.registry_store import import_registry, load_registry  # noqa: PLC0415

    try:
        if args.action == "import":
            registry = SchoolRegistry.load(args.file)
            if settings.influx.create_database:
                writer = make_writer(settings.influx)
                writer.ensure_database()
                writer.close()
            import_registry(registry, settings.influx, args.file.name)
            print(
                f"imported {len(registry)} schools in {len(registry.regions())} regions "
                f"from {args.file} into {settings.influx.database}"
            )
            return 0
        client = InfluxQL(settings.influx)
        current = load_registry(client)
        client.close()
    except RegistryError as exc:
        print(f"school-collector: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except InfluxError as exc:
        print(f"school-collector: {influx_problem(exc, settings, args.config)}", file=sys.stderr)
        return EXIT_FAILED
    if current is None:
        print("no registry imported yet: school-collector registry import FILE.csv")
        return EXIT_FAILED
    regions = Counter(school.region for school in current)
    print(_table(["region", "schools"], [[r, str(n)] for r, n in sorted(regions.items())]))
    print(f"{len(current)} schools")
    return 0


def _retention(settings: CollectorSettings, args: argparse.Namespace) -> int:
    from collector import retention  # noqa: PLC0415
    from collector.influx import HISTORY, InfluxError, make_writer  # noqa: PLC0415
    from collector.influx.query import InfluxQL  # noqa: PLC0415

    if settings.influx.api != "v1":
        print("school-collector: retention policies and continuous queries are InfluxDB 1.x's; "
              "on 2.x and 3.x set each bucket's retention (collector/README.md, 'Retention and "
              "summaries')",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    plan = retention.Plan.of(settings)
    client = InfluxQL(settings.influx)
    try:
        if args.action == "apply":
            writer = make_writer(settings.influx)
            writer.ensure_database()
            writer.close()
            for statement in retention.apply(client, plan):
                print(statement)
        elif args.action == "backfill":
            until = args.until or datetime.now(UTC)
            written = retention.backfill(client, plan, args.since, until, args.school)
            print(f"{written} summary points written into {HISTORY}")
        else:
            rows = [[p.name, p.duration, p.shard_duration, "yes" if p.default else ""]
                    for p in retention.policies(client, plan.database)]  # fmt: skip
            print(_table(["policy", "duration", "shard duration", "default"], rows))
            queries = [[row["name"], row["query"]]
                       for s in client.query("SHOW CONTINUOUS QUERIES") if s.name == plan.database
                       for row in s.rows()]  # fmt: skip
            print(_table(["continuous query", "statement"], queries) if queries
                  else "no continuous queries: school-collector retention apply")  # fmt: skip
    except InfluxError as exc:
        print(f"school-collector: {influx_problem(exc, settings, args.config)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        client.close()
    return 0


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _rollout(settings: CollectorSettings, args: argparse.Namespace) -> int:
    from collector.influx import InfluxError  # noqa: PLC0415
    from collector.influx.query import InfluxQL  # noqa: PLC0415
    from collector.rollout import NATIONAL, rollout  # noqa: PLC0415

    if args.at is not None:
        kept = timedelta(days=settings.retention.raw_days - settings.rollout.speed_window_days)
        if datetime.now(UTC) - args.at > kept:
            where = 'SELECT last("percent") FROM "history"."rollout" WHERE time <= \'TIME\''
            print(f"school-collector: raw points are kept {settings.retention.raw_days} days "
                  "(retention.raw_days), so the facts before --at are partly gone and these "
                  "percentages undercount; what they were then is in the rollout measurement: "
                  f'{where} GROUP BY "metric", "region"', file=sys.stderr)  # fmt: skip
    client = InfluxQL(settings.influx)
    try:
        rows = _latest_rollout(client, settings) if args.at is None else None
        if rows is None:
            rows = rollout(client, args.at, settings.rollout.rules())
        prepared = rows is not None or _prepared(client, settings)
    except InfluxError as exc:
        print(f"school-collector: {influx_problem(exc, settings, args.config)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        client.close()
    if not prepared:
        print(f"school-collector: the database {settings.influx.database!r} at "
              f"{settings.influx.url} has no 'history' retention policy: no collector has "
              "prepared it. Start the collector once (school-collector run prepares it), or run: "
              "school-collector retention apply; then import a registry (school-collector "
              "registry import FILE.csv)", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    if rows is None:
        when = f"by {args.at.isoformat()}" if args.at is not None else "yet"
        print(f"school-collector: no school registry imported {when} into "
              f"{settings.influx.database!r} at {settings.influx.url}: the percentages need "
              "it as their denominator. Run: school-collector registry import FILE.csv "
              "(or school-collector simulate, for a simulated fleet)",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    if args.region:
        rows = [r for r in rows if r.region in (NATIONAL, args.region)]
    records = [  # no figure (a mean without schools): null in JSON, empty in CSV, "-"
        {"metric": r.metric, "region": r.region, "schools": r.schools, "total": r.total,
         "percent": None if math.isnan(r.percent) else round(r.percent, 2)}
        for r in rows
    ]  # fmt: skip
    if args.format == "json":
        print(json.dumps(records))
    elif args.format == "csv":
        print("metric,region,schools,total,percent")
        for rec in records:
            percent = "" if rec["percent"] is None else f"{rec['percent']:.2f}"
            print(f'{rec["metric"]},"{rec["region"]}",{rec["schools"]},{rec["total"]},{percent}')
    else:
        columns = ["metric", "region", "schools", "total", "percent"]
        values = [
            [str(rec[c]) if c != "percent" else
             "-" if rec[c] is None else f"{rec[c]:.1f} %" for c in columns]
            for rec in records
        ]  # fmt: skip
        print(_table(columns, values))
    return 0


def _prepared(client: InfluxQL, settings: CollectorSettings) -> bool:
    """Whether the collector (or ``retention apply``) has made the ``history`` policy."""
    from collector import retention  # noqa: PLC0415
    from collector.influx import HISTORY  # noqa: PLC0415

    if settings.influx.api != "v1":
        return True  # 2.x buckets are made by hand; nothing to check here
    return any(p.name == HISTORY for p in retention.policies(client, settings.influx.database))


def _latest_rollout(client: InfluxQL, settings: CollectorSettings) -> list[Row] | None:
    """The collector's own latest figures, when fresh; the note on stderr says when."""
    from collector.rollout import latest_rows  # noqa: PLC0415

    interval = settings.rollout.interval_s
    found = latest_rows(client, timedelta(seconds=2 * interval))
    if found is None:
        print(f"school-collector: no collector wrote the rollout in the last {2 * interval:g} s "
              "(rollout.interval_s, twice); computing it now from raw points, which takes "
              "longer", file=sys.stderr)  # fmt: skip
        return None
    at, rows = found
    print(f"school-collector: as the collector computed it at {at:%Y-%m-%d %H:%M:%S} UTC from "
          "its current state; --at TIME computes it from raw points", file=sys.stderr)  # fmt: skip
    return rows


def _provision(args: argparse.Namespace) -> int:
    from collector.provision import COLLECTOR_USER, Topics, provision  # noqa: PLC0415
    from collector.registry import RegistryError, SchoolRegistry  # noqa: PLC0415

    if not args.ca_file.is_file():
        print(f"school-collector: --ca-file {args.ca_file} does not exist", file=sys.stderr)
        return EXIT_CONFIG
    try:
        registry = SchoolRegistry.load(args.registry)
        summary = provision(
            registry,
            args.out,
            broker_url=args.broker_url,
            ca_file=args.ca_file,
            bundle_ca_path=args.bundle_ca_path,
            rotate=frozenset(args.rotate),
            collectors=tuple(args.collector) or (COLLECTOR_USER,),
            topics=Topics(args.topic_root, args.dead_letter_topic, args.capabilities_topic),
            config_key=args.config_key,
        )
    except (RegistryError, ValueError, OSError) as exc:
        print(f"school-collector: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{len(registry)} schools: {summary}")
    for school_id in summary.revoked:
        print(f"revoked: {school_id} (no longer in the registry, or no longer a --collector)")
    mosquitto = args.out / "mosquitto"
    print(
        f"install {mosquitto / 'passwords'} and {mosquitto / 'acl'} as the broker's "
        "password_file and acl_file, then `systemctl reload mosquitto` (revoked and rotated "
        f"accounts are disconnected at once); give each school its {args.out / 'schools'}/<id>/ "
        f"bundle and each collector its {args.out / 'collector'}/<name>.toml"
    )
    return 0


def _query(settings: CollectorSettings, influxql: str, fmt: str, config: Path | None) -> int:
    from collector.influx import InfluxError  # noqa: PLC0415
    from collector.influx.query import InfluxQL  # noqa: PLC0415

    client = InfluxQL(settings.influx)
    try:
        found = client.query(influxql, epoch=None)
    except InfluxError as exc:
        print(f"school-collector: query failed: {influx_problem(exc, settings, config)}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    finally:
        client.close()
    if fmt == "json":
        print(json.dumps([{"name": s.name, "tags": s.tags, "rows": s.rows()} for s in found]))
        return 0
    if not found:
        print("(no rows)")
    for series in found:
        title = series.name + "".join(f" {k}={v}" for k, v in sorted(series.tags.items()))
        print(f"== {title}")
        print(_table(series.columns, series.values))
    return 0


def _report(settings: CollectorSettings, args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401, PLC0415

        from collector.report import Period, ReportError, gather, render  # noqa: PLC0415
    except ImportError:
        print("school-collector report: matplotlib is missing; install the report extra: "
              ".venv/bin/pip install -e '.[report]' (deploy/setup.sh does)",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    from collector.influx import InfluxError  # noqa: PLC0415
    from collector.influx.query import InfluxQL  # noqa: PLC0415

    try:
        period = Period.parse(args.period or f"{datetime.now(UTC):%Y-%m}")
    except ReportError as exc:
        print(f"school-collector report: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    out = args.out or Path(f"report-{period.name}.html")
    client = InfluxQL(settings.influx)
    try:
        report = gather(
            client, period, settings.rollout.rules(),
            progress=lambda step: print(f"reading {step} ...", file=sys.stderr),
        )  # fmt: skip
    except ReportError as exc:
        print(f"school-collector report: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except InfluxError as exc:
        print(f"school-collector report: {influx_problem(exc, settings, args.config)}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    finally:
        client.close()
    try:
        out.write_text(render(report), encoding="utf-8")
    except OSError as exc:
        print(f"school-collector report: cannot write {out}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {out}: {period.name}, figures at {report.moment:%Y-%m-%d %H:%M} UTC; open it "
          "in any browser, offline")  # fmt: skip
    return 0


def influx_problem(exc: Exception, settings: CollectorSettings, config: Path | None) -> str:
    """An InfluxDB error with the settings it came from and what to do about it."""
    from collector.influx import InfluxUnavailable  # noqa: PLC0415

    url, database = settings.influx.url, settings.influx.database
    where = (
        f"InfluxDB at {url} (influx.url: {origin('influx.url', ENV_PREFIX, config)}), "
        f"database {database!r} (influx.database: "
        f"{origin('influx.database', ENV_PREFIX, config)})"
    )
    text = str(exc)
    if isinstance(exc, InfluxUnavailable) or "cannot reach" in text:
        return (
            f"cannot reach {where}: {text}. Start InfluxDB, or point influx.url at it "
            "(--config FILE or SCHOOL_COLLECTOR_INFLUX__URL); for the demo's services: "
            "set -a; . .run/stack/stack.env; set +a"
        )
    if "retention policy not found" in text or "database not found" in text:
        return (
            f"{where}: {text}. The database is not prepared yet: start the collector once "
            "(school-collector run prepares it), or run: school-collector retention apply"
        )
    return f"{where}: {text}"


def _table(columns: list[str], values: list[list[Any]]) -> str:
    cells = [columns] + [["" if v is None else str(v) for v in row] for row in values]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
