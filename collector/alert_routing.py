"""Who receives Grafana's alerts: contact points, the notification policy and the message.

``school-collector alert-routing TEAMS.toml`` turns a small teams file into
Grafana's alerting provisioning (contact points, policies, templates). The
national team receives everything no region team takes; a region's team
receives its region's alerts. Notifications are grouped by rule and region: one
message per rule and region lists every school in it, and one more says when
they recover, instead of one message per school.

Secrets never go in the teams file or the output: the Telegram bot token and
any webhook credentials are named as environment variables, which Grafana
expands when it loads the file (``$__env{NAME}``). Grafana expands the
environment in contact-point settings, so a ``$`` of the teams file's own is
written ``$$``.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

TELEGRAM_TOKEN_ENV = "SCHOOL_MONITOR_TELEGRAM_BOT_TOKEN"  # noqa: S105 - a name, not a secret
GROUP_BY = ["alertname", "grafana_folder", "region"]
TIMING = {"group_wait": "1m", "group_interval": "10m", "repeat_interval": "12h"}
TITLE = '{{ template "school-monitor.title" . }}'
MESSAGE = '{{ template "school-monitor.message" . }}'
LISTED = 50  # schools listed by name in one message; the rest are counted
# Go templates, as Grafana's notifications run them (not expanded as environment).
TEMPLATE = """\
{{ define "school-monitor.title" }}{{ if eq .Status "firing" }}[{{ len .Alerts.Firing }} \
firing]{{ else }}[resolved]{{ end }} {{ .CommonLabels.alertname }}{{ with .CommonLabels.region \
}} in {{ . }}{{ end }}{{ end }}
{{ define "school-monitor.message" }}{{ if .Alerts.Firing }}{{ len .Alerts.Firing }} firing:
{{ range $i, $a := .Alerts.Firing }}{{ if lt $i LISTED }}- {{ $a.Annotations.summary }}
{{ end }}{{ end }}{{ if gt (len .Alerts.Firing) LISTED }}(the first LISTED are listed; see \
Grafana for the rest)
{{ end }}{{ end }}{{ if .Alerts.Resolved }}{{ len .Alerts.Resolved }} recovered:
{{ range $i, $a := .Alerts.Resolved }}{{ if lt $i LISTED }}- {{ $a.Annotations.summary }}
{{ end }}{{ end }}{{ end }}{{ end }}
""".replace("LISTED", str(LISTED))
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class RoutingError(Exception):
    """The teams file is missing or wrong; the message names it and the setting."""


class Team(BaseModel):
    """Where one team's alerts go: any of e-mail, Telegram and a webhook."""

    model_config = ConfigDict(extra="forbid")

    email: list[str] = Field(default_factory=list)
    telegram_chat_id: str = ""
    webhook_url: str = ""
    webhook_token_env: str = ""  # an environment variable holding a Bearer token

    @field_validator("email")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if not re.fullmatch(r"[^@\s;,]+@[^@\s;,]+", address):
                raise ValueError(f"{address!r} is not an e-mail address")
        return value

    @field_validator("webhook_token_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if value and not _ENV_NAME.match(value):
            raise ValueError(f"{value!r}: name an environment variable (A-Z, 0-9, _)")
        return value

    def channels(self) -> int:
        return bool(self.email) + bool(self.telegram_chat_id) + bool(self.webhook_url)


class Teams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    national: Team
    regions: dict[str, Team] = Field(default_factory=dict)


def load_teams(path: Path) -> Teams:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise RoutingError(
            f"{path}: no such file; start from deploy/alert-teams.example.toml"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise RoutingError(f"{path}: not valid TOML: {exc}") from exc
    try:
        teams = Teams.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise RoutingError(f"{path}: {problems}") from exc
    for name, team in [("national", teams.national), *teams.regions.items()]:
        if not team.channels():
            raise RoutingError(
                f"{path}: team {name!r} has no email, telegram_chat_id or webhook_url"
            )
    return teams


def _uid(team: str, kind: str) -> str:
    """Grafana's uids: at most 40 characters of [A-Za-z0-9_-], whatever the region's name."""
    digest = hashlib.sha256(team.encode()).hexdigest()[:12]
    slug = re.sub(r"[^a-z0-9]+", "-", team.lower()).strip("-")[:14] or "team"
    return f"sm-{slug}-{digest}-{kind}"


def _literal(value: str) -> str:
    """``value`` as Grafana's environment expansion will leave it."""
    return value.replace("$", "$$")


def _contact_point(name: str, team: Team) -> dict[str, Any]:
    receivers: list[dict[str, Any]] = []
    if team.email:
        receivers.append(
            {
                "uid": _uid(name, "email"),
                "type": "email",
                "settings": {
                    "addresses": _literal(";".join(team.email)),
                    "singleEmail": True,
                    "subject": TITLE,
                    "message": MESSAGE,
                },
            }
        )
    if team.telegram_chat_id:
        receivers.append(
            {
                "uid": _uid(name, "telegram"),
                "type": "telegram",
                "settings": {
                    "bottoken": f"$__env{{{TELEGRAM_TOKEN_ENV}}}",
                    "chatid": _literal(team.telegram_chat_id),
                    "parse_mode": "None",
                    "message": f"{TITLE}\n{MESSAGE}",
                },
            }
        )
    if team.webhook_url:
        settings: dict[str, Any] = {
            "url": _literal(team.webhook_url),
            "httpMethod": "POST",
            "maxAlerts": 0,
            "title": TITLE,
            "message": MESSAGE,
        }
        if team.webhook_token_env:
            settings |= {
                "authorization_scheme": "Bearer",
                "authorization_credentials": f"$__env{{{team.webhook_token_env}}}",
            }
        receivers.append({"uid": _uid(name, "webhook"), "type": "webhook", "settings": settings})
    return {"orgId": 1, "name": contact_name(name), "receivers": receivers}


def contact_name(team: str) -> str:
    return f"school-monitor {team}"


def provisioning(teams: Teams) -> dict[str, Any]:
    """Grafana's alerting provisioning document (apiVersion 1)."""
    routes = [
        {
            "receiver": contact_name(region),
            "object_matchers": [["region", "=", region]],
            "group_by": GROUP_BY,
            **TIMING,
        }
        for region in sorted(teams.regions)
    ]
    return {
        "apiVersion": 1,
        "templates": [{"orgId": 1, "name": "school-monitor", "template": TEMPLATE}],
        "contactPoints": [
            _contact_point("national", teams.national),
            *(_contact_point(region, team) for region, team in sorted(teams.regions.items())),
        ],
        "policies": [
            {
                "orgId": 1,
                "receiver": contact_name("national"),
                "group_by": GROUP_BY,
                **TIMING,
                "routes": routes,
            }
        ],
    }


def render(teams: Teams) -> str:
    """The provisioning file's text, as JSON.

    Grafana's alerting provisioning reads ``.json`` as well as ``.yaml`` (it
    parses both as YAML), and JSON needs no library on the agents' machines,
    which install the same package.
    """
    return json.dumps(provisioning(teams), indent=2, ensure_ascii=False) + "\n"
