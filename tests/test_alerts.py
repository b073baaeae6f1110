"""The chart's alerts, checked by the real promtool: rules as rendered, series in, alerts out.

`tests/data/alerts/*.yaml` are promtool unit-test files, one per alert, written against the
chart's defaults rendered as release `pbt-job` in namespace `training` (test_deploy's
"defaults" case). Each names `pbt-job-rules.yaml`, which the `rule_dir` fixture writes
beside copies of them from the rendered PrometheusRule's `spec.groups`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tool
from test_deploy import CASES, CHART, RELEASE, documents, helm, only

ALERT_TESTS = REPO / "tests" / "data" / "alerts"
RULE_FILE = "pbt-job-rules.yaml"
ALERTS = {
    "PbtPopulationStalled", "PbtTrialsErrored", "PbtExploitsSkipped", "PbtStorageRetrying", "PbtThroughputCollapsed",
    "PbtExploitsSlow",
}
JOB_SELECTOR = 'namespace="training",job="training/pbt-job"'
"""The series of this release's PodMonitor: prometheus-operator sets job="<namespace>/<PodMonitor name>"."""


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def rendered_rules(*helm_args: str) -> list[dict]:
    """The rules of the PrometheusRule `helm template` renders with `helm_args` (the defaults case without any)."""
    if helm_args:
        proc = helm("template", RELEASE, str(CHART), "--namespace", "training", *helm_args)
        assert proc.returncode == 0, proc.stderr
        docs = tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)
    else:
        docs = documents("defaults")
    return [rule for group in only(docs, "PrometheusRule")["spec"]["groups"] for rule in group["rules"]]


@pytest.fixture()
def rule_dir(tmp_path) -> Path:
    """tmp_path holding the rendered rule file and the unit-test files that read it."""
    groups = only(documents("defaults"), "PrometheusRule")["spec"]["groups"]
    (tmp_path / RULE_FILE).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    for test_file in ALERT_TESTS.glob("*.yaml"):
        shutil.copy(test_file, tmp_path)
    return tmp_path


def test_rendered_rules_pass_promtool_check(rule_dir):
    proc = promtool("check", "rules", RULE_FILE, cwd=rule_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERTS) + 1} rules found" in proc.stdout, proc.stdout


@pytest.mark.parametrize("test_file", sorted(path.name for path in ALERT_TESTS.glob("*.yaml")))
def test_alerts_fire_on_their_series_and_only_then(rule_dir, test_file):
    proc = promtool("test", "rules", test_file, cwd=rule_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_must_not():
    """Each alert appears in the unit tests both with an expected alert and with none expected at some time."""
    fires, silent = set(), set()
    for test_file in ALERT_TESTS.glob("*.yaml"):
        unit_tests = yaml.safe_load(test_file.read_text())
        assert unit_tests["rule_files"] == [RULE_FILE], test_file.name
        for case in unit_tests["tests"]:
            for check in case["alert_rule_test"]:
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fires == silent == ALERTS


def test_each_alert_reads_only_this_job_and_says_what_to_look_at():
    rules = rendered_rules()
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    assert alerts.keys() == ALERTS
    for rule in rules:
        selectors = re.findall(r"\b(?:pbt_|namespace_job:pbt_)[a-z_:0-9]+\{([^}]*)\}", rule["expr"])
        assert selectors and all(s.startswith(JOB_SELECTOR) for s in selectors), rule["expr"]
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert re.fullmatch(r"\d+m", alert["for"]), name
        assert alert["annotations"]["summary"].startswith(f"{RELEASE}: "), name
        assert "kubectl -n training logs -l app.kubernetes.io/instance=pbt-job" in alert["annotations"]["description"], name


def test_thresholds_reach_the_rules():
    values = {"stalledMinutes": 40, "throughputFraction": 0.25, "skippedFraction": 0.8, "exploitSlowSeconds": 300}
    rules = rendered_rules("--set-json", f"monitoring.prometheusRule={json.dumps(values)}")
    exprs = {rule.get("alert"): " ".join(rule["expr"].split()) for rule in rules}
    assert "[40m]" in exprs["PbtPopulationStalled"]
    assert exprs["PbtThroughputCollapsed"].count("< 0.25") == 1
    assert exprs["PbtExploitsSkipped"].endswith(">= 0.8")
    assert exprs["PbtExploitsSlow"].endswith("> 300")


@pytest.mark.parametrize("case", CASES)
def test_a_prometheus_rule_wherever_the_pod_monitor_is(case):
    rules = [doc for doc in documents(case) if doc["kind"] == "PrometheusRule"]
    assert len(rules) == int(CASES[case].monitoring)
    for rule in rules:
        assert rule["metadata"]["labels"]["release"] == "prometheus", "kube-prometheus-stack's default ruleSelector"


def test_disabled_renders_no_prometheus_rule():
    proc = helm("template", RELEASE, str(CHART), "--set", "monitoring.prometheusRule.enabled=false")
    assert proc.returncode == 0, proc.stderr
    assert [doc for doc in yaml.safe_load_all(proc.stdout) if doc and doc["kind"] == "PrometheusRule"] == []
