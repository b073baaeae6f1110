"""The Grafana dashboard evaluated by a real Prometheus that scraped a real run's exporter.

Every expression of the dashboard (panel targets, annotations, variable queries) is
rendered as Grafana renders it (`grafana.Dashboard`) and sent to Prometheus' HTTP API
as Grafana sends it, over the time the run trained.
"""

from __future__ import annotations

import json
import math
import re
import time
from functools import partial

import pyarrow.fs
import pytest

from grafana import ALL, Dashboard, DashboardError, format_value
from pbt_job import metrics
from pbt_job.run_folder import RunFiles
from pbt_job.storage import parse_storage_uri
from pbt_job.training.config import load_config
from pbt_job.training.run import train
from prometheus_server import PrometheusServer, prometheus_scraping
from test_cli import TINY
from test_metrics import DASHBOARD, dashboard_expressions, exploits_followed_by_a_result

EMPTY_ON_A_HEALTHY_RUN: dict[str, str] = {}
"""Panels (by title) allowed to show no data after a healthy short run with exploits, with the reason.

None today; a panel of errors or retries would be one."""


@pytest.mark.slow
def test_every_dashboard_query_parses_and_shows_a_run_with_exploits(ray_start_2_cpus, tmp_path):
    """A population of 3 trains, deciding on an exploit at every iteration, while Prometheus scrapes it every second.

    Then, over the run's time: every variable lists values, every panel target and
    annotation parses, and each shows data (a finite value) unless `EMPTY_ON_A_HEALTHY_RUN`
    says why not; the labels a legend names are on every series it draws. All failures
    are reported together, by panel.
    """
    model = json.loads(DASHBOARD.read_text())
    assert set(EMPTY_ON_A_HEALTHY_RUN) <= {panel["title"] for panel in model["panels"]}
    job = load_config(TINY, ["pbt.population=3", "pbt.perturbation_interval=1", "stop.training_iteration=6"])
    with (metrics.serve(0, host="127.0.0.1") as exporter,
          prometheus_scraping([f"127.0.0.1:{exporter.port}"], tmp_path / "prometheus") as prometheus):
        prometheus.wait_scraped_after(time.time())
        started = time.time()
        outcome = train(job, parse_storage_uri(str(tmp_path)), "run", resume="never")
        looked_at = time.time() + longest_step(model, prometheus, started) + 2 * prometheus.scrape_interval_s
        prometheus.wait_scraped_after(looked_at, timeout_s=looked_at - time.time() + 30)
        failures, sent = dashboard_failures(model, prometheus, started, time.time())
    assert outcome.errors == 0
    lineage = RunFiles(partial(pyarrow.fs.LocalFileSystem), str(tmp_path / "run"), writer=False).lineage()
    assert exploits_followed_by_a_result(tmp_path / "run", lineage) > 0, "the run exploited, and a recipient reported after"
    assert sent >= sum(len(panel.get("targets", [])) for panel in model["panels"]), "every target was sent"
    assert not failures, "\n".join(failures)


def longest_step(model: dict, prometheus: PrometheusServer, start: float) -> float:
    """The longest step among the dashboard's queries over the run so far (a 15 s annotation's, today).

    Grafana rounds a query's end down to a multiple of its step, so the dashboard is looked
    at this long after the run: an exploit in the run's last seconds then falls before the
    last point of every query, as it does for a user who opens it a little later.
    """
    dashboard = Dashboard(model, prometheus.api, start, time.time(), prometheus.scrape_interval_s)
    return max(request.step for request in dashboard.requests())


def dashboard_failures(model: dict, prometheus: PrometheusServer, start: float, end: float) -> tuple[list[str], int]:
    """What is wrong with the dashboard over `[start, end]`, and how many queries were sent."""
    dashboard = Dashboard(model, prometheus.api, start, end, prometheus.scrape_interval_s)
    failures = []
    for name in dashboard.query_variables():
        try:
            dashboard.options(name)
        except DashboardError as err:
            failures.append(str(err))
    requests = list(dashboard.requests())
    for request in requests:
        if request.error:
            failures.append(f"{request.source}: {request.expr!r}: {request.error}")
            continue
        body = prometheus.api("query_range", query=request.expr, start=str(request.start), end=str(request.end),
                              step=str(request.step))
        if body["status"] != "success":
            failures.append(f"{request.source}: {request.expr!r}: {body['errorType']}: {body['error']}")
            continue
        drawn = [series for series in body["data"]["result"] if any(v != "NaN" for _, v in series["values"])]
        if not drawn and request.title not in EMPTY_ON_A_HEALTHY_RUN:
            failures.append(f"{request.source}: {request.expr!r}: no data over the run")
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", request.legend):
            if any(label not in series["metric"] for series in drawn):
                failures.append(f"{request.source}: legend {request.legend!r}: {label} is not a label of {request.expr!r}")
    return failures, len(requests)


def test_multi_value_variables_are_matched_as_regexes():
    """Grafana escapes a multi-value or All variable's values for a regex (`a.b` becomes `a\\\\.b`): `=` matches them by luck."""
    model = json.loads(DASHBOARD.read_text())
    multi = [v["name"] for v in model["templating"]["list"] if v.get("multi") or v.get("includeAll")]
    for expr in dashboard_expressions(model):
        for name in multi:
            for operator in re.findall(rf'(=~|!~|!=|=)\s*"[^"]*\$\{{?{name}\b', expr):
                assert operator in ("=~", "!~"), f"{expr!r}: ${name} after {operator}"


MULTI = {"name": "hp", "type": "query", "multi": True, "includeAll": True, "current": {"value": ALL}}
DATASOURCE = {"name": "datasource", "type": "datasource", "query": "prometheus"}


def shown_over_10_minutes(*variables: dict) -> Dashboard:
    """A dashboard holding only `variables`, over 10 minutes of a Prometheus data source scraped every 15 s."""
    model = {"templating": {"list": list(variables)}, "annotations": {"list": []}, "panels": []}
    return Dashboard(model, api=None, start=0, end=600, scrape_interval_s=15)


def test_rate_interval_is_four_scrapes_or_one_step_more():
    """Grafana: `$__rate_interval` = max(`$__interval` + scrape interval, 4 x scrape interval)."""
    dashboard = shown_over_10_minutes()
    assert dashboard.render("rate(x[$__rate_interval])", {}, step=15) == "rate(x[60s])"
    assert dashboard.render("rate(x[$__rate_interval]) $__interval ${__interval_ms}", {}, step=120) == "rate(x[135s]) 120s 120000"
    assert dashboard.render("[[__range]] $__range_s", {}, step=15) == "600s 600"


def test_variable_values_are_escaped_as_grafanas_prometheus_data_source_does():
    """Multi-value or All variables become regexes (`=~`), `(a|b)` for several values; single-value ones string literals."""
    assert format_value(["lr", "entropy.coeff"], MULTI, None) == r"(lr|entropy\\.coeff)"
    assert format_value(["lr", "entropy.coeff"], MULTI, "regex") == r"(lr|entropy\.coeff)"
    assert format_value("a.b'c", {"name": "one", "type": "custom"}, None) == r"a.b\\'c"
    assert shown_over_10_minutes(MULTI).render('x{name=~"$hp"}', {"hp": "lr"}, step=15) == 'x{name=~"lr"}', "a repeat's own value"


@pytest.mark.parametrize(("expr", "needle"), [
    ('x{trial="$trial"}', "$trial is not a variable of the dashboard"),
    ('x{ds="$datasource"}', "belongs in a datasource field"),
    ('x{name=~"${hp:csv}"}', "only the regex format"),
])
def test_what_grafana_would_not_render_as_meant_is_an_error(expr, needle):
    with pytest.raises(DashboardError, match=re.escape(needle)):
        shown_over_10_minutes(DATASOURCE, MULTI).render(expr, {"hp": "lr"}, step=15)


def test_the_step_spreads_the_range_over_the_points_but_never_under_the_minimum():
    """One point per pixel of a half-width panel (960 px) over 10 minutes would be 0.625 s: the scrape interval wins."""
    dashboard = shown_over_10_minutes()
    assert dashboard.step(max_data_points=960, min_step=None) == 15
    assert dashboard.step(max_data_points=10, min_step=None) == 60
    assert dashboard.step(max_data_points=960, min_step="30s") == 30
    assert math.isclose(dashboard.step(max_data_points=None, min_step="500ms"), 0.5)
