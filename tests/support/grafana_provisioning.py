"""Grafana's file-provisioning rules, as its loader applies them, for files it cannot load here.

Read from Grafana's source (pkg/services/provisioning): alerting/rules_types.go,
contact_point_types.go, notification_policy_types.go, text_templates_types.go,
values/values.go (environment expansion), datasources/types.go and
dashboards/types.go; ngalert/models/alert_rule.go for the enumerations. Grafana
ignores keys it does not know, silently: here an unknown key is an error,
because what it meant is lost.

Environment expansion (``$VAR``, ``${VAR}``, ``$__env{VAR}``; ``$$`` for a
literal ``$``) runs over rule titles and labels, contact-point settings and
policies, but not over annotations, query models or templates. So a ``$labels``
or ``$values`` left in an expanded field would be eaten as an empty variable.
"""

from __future__ import annotations

import re
from typing import Any

DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
UID = re.compile(r"^[a-zA-Z0-9_-]{1,40}$")
NO_DATA = {"Alerting", "NoData", "OK", "KeepLast"}
EXEC_ERROR = {"Alerting", "Error", "OK", "KeepLast"}
REDUCERS = {"sum", "mean", "min", "max", "count", "last"}
EVALUATORS = {"gt", "lt", "within_range", "outside_range"}  # every version from 10.4
EXPRESSIONS = {"math", "reduce", "threshold", "classic_conditions", "resample"}
MATCH_OPS = {"=", "!=", "=~", "!~"}
RECEIVERS: dict[str, set[str]] = {  # type -> required settings (grafana/alerting receivers)
    "email": {"addresses"},
    "telegram": {"bottoken", "chatid"},
    "webhook": {"url"},
}
PARSE_MODES = {"markdown", "markdownv2", "html", "none"}
# A `$` not part of `$$` or `$__env{...}`/`${...}`: expansion would replace what follows.
_STRAY = re.compile(r"(?<!\$)\$(?!\$|__env\{|\{)(?=[A-Za-z_])")

RULE_KEYS = {
    "uid", "title", "condition", "data", "for", "noDataState", "execErrState", "annotations",
    "labels", "isPaused", "dashboardUid", "panelId", "notification_settings",
}  # fmt: skip
DATA_KEYS = {"refId", "queryType", "relativeTimeRange", "datasourceUid", "model"}


def _keys(where: str, found: dict[str, Any], allowed: set[str], required: set[str]) -> list[str]:
    problems = [f"{where}: unknown key {k!r}" for k in sorted(set(found) - allowed)]
    problems += [f"{where}: {k!r} is required" for k in sorted(required - set(found))]
    return problems


def _duration(where: str, value: Any, *, nonzero: bool = False) -> list[str]:
    text = str(value)
    if not text or not DURATION.match(text):
        return [f"{where}: {value!r} is not a duration (5m, 1h, 0s)"]
    if nonzero and not re.search(r"[1-9]", text):
        return [f"{where}: must not be zero"]
    return []


def _expanded(where: str, value: Any) -> list[str]:
    """A field Grafana runs through environment expansion."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _expanded(f"{where}.{k}", v)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _expanded(f"{where}[{i}]", v)]
    if isinstance(value, str) and _STRAY.search(value):
        return [f"{where}: {value!r}: environment expansion would eat the `$` (write $$)"]
    return []


def check_rules(document: dict[str, Any]) -> list[str]:
    problems = _keys("file", document, {"apiVersion", "groups", "deleteRules"}, {"apiVersion"})
    for g, group in enumerate(document.get("groups", [])):
        where = f"groups[{g}]"
        problems += _keys(where, group, {"orgId", "name", "folder", "interval", "rules"},
                          {"name", "folder", "interval"})  # fmt: skip
        problems += _duration(f"{where}.interval", group.get("interval"), nonzero=True)
        uids = [rule.get("uid") for rule in group.get("rules", [])]
        problems += [f"{where}: uid {u!r} twice" for u in set(uids) if uids.count(u) > 1]
        for r, rule in enumerate(group.get("rules", [])):
            problems += _rule(f"{where}.rules[{r}] ({rule.get('uid')})", rule)
    return problems


def _rule(where: str, rule: dict[str, Any]) -> list[str]:
    problems = _keys(where, rule, RULE_KEYS, {"uid", "title", "condition", "data", "for"})
    if not UID.match(str(rule.get("uid", ""))):
        problems.append(f"{where}: uid must be 1-40 characters of [a-zA-Z0-9_-]")
    problems += _duration(f"{where}.for", rule.get("for"))
    if rule.get("noDataState", "NoData") not in NO_DATA:
        problems.append(f"{where}: noDataState {rule['noDataState']!r} not in {sorted(NO_DATA)}")
    if rule.get("execErrState", "Alerting") not in EXEC_ERROR:
        problems.append(f"{where}: execErrState {rule['execErrState']!r}")
    problems += _expanded(f"{where}.title", rule.get("title"))
    problems += _expanded(f"{where}.labels", rule.get("labels", {}))
    for field in ("labels", "annotations"):
        if not all(isinstance(v, str) for v in rule.get(field, {}).values()):
            problems.append(f"{where}.{field}: values must be strings")
    refs = [item.get("refId") for item in rule.get("data", [])]
    if rule.get("condition") not in refs:
        problems.append(f"{where}: condition {rule.get('condition')!r} is not a refId")
    for item in rule.get("data", []):
        problems += _query(f"{where}.data[{item.get('refId')}]", item, set(refs))
    return problems


def _query(where: str, item: dict[str, Any], refs: set[str]) -> list[str]:
    problems = _keys(where, item, DATA_KEYS, {"refId", "datasourceUid", "model"})
    model = item.get("model", {})
    if item.get("datasourceUid") != "__expr__":
        span = item.get("relativeTimeRange", {})
        if not isinstance(span.get("from"), int) or not isinstance(span.get("to", 0), int):
            problems.append(f"{where}: relativeTimeRange needs whole seconds from/to")
        return problems
    kind = model.get("type")
    if kind not in EXPRESSIONS:
        return [*problems, f"{where}: expression type {kind!r} not in {sorted(EXPRESSIONS)}"]
    if kind in ("reduce", "threshold") and model.get("expression") not in refs:
        problems.append(f"{where}: input {model.get('expression')!r} is not a refId")
    if kind == "reduce":
        if str(model.get("reducer", "")).lower() not in REDUCERS:
            problems.append(f"{where}: reducer {model.get('reducer')!r}")
        mode = model.get("settings", {}).get("mode")
        if mode is not None and mode not in ("dropNN", "replaceNN"):
            problems.append(f"{where}: reduce mode {mode!r} (Grafana takes dropNN or replaceNN)")
    if kind == "threshold":
        conditions = model.get("conditions", [])
        if len(conditions) != 1:
            problems.append(f"{where}: a threshold needs exactly one condition")
        for condition in conditions:
            evaluator = condition.get("evaluator", {})
            if evaluator.get("type") not in EVALUATORS:
                problems.append(f"{where}: evaluator {evaluator.get('type')!r}")
            wanted = 2 if "range" in str(evaluator.get("type")) else 1
            if len(evaluator.get("params", [])) < wanted:
                problems.append(f"{where}: evaluator needs {wanted} param(s)")
    return problems


def check_notifications(document: dict[str, Any]) -> list[str]:
    """Contact points, policies and templates of one alerting provisioning file."""
    allowed = {"apiVersion", "contactPoints", "policies", "templates", "deleteContactPoints",
               "resetPolicies", "deleteTemplates", "groups", "muteTimes"}  # fmt: skip
    problems = _keys("file", document, allowed, {"apiVersion"})
    names = set()
    uids: list[str] = []
    for c, point in enumerate(document.get("contactPoints", [])):
        where = f"contactPoints[{c}] ({point.get('name')})"
        problems += _keys(where, point, {"orgId", "name", "receivers"}, {"name", "receivers"})
        names.add(point.get("name"))
        for r, receiver in enumerate(point.get("receivers", [])):
            spot = f"{where}.receivers[{r}]"
            problems += _keys(spot, receiver, {"uid", "type", "settings", "disableResolveMessage"},
                              {"uid", "type", "settings"})  # fmt: skip
            uids.append(receiver.get("uid", ""))
            if not UID.match(str(receiver.get("uid", ""))):
                problems.append(f"{spot}: uid must be 1-40 characters of [a-zA-Z0-9_-]")
            kind = receiver.get("type")
            settings = receiver.get("settings") or {}
            if kind not in RECEIVERS:
                problems.append(f"{spot}: type {kind!r} not in {sorted(RECEIVERS)}")
                continue
            problems += [
                f"{spot}: settings.{k} is required for {kind}"
                for k in sorted(RECEIVERS[kind] - {k for k, v in settings.items() if v != ""})
            ]
            mode = settings.get("parse_mode")
            if kind == "telegram" and mode is not None and str(mode).lower() not in PARSE_MODES:
                problems.append(f"{spot}: parse_mode {mode!r}")
            problems += _expanded(f"{spot}.settings", settings)
    problems += [f"receiver uid {u!r} twice" for u in set(uids) if uids.count(u) > 1]
    for p, policy in enumerate(document.get("policies", [])):
        problems += _route(f"policies[{p}]", policy, names, root=True)
    for t, template in enumerate(document.get("templates", [])):
        where = f"templates[{t}]"
        problems += _keys(where, template, {"orgId", "name", "template"}, {"name", "template"})
        body = template.get("template", "")
        opened = len(re.findall(r"\{\{-?\s*(define|if|range|with|block)\b", body))
        closed = len(re.findall(r"\{\{-?\s*end\s*-?\}\}", body))
        if opened != closed:
            problems.append(f"{where}: {opened} blocks opened, {closed} closed")
    return problems


def _route(where: str, route: dict[str, Any], receivers: set[str], *, root: bool) -> list[str]:
    allowed = {"receiver", "group_by", "group_wait", "group_interval", "repeat_interval",
               "routes", "matchers", "object_matchers", "continue", "mute_time_intervals",
               "active_time_intervals"} | ({"orgId"} if root else set())  # fmt: skip
    problems = _keys(where, route, allowed, {"receiver"} if root else set())
    if "receiver" in route and route["receiver"] not in receivers:
        problems.append(f"{where}: receiver {route['receiver']!r} is not a contact point here")
    group_by = route.get("group_by", [])
    if "..." in group_by and len(group_by) > 1:
        problems.append(f"{where}: group_by cannot mix '...' with labels")
    if len(set(group_by)) != len(group_by):
        problems.append(f"{where}: group_by repeats a label")
    for key in ("group_wait", "group_interval", "repeat_interval"):
        if key in route:
            problems += _duration(f"{where}.{key}", route[key], nonzero=key != "group_wait")
    for m, matcher in enumerate(route.get("object_matchers", [])):
        if len(matcher) != 3 or matcher[1] not in MATCH_OPS:
            problems.append(
                f"{where}.object_matchers[{m}]: [label, op, value], op one of {MATCH_OPS}"
            )
    problems += _expanded(where, {k: v for k, v in route.items() if k != "routes"})
    for r, child in enumerate(route.get("routes", [])):
        problems += _route(f"{where}.routes[{r}]", child, receivers, root=False)
    return problems


def check_datasources(document: dict[str, Any]) -> list[str]:
    problems = _keys("file", document, {"apiVersion", "datasources", "deleteDatasources"},
                     {"apiVersion"})  # fmt: skip
    allowed = {"name", "type", "access", "orgId", "uid", "url", "user", "database",
               "basicAuth", "basicAuthUser", "withCredentials", "isDefault", "jsonData",
               "secureJsonData", "version", "editable"}  # fmt: skip
    for d, source in enumerate(document.get("datasources", [])):
        where = f"datasources[{d}]"
        problems += _keys(where, source, allowed, {"name", "type"})
        if source.get("access", "proxy") not in ("proxy", "direct"):
            problems.append(f"{where}: access {source['access']!r}")
    return problems


def check_dashboard_providers(document: dict[str, Any]) -> list[str]:
    problems = _keys("file", document, {"apiVersion", "providers"}, {"apiVersion", "providers"})
    allowed = {"name", "orgId", "folder", "folderUid", "type", "disableDeletion",
               "updateIntervalSeconds", "allowUiUpdates", "options"}  # fmt: skip
    for p, provider in enumerate(document.get("providers", [])):
        where = f"providers[{p}]"
        problems += _keys(where, provider, allowed, {"name", "options"})
        if provider.get("type", "file") != "file":
            problems.append(f"{where}: type {provider['type']!r} (file)")
        problems += _keys(f"{where}.options", provider.get("options", {}),
                          {"path", "foldersFromFilesStructure"}, {"path"})  # fmt: skip
    return problems
