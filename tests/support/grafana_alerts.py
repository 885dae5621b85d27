"""Evaluate a provisioned Grafana alert rule as Grafana's server-side expressions do.

Grafana cannot run here. This evaluator follows Grafana's own code (10.4 to 12),
read in grafana/grafana, so that a rule Grafana would refuse is refused here too:

- **Queries** (pkg/tsdb/influxdb/influxql, time_series format): one series per
  InfluxQL series and selected column; its labels are the GROUP BY tags. A
  query returning nothing makes the whole rule NoData (pkg/services/ngalert/eval,
  ``IsNoData``). A table-format query cannot be alerted on ("input data must be
  a wide series").
- **reduce** (pkg/expr/mathexp/reduce.go): one number per series, labels kept;
  strict mode by default (a null or NaN point makes sum, mean, min and max NaN;
  ``last`` of a null point is null), ``dropNN`` and ``replaceNN`` as Grafana's.
  A number passes through.
- **math** (pkg/expr/mathexp/exp.go): numbers are joined by labels (equal, or one
  set containing the other, or either empty; unmatched ones dropped), comparison
  and logic give 1 or 0. Maths on a series gives a series.
- **threshold** (pkg/expr/threshold.go): gt, lt, within_range, outside_range (and
  the *_included, eq, ne, gte, lte of 11.6 and later) give 1 or 0.
- **The condition** must be numbers: a series there is Grafana's error "looks like
  time series data, only reduced data can be alerted on" (eval.go,
  ``evaluateExecutionResult``); duplicate label sets are an error too. A number
  that is not 0 fires (NaN included), 0 is normal, null is NoData.
- **$values** (eval.go, ``queryDataResponseToExecutionResults``) holds only results
  that are numbers (reduce, math, threshold), each matched to an instance whose
  labels equal, contain or are contained in its own; ``$values.A`` of a query is
  missing, and Grafana prints a missing value as ``[no value]``.
"""

from __future__ import annotations

import math
import operator
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collector.influx.query import InfluxQL

Labels = frozenset[tuple[str, str]]
NOT_REDUCED = "looks like time series data, only reduced data can be alerted on."
NO_VALUE = "[no value]"


class RuleError(Exception):
    """What Grafana reports as the rule's Error state."""


@dataclass(frozen=True)
class Series:
    labels: Labels
    points: tuple[float | None, ...]


@dataclass(frozen=True)
class Number:
    labels: Labels
    value: float | None


Result = list[Series] | list[Number]


@dataclass(frozen=True)
class Instance:
    labels: dict[str, str]
    state: str  # Alerting, Normal or NoData
    values: dict[str, Number]


# -- queries ------------------------------------------------------------------


def run_query(client: InfluxQL, item: dict[str, Any]) -> list[Series]:
    """One data query of a rule, with $timeFilter over its relativeTimeRange.

    Grafana's InfluxQL backend renders it as ``time >= <from>ms and time <=
    <to>ms``, both ends in milliseconds since the epoch (renderTimeFilter in
    pkg/tsdb/influxdb/influxql).
    """
    model = item["model"]
    if model.get("resultFormat", "time_series") != "time_series":
        raise RuleError(f"input data must be a wide series but got type long ({item['refId']})")
    span = item["relativeTimeRange"]
    now_ms = time.time_ns() // 1_000_000
    window = f"time >= {now_ms - span['from'] * 1000}ms and time <= {now_ms - span['to'] * 1000}ms"
    if "$__interval" in model["query"]:
        raise RuleError("this evaluator does not expand $__interval; name the interval")
    found = []
    for series in client.query(model["query"].replace("$timeFilter", window)):
        labels = frozenset((k, v) for k, v in series.tags.items() if v)
        for column in range(1, len(series.columns)):
            points = tuple(
                None if row[column] is None else float(row[column]) for row in series.values
            )
            found.append(Series(labels, points))
    return found


# -- reduce ---------------------------------------------------------------------


def _strict(name: str, points: list[float | None]) -> float | None:
    """Grafana's reducers in strict mode (no ``settings.mode``)."""
    if name == "count":
        return float(len(points))
    if name == "last":
        return points[-1] if points else math.nan
    if any(p is None or math.isnan(p) for p in points):
        return math.nan
    values = [p for p in points if p is not None]
    if name == "sum":
        return float(sum(values))
    if not values:  # mean, min and max of nothing
        return math.nan
    pick: dict[str, Callable[[list[float]], float]] = {
        "mean": lambda v: sum(v) / len(v),
        "min": min,
        "max": max,
    }
    return float(pick[name](values))


def reduce(data: Result, reducer: str, settings: dict[str, Any]) -> list[Number]:
    name = reducer.lower()
    if name not in ("sum", "mean", "min", "max", "count", "last"):
        raise RuleError(f"reduction {reducer} not implemented")
    mode = settings.get("mode", "")
    if mode not in ("", "dropNN", "replaceNN"):
        raise RuleError(
            f"reducer mode '{mode}' is not supported. Supported only: [dropNN,replaceNN]"
        )

    def number(value: float | None) -> bool:
        return value is not None and math.isfinite(value)

    found = []
    for item in data:
        if isinstance(item, Number):
            found.append(item)
            continue
        points = list(item.points)
        if mode == "dropNN":
            points = [p for p in points if number(p)]
        elif mode == "replaceNN":
            points = [p if number(p) else float(settings["replaceWithValue"]) for p in points]
        value = _strict(name, points)
        if mode == "dropNN" and value is not None and math.isnan(value):
            value = None
        if mode == "replaceNN" and (value is None or math.isnan(value)):
            value = float(settings["replaceWithValue"])
        found.append(Number(item.labels, value))
    return found


# -- math -------------------------------------------------------------------------

_BINARY: dict[str, Callable[[float, float], float]] = {
    "||": lambda a, b: float(bool(a) or bool(b)),
    "&&": lambda a, b: float(bool(a) and bool(b)),
    "==": lambda a, b: float(a == b),
    "!=": lambda a, b: float(a != b),
    ">=": lambda a, b: float(a >= b),
    "<=": lambda a, b: float(a <= b),
    ">": lambda a, b: float(a > b),
    "<": lambda a, b: float(a < b),
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": lambda a, b: a / b if b else (math.nan if a == 0 else math.copysign(math.inf, a)),
    "%": math.fmod,
}
_LEVELS = [("||",), ("&&",), ("==", "!="), (">=", "<=", ">", "<"), ("+", "-"), ("*", "/", "%")]
_TOKEN = re.compile(
    r"\s*(\$\{?[A-Za-z_]\w*\}?|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\|\||&&|[=!<>]=|[-+*/%<>()!])"
)
Value = float | None


def _tokens(expression: str) -> list[str]:
    found, at = [], 0
    while at < len(expression.rstrip()):
        match = _TOKEN.match(expression, at)
        if not match:
            raise RuleError(f"math: cannot parse {expression!r} at {at}")
        found.append(match[1])
        at = match.end()
    return found


def _combine(a: Value, b: Value, op: str) -> Value:
    if a is None or b is None:
        return None
    if op not in ("||", "&&") and (math.isnan(a) or math.isnan(b)):
        return math.nan
    return _BINARY[op](a, b)


def _union(left: Result, right: Result, op: str) -> Result:
    """Pairs joined by labels, as Grafana's State.union does."""
    pairs = []
    for a in left:
        for b in right:
            if a.labels == b.labels or not a.labels or not b.labels:
                labels = a.labels or b.labels
            elif a.labels > b.labels or b.labels > a.labels:
                labels = a.labels | b.labels
            else:
                continue
            pairs.append((labels, a, b))
    if not pairs and len(left) == 1 and len(right) == 1:
        pairs = [(frozenset(), left[0], right[0])]
    out: list[Any] = []
    for labels, a, b in pairs:
        if isinstance(a, Number) and isinstance(b, Number):
            out.append(Number(labels, _combine(a.value, b.value, op)))
        else:
            xs = a.points if isinstance(a, Series) else None
            ys = b.points if isinstance(b, Series) else None
            size = len(xs if xs is not None else ys or ())
            out.append(
                Series(
                    labels,
                    tuple(
                        _combine(
                            xs[i] if xs is not None else a.value,  # type: ignore[union-attr]
                            ys[i] if ys is not None else b.value,  # type: ignore[union-attr]
                            op,
                        )
                        for i in range(size)
                    ),
                )
            )
    return out


def math_expression(expression: str, results: dict[str, Result]) -> Result:
    tokens = _tokens(expression)
    at = 0

    def operand() -> Result:
        nonlocal at
        token = tokens[at]
        at += 1
        if token == "(":
            inner = level(0)
            at += 1  # ")"
            return inner
        if token == "!":
            inner = operand()
            return [
                Number(i.labels, None if i.value is None else float(not i.value))
                if isinstance(i, Number)
                else Series(i.labels, tuple(None if p is None else float(not p) for p in i.points))
                for i in inner
            ]  # type: ignore[return-value]
        if token == "-":
            return _union([Number(frozenset(), 0.0)], operand(), "-")
        if token.startswith("$"):
            ref = token.strip("${}")
            if ref not in results:
                raise RuleError(f"math: {ref} is not a query or expression of this rule")
            return results[ref]
        return [Number(frozenset(), float(token))]

    def level(depth: int) -> Result:
        nonlocal at
        if depth == len(_LEVELS):
            return operand()
        left = level(depth + 1)
        while at < len(tokens) and tokens[at] in _LEVELS[depth]:
            op = tokens[at]
            at += 1
            left = _union(left, level(depth + 1), op)
        return left

    result = level(0)
    if at != len(tokens):
        raise RuleError(f"math: unexpected {tokens[at]!r} in {expression!r}")
    return result


# -- threshold ----------------------------------------------------------------------

_THRESHOLDS: dict[str, Callable[[float, list[float]], bool]] = {
    "gt": lambda v, p: v > p[0],
    "lt": lambda v, p: v < p[0],
    "eq": lambda v, p: v == p[0],
    "ne": lambda v, p: v != p[0],
    "gte": lambda v, p: v >= p[0],
    "lte": lambda v, p: v <= p[0],
    "within_range": lambda v, p: p[0] < v < p[1],
    "outside_range": lambda v, p: v < p[0] or v > p[1],
    "within_range_included": lambda v, p: p[0] <= v <= p[1],
    "outside_range_included": lambda v, p: v <= p[0] or v >= p[1],
}


def threshold(data: Result, conditions: list[dict[str, Any]]) -> Result:
    if len(conditions) != 1:
        raise RuleError("threshold expression requires exactly one condition")
    evaluator = conditions[0]["evaluator"]
    test = _THRESHOLDS.get(evaluator["type"])
    if test is None:
        raise RuleError(f"threshold: unknown evaluator {evaluator['type']!r}")
    params = [float(p) for p in evaluator["params"]]

    def judge(value: float | None) -> float | None:
        return None if value is None else float(test(value, params))

    return [
        Number(i.labels, judge(i.value))
        if isinstance(i, Number)
        else Series(i.labels, tuple(judge(p) for p in i.points))
        for i in data
    ]  # type: ignore[return-value]


# -- the rule -------------------------------------------------------------------------


def evaluate(rule: dict[str, Any], client: InfluxQL) -> list[Instance]:
    """The rule's instances now, or RuleError where Grafana would put the rule in Error."""
    results: dict[str, Result] = {}
    for item in rule["data"]:
        if item["datasourceUid"] == "__expr__":
            continue
        series = run_query(client, item)
        if not series:  # any query without data: the whole rule is NoData
            return [Instance({"datasource_uid": item["datasourceUid"]}, "NoData", {})]
        results[item["refId"]] = series
    pending = [item for item in rule["data"] if item["datasourceUid"] == "__expr__"]
    while pending:  # Grafana orders expressions by their dependencies
        ready = [i for i in pending if _inputs(i["model"]) <= set(results)]
        if not ready:
            raise RuleError(f"expressions depend on missing refs: {[i['refId'] for i in pending]}")
        for item in ready:
            results[item["refId"]] = _expression(item["model"], results)
            pending.remove(item)
    condition = results.get(rule["condition"])
    if condition is None:
        raise RuleError(f"condition {rule['condition']} is not a refId of the rule")
    if any(isinstance(i, Series) for i in condition):
        raise RuleError(
            "invalid format of evaluation results for the alert definition "
            f"{rule['condition']}: {NOT_REDUCED}"
        )
    seen = [i.labels for i in condition]
    if len(seen) != len(set(seen)):
        raise RuleError("frame cannot uniquely be identified by its labels")
    numbers = {ref: r for ref, r in results.items() if r and all(isinstance(i, Number) for i in r)}
    return [_instance(i, numbers) for i in condition]  # type: ignore[arg-type]


def _inputs(model: dict[str, Any]) -> set[str]:
    if model["type"] == "math":
        return {t.strip("${}") for t in _tokens(model["expression"]) if t.startswith("$")}
    return {model["expression"]}


def _expression(model: dict[str, Any], results: dict[str, Result]) -> Result:
    kind = model["type"]
    if kind == "reduce":
        return reduce(results[model["expression"]], model["reducer"], model.get("settings", {}))
    if kind == "math":
        return math_expression(model["expression"], results)
    if kind == "threshold":
        return threshold(results[model["expression"]], model["conditions"])
    raise RuleError(f"expression type {kind!r} is not supported here")


def _instance(number: Number, captured: dict[str, list[Number]]) -> Instance:
    values = {}
    for ref, items in captured.items():
        for item in items:
            if item.labels <= number.labels or number.labels <= item.labels:
                values[ref] = item
                break
    state = "NoData" if number.value is None else "Normal" if number.value == 0 else "Alerting"
    return Instance(dict(number.labels), state, values)


# -- annotation templates ------------------------------------------------------------


def _format_float(value: float) -> str:
    """Go's strconv.FormatFloat(v, 'f', -1, 64), which $values.X prints."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = format(value, "f") if value.is_integer() else repr(value)
    return text.removesuffix(".000000") if value.is_integer() else text


_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")
_PRINTF = re.compile(r'printf\s+"([^"]*)"\s+(\$values\.\w+\.Value)')


def render(template: str, instance: Instance) -> str:
    """The subset of Go templates the rules use: $labels.x, $values.X, .Value, printf."""

    def value_of(path: str) -> str | float:
        parts = path.split(".")
        if parts[0] == "$labels" and len(parts) == 2:
            return instance.labels.get(parts[1], NO_VALUE)
        if parts[0] == "$values" and len(parts) in (2, 3):
            found = instance.values.get(parts[1])
            if found is None:
                return NO_VALUE
            value = math.nan if found.value is None else found.value
            if len(parts) == 3:
                if parts[2] != "Value":
                    raise RuleError(f"template: unsupported field {path}")
                return value
            return _format_float(value)
        raise RuleError(f"template: unsupported {path!r}")

    def action(match: re.Match[str]) -> str:
        body = match[1]
        printf = _PRINTF.fullmatch(body)
        if printf:
            value = value_of(printf[2])
            return NO_VALUE if isinstance(value, str) else printf[1] % value
        value = value_of(body)
        return value if isinstance(value, str) else str(value)

    return _ACTION.sub(action, template)


def fires(rule: dict[str, Any], instance: Instance) -> bool:
    """Whether Grafana notifies for this instance (before ``for``): NoData per noDataState."""
    if instance.state == "NoData":
        return bool(rule.get("noDataState", "NoData") in ("Alerting", "NoData"))
    return instance.state == "Alerting"
