"""The Prometheus exporter over real HTTP, during a real PBT run, and the Grafana dashboard."""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
import urllib.request
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, free_port, read_object
from pbt_job import metrics
from pbt_job.run_folder import RunFiles, parse_lineage
from pbt_job.storage import filesystem, parse_storage_uri
from pbt_job.training.algorithm import ENDED_AT_KEY
from pbt_job.training.config import load_config
from pbt_job.training.live_metrics import LiveMetrics
from pbt_job.training.run import train
from test_cli import TINY, assert_bad_input, run_cli

DASHBOARD = REPO / "helm" / "pbt-job" / "dashboards" / "pbt-job.json"
EXPORTED = {
    "pbt_trial_env_steps_per_second", "pbt_trial_agent_steps_per_second", "pbt_env_steps", "pbt_trial_iteration",
    "pbt_trial_metric", "pbt_trial_policy_return", "pbt_best_metric", "pbt_trials", "pbt_exploits",
    "pbt_trial_hyperparameter", "pbt_checkpoint_seconds", "pbt_checkpoint_bytes", "pbt_iteration_seconds",
    "pbt_exploit_seconds", "pbt_exploit_skips", "pbt_storage_retries",
}
"""Families only the alerts read so far (helm/pbt-job/templates/prometheusrule.yaml)."""


def scrape(port: int) -> dict[str, list]:
    """`/metrics` over HTTP, parsed: family name -> samples."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def by_label(samples: list, sample_name: str, label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for s in samples if s.name == sample_name}


def value(samples: list, sample_name: str) -> float:
    return next(s.value for s in samples if s.name == sample_name)


class Scraper(threading.Thread):
    """Scrapes every 0.3 s while the run trains, like Prometheus would (a bit more eagerly)."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.scrapes, self.done = port, [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.3):
            self.scrapes.append(scrape(self.port))


@pytest.mark.slow
def test_a_real_run_is_visible_live_on_metrics(ray_start_2_cpus, tmp_path):
    """A population of 2 trains while /metrics is scraped over HTTP, with a stalled client
    holding a connection open all along (the exporter must not block on it).

    During the run every trial with a reported iteration samples at > 0 steps/s; at the end
    every family is exported, the exploit counter equals lineage.jsonl's line count, the
    exploit timer counts each exploit its recipient reported after, and the hyperparameter
    gauges, step counters and states equal the run's final record.
    """
    job = load_config(TINY, ["stop.training_iteration=8"])
    with metrics.serve(0, host="127.0.0.1") as server, socket.create_connection(("127.0.0.1", server.port)):
        scraper = Scraper(server.port)
        scraper.start()
        outcome = train(job, parse_storage_uri(str(tmp_path)), "live", resume="never")
        scraper.done.set()
        scraper.join()
        final = scrape(server.port)
    assert outcome.errors == 0
    run = tmp_path / "live"

    live = [s for s in scraper.scrapes if by_label(s["pbt_trial_iteration"], "pbt_trial_iteration", "trial")]
    assert len(live) >= 5, "scrapes answered while training"
    for families in live:
        rates = by_label(families["pbt_trial_env_steps_per_second"], "pbt_trial_env_steps_per_second", "trial")
        agent_rates = by_label(families["pbt_trial_agent_steps_per_second"], "pbt_trial_agent_steps_per_second", "trial")
        assert rates and all(rate > 0 for rate in rates.values()), rates
        assert all(agent_rates[trial] >= rates[trial] for trial in rates), (agent_rates, rates)
    assert any(by_label(s["pbt_trials"], "pbt_trials", "state")["RUNNING"] > 0 for s in scraper.scrapes)

    assert EXPORTED <= final.keys(), EXPORTED - final.keys()
    summary = json.loads((run / "summary.json").read_text())
    trials = summary["trials"]
    lineage_lines = (run / "lineage.jsonl").read_text().splitlines() if (run / "lineage.jsonl").exists() else []
    assert value(final["pbt_exploits"], "pbt_exploits_total") == len(lineage_lines) == summary["exploits"]
    skip_lines = (run / "exploit_skips.jsonl").read_text().splitlines() if (run / "exploit_skips.jsonl").exists() else []
    assert value(final["pbt_exploit_skips"], "pbt_exploit_skips_total") == len(skip_lines) == summary["skipped_exploits"]
    assert by_label(final["pbt_env_steps"], "pbt_env_steps_total", "trial") == {
        trial: record["env_steps_total"] for trial, record in trials.items()
    }
    assert by_label(final["pbt_trial_iteration"], "pbt_trial_iteration", "trial") == {t: 8 for t in trials}
    assert by_label(final["pbt_trials"], "pbt_trials", "state") == {
        "PENDING": 0, "RUNNING": 0, "PAUSED": 0, "TERMINATED": 2, "ERROR": 0
    }
    hyperparameters = {(s.labels["trial"], s.labels["name"]): s.value for s in final["pbt_trial_hyperparameter"]}
    assert hyperparameters == {
        (trial, name): pytest.approx(v) for trial, record in trials.items() for name, v in record["hyperparameters"].items()
    }
    assert value(final["pbt_best_metric"], "pbt_best_metric") == pytest.approx(summary["best_metric"])
    policies = {s.labels["policy"] for s in final["pbt_trial_policy_return"]}
    assert policies == set(job.env.policies)
    assert value(final["pbt_checkpoint_seconds"], "pbt_checkpoint_seconds_count") >= 8
    assert value(final["pbt_checkpoint_bytes"], "pbt_checkpoint_bytes_total") > 0
    iteration_counts = by_label(final["pbt_iteration_seconds"], "pbt_iteration_seconds_count", "trial")
    assert set(iteration_counts) == set(trials) and sum(iteration_counts.values()) >= 8
    followed = exploits_followed_by_a_result(run, parse_lineage("\n".join(lineage_lines)))
    assert followed > 0, "the run exploited, and a recipient reported after its exploit"
    assert value(final["pbt_exploit_seconds"], "pbt_exploit_seconds_count") == followed
    assert value(final["pbt_exploit_seconds"], "pbt_exploit_seconds_sum") > 0

    # A new driver session (a resume) continues the counters from the stored totals.
    with metrics.serve(0, host="127.0.0.1") as resumed:
        LiveMetrics(RunFiles(partial(pyarrow.fs.LocalFileSystem), str(run)), job.pbt.mode, []).setup()
        again = scrape(resumed.port)
    assert by_label(again["pbt_env_steps"], "pbt_env_steps_total", "trial") == by_label(
        final["pbt_env_steps"], "pbt_env_steps_total", "trial"
    )
    assert value(again["pbt_exploits"], "pbt_exploits_total") == len(parse_lineage("\n".join(lineage_lines)))
    assert value(again["pbt_exploit_skips"], "pbt_exploit_skips_total") == len(skip_lines)


def exploits_followed_by_a_result(run: Path, lineage: list[dict]) -> int:
    """Exploits whose recipient reported a result after them, counted from the trials' `result.json`.

    The result an exploit was decided on ended before the decision, the recipient's
    next one after it (`iteration_ended_at`; Tune's `timestamp` is whole seconds, too
    coarse for an in-place exploit plus one short iteration).
    """
    reported: dict[str, list[float]] = {}
    for result_file in run.glob("*/result.json"):
        for line in result_file.read_text().splitlines():
            result = json.loads(line)
            reported.setdefault(result["trial_id"], []).append(result[ENDED_AT_KEY])
    return sum(any(t > event["time"] for t in reported.get(event["recipient"], [])) for event in lineage)


def test_exploits_are_timed_once_from_the_decision_to_the_recipients_next_result(tmp_path):
    """Tune calls the scheduler, then the callbacks, once per result; a stub replays that order.

    1. An exploit recorded before the driver session started (a resume) is never timed.
    2. t0 reports and the scheduler exploits it: not timed yet, that result came before the decision.
    3. t1 reports; then t0 reports: its exploit is timed once, from the decision to this result.
    4. During t1's result the scheduler exploits t0 (a synchronous barrier): t0's next result ends it.
    """
    files = RunFiles(partial(pyarrow.fs.LocalFileSystem), str(tmp_path))
    (tmp_path / "lineage.jsonl").write_text(json.dumps({"recipient": "t0", "iteration": 1, "time": time.time() - 60}) + "\n")
    t0, t1 = SimpleNamespace(trial_id="t0", config={}), SimpleNamespace(trial_id="t1", config={})
    with metrics.serve(0, host="127.0.0.1") as server:
        callback = LiveMetrics(files, "max", [])
        callback.setup()
        registry = server.metrics.registry

        def report(trial, exploit: bool = False) -> tuple[float, float]:
            """One result of `trial` (after the scheduler exploits t0 on it); the histogram's count and sum."""
            if exploit:
                files.record({"recipient": "t0", "iteration": 2, "time": time.time()})
            callback.on_trial_result(0, [t0, t1], trial, {"training_iteration": 2, "pbt_score": 1.0})
            return registry.get_sample_value("pbt_exploit_seconds_count"), registry.get_sample_value("pbt_exploit_seconds_sum")

        assert report(t0) == (0, 0), "the resumed run's exploit is not timed"
        decided = time.time()
        assert report(t0, exploit=True)[0] == 0
        assert report(t1)[0] == 0
        time.sleep(0.05)
        count, total = report(t0)
        assert count == 1 and 0.05 <= total <= time.time() - decided
        assert report(t0) == (count, total), "each exploit is timed once"
        assert report(t1, exploit=True)[0] == 1
        assert report(t0)[0] == 2


def test_skipped_exploits_are_counted_from_the_run_folder_and_continue_after_a_resume(tmp_path):
    """The scheduler records a skip before Tune calls the callbacks; /metrics counts it, and a new
    driver session (a resume) starts from exploit_skips.jsonl's line count, not from 0."""
    files = RunFiles(partial(pyarrow.fs.LocalFileSystem), str(tmp_path))
    trial = SimpleNamespace(trial_id="t0", config={})
    with metrics.serve(0, host="127.0.0.1") as server:
        callback = LiveMetrics(files, "max", [])
        callback.setup()
        assert value(scrape(server.port)["pbt_exploit_skips"], "pbt_exploit_skips_total") == 0
        for iteration in (2, 4):
            files.record({"event": "skip", "recipient": "t0", "iteration": iteration, "time": time.time(), "reason": "r"})
            callback.on_trial_result(0, [trial], trial, {"training_iteration": iteration})
        assert value(scrape(server.port)["pbt_exploit_skips"], "pbt_exploit_skips_total") == 2
    with metrics.serve(0, host="127.0.0.1") as resumed:
        LiveMetrics(RunFiles(partial(pyarrow.fs.LocalFileSystem), str(tmp_path)), "max", []).setup()
        assert value(scrape(resumed.port)["pbt_exploit_skips"], "pbt_exploit_skips_total") == 2


def test_storage_retries_are_counted_while_the_driver_waits_for_storage(bucket, restartable_s3, monkeypatch):
    """The S3 endpoint stops; a run-folder write retries it. /metrics answers during the retries, its
    counter climbing while the write is still blocked, then the endpoint returns and the write lands."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", restartable_s3.url)
    monkeypatch.setenv("PBT_JOB_STORAGE_RETRY_S", "120")
    location = parse_storage_uri(f"s3://{bucket}/runs")
    files = RunFiles(partial(filesystem, location), location.join("outage"))
    with metrics.serve(0, host="127.0.0.1") as server:
        before = value(scrape(server.port)["pbt_storage_retries"], "pbt_storage_retries_total")
        restartable_s3.stop()
        write = threading.Thread(target=files.write_json, args=("probe.json", {"written": True}), daemon=True)
        write.start()
        deadline = time.monotonic() + 60
        while value(scrape(server.port)["pbt_storage_retries"], "pbt_storage_retries_total") < before + 2:
            assert time.monotonic() < deadline, "2 retries counted on /metrics within 60 s of the outage"
            time.sleep(0.2)
        assert write.is_alive(), "the write was still waiting for storage when /metrics counted its retries"
        restartable_s3.start()
        write.join(timeout=60)
        assert not write.is_alive(), "the write finished once storage was back"
    assert json.loads(read_object(bucket, "runs/outage/probe.json")) == {"written": True}


def test_without_an_exporter_the_callback_does_nothing(tmp_path):
    """`metrics_port: 0`: no server, and the run's callback publishes nowhere without failing."""
    assert metrics.active() is None
    LiveMetrics(RunFiles(partial(pyarrow.fs.LocalFileSystem), str(tmp_path)), "max", []).setup()
    assert not any(tmp_path.iterdir())


def test_port_in_use_is_bad_input_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("train", "--config", str(TINY), "--storage", str(tmp_path / "runs"), "--metrics-port", str(port))
    assert_bad_input(proc, f"metrics_port {port}", "already in use", "--metrics-port")
    assert not (tmp_path / "runs").exists(), "nothing was written"


@pytest.mark.parametrize(("port", "needle"), [("70000", "metrics_port"), ("-1", "metrics_port"), ("http", "--metrics-port")])
def test_bad_metrics_port_values_are_refused(tmp_path, port, needle):
    proc = run_cli("train", "--config", str(TINY), "--storage", str(tmp_path), "--metrics-port", port)
    assert_bad_input(proc, needle)


def test_the_scrape_lists_every_family_before_any_trial_reports():
    """Prometheus sees the families (trial states at 0) from the first scrape on."""
    port = free_port()
    with metrics.serve(port, host="127.0.0.1"):
        families = scrape(port)
    assert by_label(families["pbt_trials"], "pbt_trials", "state") == dict.fromkeys(metrics.TRIAL_STATES, 0)
    assert {"pbt_best_metric", "pbt_exploits", "pbt_checkpoint_seconds"} <= families.keys()
    assert metrics.active() is None, "closing the server deactivates its metrics"


def dashboard_expressions(dashboard: dict) -> list[str]:
    """Every PromQL expression: panel targets, annotation queries, variable queries."""
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [annotation["expr"] for annotation in dashboard["annotations"]["list"] if "expr" in annotation]
    exprs += [variable["definition"] for variable in dashboard["templating"]["list"] if variable["type"] == "query"]
    return exprs


def test_every_exported_family_and_no_other_is_on_the_dashboard():
    """Names only: that each query parses and shows a run is test_dashboard_queries' part."""
    expressions = dashboard_expressions(json.loads(DASHBOARD.read_text()))
    for expr in expressions:
        assert re.search(r"\bpbt_[a-z_]+\b", expr), f"{expr!r} queries no pbt_ metric"
    names = re.findall(r"\bpbt_[a-z_]+\b", " ".join(expressions))
    assert {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in names} == EXPORTED


def test_dashboard_has_a_datasource_variable_and_exploit_annotations():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert any("pbt_exploits_total" in a.get("expr", "") for a in dashboard["annotations"]["list"])


def test_dashboard_panels_do_not_overlap():
    """Overlapping grid positions leave it to Grafana's layout where a panel lands, and under which row."""
    boxes = [(panel["title"], panel["gridPos"]) for panel in json.loads(DASHBOARD.read_text())["panels"]]
    for (a, box), (b, other) in itertools.combinations(boxes, 2):
        apart = (box["x"] + box["w"] <= other["x"] or other["x"] + other["w"] <= box["x"]
                 or box["y"] + box["h"] <= other["y"] or other["y"] + other["h"] <= box["y"])
        assert apart, f"{a!r} overlaps {b!r}"
