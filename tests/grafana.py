"""The Prometheus requests Grafana sends for a dashboard: the parts of Grafana our dashboard uses.

A dashboard's expressions are templates; Prometheus only sees them after Grafana has
replaced the variables and chosen a step. Rendering them here as Grafana 10 does lets a
test send exactly those requests to a real Prometheus. Followed from Grafana's sources:
template_srv.ts (variable syntax, the All value, `${var:regex}`), the Prometheus data
source's datasource.ts (escaping of variable values, `$__rate_interval`, `$__range`,
step alignment), metric_find_query.ts (`label_values`) and rangeutil.ts (`$__interval`).
What this rendering does not know (other variable queries and formats, regex filters,
interval factors) is refused with a `DashboardError`, never skipped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterator

VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")
LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?([a-zA-Z_$][a-zA-Z0-9_]*)\)\s*$")
DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
ALL = "$__all"
PIXELS_PER_COLUMN = 80
"""Grafana asks for one point per pixel of a panel's width: 80 px per grid column on a 1920 px screen."""


class DashboardError(ValueError):
    """Something in the dashboard Grafana would not render as intended (or this rendering does not know)."""


@dataclass(frozen=True)
class Request:
    """One range query Grafana sends to Prometheus for a panel target or an annotation."""

    title: str
    """The panel's title as the dashboard writes it; for an annotation, its `source`."""
    source: str
    """Where the query comes from, for messages: the panel's rendered title and the target's refId."""
    expr: str
    """The PromQL sent, or the template when `error` says why it cannot be rendered."""
    start: float = 0
    end: float = 0
    step: float = 0
    legend: str = ""
    error: str = ""


class Dashboard:
    """A dashboard as Grafana shows it over `[start, end]` (epoch seconds) from one Prometheus.

    Args:
        model: The dashboard JSON.
        api: Prometheus' HTTP API, `api("label/name/values", **params) -> body`.
        scrape_interval_s: The data source's scrape interval setting (Grafana's minimum step).
    """

    def __init__(self, model: dict, api: Callable[..., dict], start: float, end: float, scrape_interval_s: float):
        self.model, self.api = model, api
        self.start, self.end, self.scrape_interval_s = start, end, scrape_interval_s
        self.variables = {variable["name"]: variable for variable in model["templating"]["list"]}
        self._options: dict[str, list[str]] = {}

    def query_variables(self) -> list[str]:
        return [name for name, variable in self.variables.items() if variable["type"] == "query"]

    def options(self, name: str) -> list[str]:
        """A query variable's values, fetched as Grafana's Prometheus data source does (`label_values` only).

        Raises:
            DashboardError: the query is not `label_values(...)`, Prometheus refused it, or it has no values.
        """
        if name not in self._options:
            variable = self.variables[name]
            self._check_datasource(variable.get("datasource"), f"variable {name}")
            if variable.get("regex"):
                raise DashboardError(f"variable {name}: has a regex filter, which this rendering does not apply")
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = LABEL_VALUES.match(self.render(query, {}, self.scrape_interval_s))
            if not match:
                raise DashboardError(f"variable {name}: {query!r} is not label_values(...), the only variable query known here")
            metric, label = match.groups()
            params = {"start": str(self.start), "end": str(self.end)} | ({"match[]": metric} if metric else {})
            body = self.api(f"label/{label}/values", **params)
            if body["status"] != "success":
                raise DashboardError(f"variable {name}: {query!r}: {body['error']}")
            if not body["data"]:
                raise DashboardError(f"variable {name}: {query!r} has no values over the time range")
            self._options[name] = body["data"]
        return self._options[name]

    def requests(self) -> Iterator[Request]:
        """The range queries of every panel Grafana draws (hidden targets excepted), then of every enabled annotation.

        What cannot be rendered comes as a request with its `error`, so that all problems are seen at once.
        """
        for panel, scoped in self._panels():
            for target in panel.get("targets", []):
                if not target.get("hide"):
                    try:
                        yield self._panel_request(panel, scoped, target)
                    except DashboardError as err:
                        source = f"panel {panel['title']!r} ({target['refId']})"
                        yield Request(panel["title"], source, target["expr"], error=str(err))
        for annotation in self.model["annotations"]["list"]:
            if annotation.get("enable", True) and "expr" in annotation:
                source = f"annotation {annotation['name']!r}"
                try:
                    self._check_datasource(annotation.get("datasource"), source)
                    step = self.step(max_data_points=None, min_step=annotation.get("step"))
                    yield Request(source, source, self.render(annotation["expr"], {}, step), *self._aligned(step), step)
                except DashboardError as err:
                    yield Request(source, source, annotation["expr"], error=str(err))

    def _panel_request(self, panel: dict, scoped: dict[str, str], target: dict) -> Request:
        step = self.step(max_data_points=panel.get("maxDataPoints", panel["gridPos"]["w"] * PIXELS_PER_COLUMN),
                         min_step=target.get("interval") or panel.get("interval"))
        source = f"panel {self.render(panel['title'], scoped, step)!r} ({target['refId']})"
        if target.get("intervalFactor", 1) != 1 or target.get("instant"):
            raise DashboardError("an interval factor or instant query, which this rendering does not know")
        self._check_datasource(target.get("datasource", panel.get("datasource")), source)
        expr = self.render(target["expr"], scoped, step)
        return Request(panel["title"], source, expr, *self._aligned(step), step, target.get("legendFormat", ""))

    def render(self, text: str, scoped: dict[str, str], step: float) -> str:
        """`text` with every variable replaced; `scoped` holds a repeated panel's own value.

        Raises:
            DashboardError: a variable the dashboard does not define, or a data source variable in a query.
        """
        builtins = self._time_variables(step)

        def value_of(match: re.Match) -> str:
            name, fmt, field = match[1] or match[2] or match[4], match[3] or match[6], match[5]
            if name in builtins:
                return builtins[name]
            variable = self.variables.get(name)
            if variable is None:
                raise DashboardError(f"${name} is not a variable of the dashboard")
            if variable["type"] == "datasource":
                raise DashboardError(f"${name} is a data source variable: it belongs in a datasource field, not in a query")
            if field:
                raise DashboardError(f"${{{name}.{field}}}: field paths are not known here")
            value = scoped[name] if name in scoped else self._current(name)
            if value == ALL:
                if variable.get("allValue"):
                    return variable["allValue"]  # Grafana inserts a custom All value as written, unescaped
                value = self.options(name)
            return format_value(value, variable, fmt)

        return VARIABLE.sub(value_of, text)

    def _panels(self) -> Iterator[tuple[dict, dict[str, str]]]:
        """Each panel drawn, those in collapsed rows too; a repeated panel once per selected value, scoped to it."""
        for panel in self.model["panels"]:
            for drawn in [panel, *panel.get("panels", [])]:
                if drawn["type"] == "row":
                    continue
                if not (name := drawn.get("repeat")):
                    yield drawn, {}
                    continue
                try:
                    current = self._current(name)
                    values = self.options(name) if current == ALL else [current] if isinstance(current, str) else current
                except DashboardError:
                    yield drawn, {}  # unscoped: rendering its queries fails with the variable's error
                    continue
                yield from ((drawn, {name: value}) for value in values)

    def _current(self, name: str) -> str | list[str]:
        """The selection the dashboard is saved with; with none, Grafana selects the first option."""
        value = self.variables[name].get("current", {}).get("value")
        if value in (ALL, [ALL]):
            return ALL
        return value if value else self.options(name)[0]

    def _check_datasource(self, reference: dict | None, source: str) -> None:
        """Queries must go to the data source the dashboard's `datasource` variable selects (a Prometheus one)."""
        uid = (reference or {}).get("uid", "")
        match = VARIABLE.fullmatch(uid)
        variable = self.variables.get(match and (match[1] or match[2] or match[4]), {})
        if variable.get("type") != "datasource" or variable.get("query") != "prometheus":
            raise DashboardError(f"{source} queries data source {reference!r}, not a Prometheus data source variable")

    def step(self, max_data_points: int | None, min_step: str | None) -> float:
        """Grafana's `$__interval`: the time range over the data points, never under the minimum step.

        The minimum is the query's own (`interval`, an annotation's `step`), else the data
        source's scrape interval. Grafana rounds the quotient to a "nice" value first
        (rangeutil.roundInterval); over a short run's window the minimum wins, so that
        rounding is left out.
        """
        floor = seconds(min_step) if min_step else self.scrape_interval_s
        spread = (self.end - self.start) / max_data_points if max_data_points else 0
        return math.ceil(max(floor, spread) * 1000) / 1000

    def _aligned(self, step: float) -> tuple[float, float]:
        """The query's start and end, rounded down to multiples of the step as Grafana sends them."""
        return math.floor(self.start / step) * step, math.floor(self.end / step) * step

    def _time_variables(self, step: float) -> dict[str, str]:
        rate_interval = max(step + self.scrape_interval_s, 4 * self.scrape_interval_s)
        range_ms = round((self.end - self.start) * 1000)
        return {
            "__interval": duration(step),
            "__interval_ms": str(round(step * 1000)),
            "__rate_interval": duration(rate_interval),
            "__range": f"{round(range_ms / 1000)}s",
            "__range_s": str(round(range_ms / 1000)),
            "__range_ms": str(range_ms),
        }


def format_value(value: str | list[str], variable: dict, fmt: str | None) -> str:
    """A variable's value in a Prometheus query.

    Without a format the data source escapes it: a single-value variable for a string
    literal, a multi-value or All one for a regex (`=~`), several values as `(a|b)`;
    `${var:regex}` escapes each value for a regex the same way, with single backslashes.
    """
    values = [value] if isinstance(value, str) else value
    if fmt is None and not (variable.get("multi") or variable.get("includeAll")):
        return values[0].replace("\\", "\\\\").replace("'", "\\\\'")
    if fmt is None:
        escaped = [re.sub(r"[$^*{}\[\]'+?.()|]", r"\\\\\g<0>", v.replace("\\", "\\\\\\\\")) for v in values]
    elif fmt == "regex":
        escaped = [re.sub(r"[\\^$*+?.()|\[\]{}/]", r"\\\g<0>", v) for v in values]
    else:
        raise DashboardError(f"${{{variable['name']}:{fmt}}}: only the regex format is known here")
    return escaped[0] if len(escaped) == 1 else f"({'|'.join(escaped)})"


def seconds(text: str) -> float:
    """A Grafana duration ("15s", "1m", "500ms") in seconds."""
    match = DURATION.match(text)
    if not match:
        raise DashboardError(f"{text!r} is not a duration like 15s")
    return int(match[1]) * UNIT_SECONDS[match[2]]


def duration(value: float) -> str:
    """Seconds as a PromQL duration: whole seconds, else milliseconds (PromQL takes no fractions)."""
    return f"{value:g}s" if value == int(value) else f"{round(value * 1000)}ms"
