"""`pbt-job report`: ancestry on known lineages, untrusted result files, and reports of real runs (local, S3)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pyarrow.fs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from matplotlib.image import imread

from conftest import REPO, list_keys, read_object
from test_cli import tree
from pbt_job.cli import main
from pbt_job.report import plots
from pbt_job.report.ancestry import Exploit, Segment, ancestry, clones_before, discarded, inherited, segment_end
from pbt_job.report.run_data import load_run, parse_results
from pbt_job.report.write import write_report
from pbt_job.run_folder import ReadOnlyRunFiles, RunFiles
from pbt_job.storage import parse_storage_uri
from pbt_job.training.config import config_to_dict, load_config

TINY = REPO / "tests" / "data" / "tiny.yaml"
FILES = ("lineage.png", "schedules.png", "curves.png", "report.md", "report.json")


@dataclass(frozen=True)
class R:
    """A result as `inherited` sees it, named by who trained it."""

    iteration: int
    time: float
    by: str = ""


# A known lineage (times in seconds):
#   t=1  b <- a@2   b continues from a's iteration 2
#   t=2  c <- b@3   c gets a's iterations 1-2 and b's 3
#   t=3  b <- c@5   b is cloned a second time, from a donor that was itself a recipient
#   t=4  a <- b@6   a later clone into an ancestor changes nothing of what came before
KNOWN = [
    Exploit(recipient="b", donor="a", donor_iteration=2, time=1.0),
    Exploit(recipient="c", donor="b", donor_iteration=3, time=2.0),
    Exploit(recipient="b", donor="c", donor_iteration=5, time=3.0),
    Exploit(recipient="a", donor="b", donor_iteration=6, time=4.0),
]


def spans(chain: list[Segment]) -> list[tuple[str, int, int | None]]:
    return [(s.trial, s.start, s.end) for s in chain]


def test_ancestry_follows_a_twice_cloned_trial_through_a_donor_that_was_a_recipient():
    chain = ancestry("b", KNOWN[:3])
    assert spans(chain) == [("a", 0, 2), ("b", 2, 3), ("c", 3, 5), ("b", 5, None)]
    assert [s.received for s in chain] == [None, KNOWN[0], KNOWN[1], KNOWN[2]]


def test_ancestry_ignores_clones_after_the_weights_were_handed_on():
    assert spans(ancestry("a", KNOWN)) == [("a", 0, 2), ("b", 2, 3), ("c", 3, 5), ("b", 5, 6), ("a", 6, None)]
    assert spans(ancestry("c", KNOWN)) == [("a", 0, 2), ("b", 2, 3), ("c", 3, None)]


def test_ancestry_of_a_never_cloned_trial_and_of_simultaneous_swaps_terminates():
    assert spans(ancestry("d", KNOWN)) == [("d", 0, None)]
    swap = [Exploit("x", "y", 2, time=1.0), Exploit("y", "x", 2, time=1.0)]
    assert spans(ancestry("x", swap)) == [("y", 0, 2), ("x", 2, None)]


def test_inherited_picks_each_iteration_from_the_trial_and_time_that_trained_it():
    results = {
        "a": [R(1, 0.5, "a"), R(2, 0.9, "a"), R(3, 1.5, "a-late")],
        "b": [R(1, 0.5, "b-own"), R(2, 0.9, "b-own"), R(3, 1.6, "b"), R(4, 2.5, "b-lost"), R(6, 3.5, "b")],
        "c": [R(1, 0.4, "c-own"), R(4, 2.4, "c-lost"), R(4, 2.5, "c"), R(5, 2.8, "c"), R(6, 3.2, "c-after")],
    }
    path = inherited(ancestry("b", KNOWN[:3]), results)
    assert [(r.iteration, r.by) for r in path] == [(1, "a"), (2, "a"), (3, "b"), (4, "c"), (5, "c"), (6, "b")]
    assert segment_end(ancestry("b", KNOWN[:3])[-1], results) == 6


def test_clones_before_finds_the_exploit_between_two_results():
    """Tune's timestamps are whole seconds: a result in the exploit's own second is the one that triggered it."""
    results = [R(1, 1), R(2, 3), R(3, 5), R(4, 8)]
    early, superseded, late, same_second = (Exploit("b", "a", 2, time=t) for t in (2.5, 4.0, 4.5, 5.0))
    assert clones_before(results, [early, superseded, late, same_second]) == [None, early, late, same_second]


def test_discarded_marks_results_a_later_restore_went_back_over():
    results = [R(1, 0), R(2, 1), R(3, 2), R(2, 3), R(3, 4), R(4, 5)]
    assert discarded(results) == [False, True, True, False, False, False]


def test_result_lines_are_untrusted(caplog):
    good = {"trial_id": "t1", "training_iteration": 3, "timestamp": 100, "pbt_score": 2.5,
            "config": {"lr": 1e-4, "_train_batch_size_per_learner": 256},
            "env_runners": {"module_episode_returns_mean": {"prey": float("nan"), "predator": 4.0}}}
    text = "\n".join([json.dumps(good), "{not json", json.dumps({"trial_id": "t1"}), json.dumps([1, 2]), ""])
    with caplog.at_level(logging.WARNING):
        parsed = parse_results(text, "result.json", "pbt_score", ["lr", "train_batch_size_per_learner"])
    assert len(parsed) == 1
    trial, result = parsed[0]
    assert (trial, result.iteration, result.time, result.metric) == ("t1", 3, 100.0, 2.5)
    assert result.returns == {"predator": 4.0}
    assert result.hyperparameters == {"lr": 1e-4, "train_batch_size_per_learner": 256}
    assert sum("skipped" in message for message in caplog.messages) == 3


def test_lineage_keeps_only_well_formed_exploits_in_time_order(tmp_path, caplog):
    (tmp_path / "job_config.json").write_text(json.dumps(config_to_dict(load_config(TINY))))
    first = {"event": "exploit", "recipient": "t0", "donor": "t1", "iteration": 2, "donor_iteration": 2, "time": 5.0}
    second = {**first, "recipient": "t1", "donor": "t0", "time": 9.0}
    lines = [json.dumps(second), "{cut", json.dumps({"event": "skip", "recipient": "t0", "iteration": 4}),
             json.dumps({**first, "donor": None}), json.dumps(first)]
    (tmp_path / "lineage.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        run = load_run(str(tmp_path))
    assert run.exploits == [Exploit("t0", "t1", 2, 5.0), Exploit("t1", "t0", 2, 9.0)]
    assert run.trials == ["t0", "t1"] and run.results == {} and run.summary is None
    assert len(caplog.messages) == 2


def test_report_imports_nothing_of_training_nor_ray():
    """The run folder is its own room (`pbt_job.run_folder`): report reads it without training's machinery."""
    code = ("import sys, pbt_job.report.write, pbt_job.cli; pbt_job.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('pbt_job.training', 'ray'))))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"pbt-job report imports {proc.stdout.strip()}"


def test_a_reader_sees_lines_the_writer_adds_and_cannot_write(tmp_path):
    """The driver's `RunFiles` keeps what it read; a reader's reads storage on every call."""
    writer = RunFiles(pyarrow.fs.LocalFileSystem, str(tmp_path))
    reader = RunFiles(pyarrow.fs.LocalFileSystem, str(tmp_path), writer=False)
    assert reader.lineage() == [] and reader.ledgers() == {} and reader.stored_wall_time() is None
    writer.record({"event": "exploit", "recipient": "a", "iteration": 2, "donor": "b", "time": 1.0})
    writer.ledger("a").iteration = 2
    writer.save_ledgers()
    assert [e["donor"] for e in reader.lineage()] == ["b"]
    assert reader.ledgers()["a"].iteration == 2 and reader.stored_wall_time() >= 0
    writer.record({"event": "exploit", "recipient": "b", "iteration": 4, "donor": "a", "time": 2.0})
    writer.ledger("b").iteration = 4
    writer.save_ledgers()
    assert [e["donor"] for e in reader.lineage()] == ["b", "a"]
    assert sorted(reader.ledgers()) == ["a", "b"]
    with pytest.raises(ReadOnlyRunFiles):
        reader.record({"event": "exploit", "recipient": "c", "iteration": 1})
    with pytest.raises(ReadOnlyRunFiles):
        reader.write_json("summary.json", {})
    assert len(writer.lineage()) == 2


def test_ledgers_saved_soon_are_written_in_order_and_flushed(tmp_path):
    """The driver saves the ledgers after every result off Tune's thread: the stored state is the
    newest once flushed, and a failed write is raised by the flush (before the experiment snapshot)."""
    writer = RunFiles(pyarrow.fs.LocalFileSystem, str(tmp_path))
    reader = RunFiles(pyarrow.fs.LocalFileSystem, str(tmp_path), writer=False)
    for iteration in range(1, 51):
        writer.ledger("a").iteration = iteration
        writer.save_ledgers_soon()
    writer.flush_ledgers()
    assert reader.ledgers()["a"].iteration == 50
    blocked = RunFiles(pyarrow.fs.LocalFileSystem, str(tmp_path / "pbt_state.jsonl" / "run"))  # a file where its folder goes
    blocked.ledger("a").iteration = 1
    blocked.save_ledgers_soon()
    with pytest.raises(OSError):
        blocked.flush_ledgers()
    blocked.flush_ledgers()  # a failure is raised once


def test_a_path_that_is_not_a_run_exits_2_and_names_the_runs_below_it(tmp_path, capsys):
    (tmp_path / "runs" / "one").mkdir(parents=True)
    (tmp_path / "runs" / "one" / "job_config.json").write_text("{}")
    assert main(["report", str(tmp_path / "runs")]) == 2
    assert "not a pbt-job run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_a_run_without_results_gets_tables_and_says_so(tmp_path, caplog):
    run = tmp_path / "fresh"
    (run / "PBTPPO_x_00000_0").mkdir(parents=True)
    (run / "job_config.json").write_text(json.dumps(config_to_dict(load_config(TINY))))
    with caplog.at_level(logging.WARNING):
        path = write_report(str(run))
    assert path == str(run / "report" / "report.md")
    assert sorted(p.name for p in (run / "report").iterdir()) == ["report.json", "report.md"]
    numbers = json.loads((run / "report" / "report.json").read_text())
    assert numbers["pictures"] == [] and numbers["finished"] is False and numbers["best_trial"] is None
    assert numbers["training_share"] is None, "no wall time yet"
    assert "| Share of wall time spent training | n/a |" in (run / "report" / "report.md").read_text()
    assert any("No trial has reported a result yet" in message for message in caplog.messages)
    assert "No trial has reported a result yet" in (run / "report" / "report.md").read_text()


# Real runs: one tiny PBT population per storage kind, shared by the tests below.


def train_tiny(location: str, name: str, overrides: list[str]) -> str:
    from pbt_job.training.run import train

    outcome = train(load_config(TINY, overrides), parse_storage_uri(location), name, resume="never")
    assert outcome.errors == 0
    return outcome.run_uri


@pytest.fixture(scope="module")
def local_run(ray_start_2_cpus, tmp_path_factory) -> Path:
    return Path(train_tiny(str(tmp_path_factory.mktemp("runs")), "report-local", ["stop.training_iteration=8"]))


@pytest.fixture(scope="module")
def s3_run(ray_start_2_cpus, s3_endpoint) -> tuple[str, str]:
    bucket = f"pbt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    # A perturbation point at every iteration: with two trials PBT may decide no exploit at
    # the default interval (a CI run had none), and the report's exploit figures need one.
    return bucket, train_tiny(f"s3://{bucket}/runs", "report-s3", ["pbt.perturbation_interval=1"])


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, decoding all of it."""
    height, width = imread(io.BytesIO(data), format="png").shape[:2]
    return width, height


def assert_report_folder(folder: Path, run_uri: str) -> dict:
    """All files written, pictures decodable at their layout's size; returns report.json."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    run = load_run(run_uri)
    rows = {"lineage.png": (plots.LINEAGE, len(run.trials)), "schedules.png": (plots.SCHEDULES, len(run.mutations)),
            "curves.png": (plots.CURVES, 1 + len(run.policies))}
    for name, (layout, count) in rows.items():
        assert png_size((folder / name).read_bytes()) == (plots.WIDTH_PX, layout.height_px(count)), name
    markdown = (folder / "report.md").read_text()
    assert all(f"]({name})" in markdown for name in rows) and run.name in markdown
    return json.loads((folder / "report.json").read_text())


def json_lines_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def local_raw_files(run: Path) -> tuple[dict[str, list[dict]], list[dict]]:
    """Every trial folder's result.json lines and lineage.jsonl's lines (none: no exploit), parsed here, not by pbt_job."""
    results = {d.name: json_lines_of((d / "result.json").read_text()) for d in run.glob("PBTPPO_*")}
    lineage = run / "lineage.jsonl"
    return results, json_lines_of(lineage.read_text()) if lineage.exists() else []


def s3_raw_files(bucket: str, run: str) -> tuple[dict[str, list[dict]], list[dict]]:
    keys = list_keys(bucket, f"{run}/")
    results = {key.split("/")[-2]: json_lines_of(read_object(bucket, key)) for key in keys if key.endswith("/result.json")}
    lineage = f"{run}/lineage.jsonl"
    return results, json_lines_of(read_object(bucket, lineage)) if lineage in keys else []


def training_share_of(results: dict[str, list[dict]], wall_time_s: float) -> float:
    """Every result line's `time_this_iter_s` over (trials x wall time)."""
    seconds = sum(line["time_this_iter_s"] for lines in results.values() for line in lines)
    return seconds / (len(results) * wall_time_s)


def assert_numbers_recomputed(numbers: dict, results: dict[str, list[dict]], lineage: list[dict]) -> None:
    """The report's numbers against the same numbers computed here from Tune's result.json and lineage.jsonl.

    The best trial is one whose last result has the highest `pbt_score` (tiny.yaml: mode max; ties happen);
    env steps are the sum of every result's sampled env steps; the wall time covers every result.
    """
    last = {lines[-1]["trial_id"]: lines[-1] for lines in results.values()}
    top = max(result["pbt_score"] for result in last.values())
    best = numbers["best_trial"]
    assert best in {trial for trial, result in last.items() if result["pbt_score"] == top}, "the best (or one tied for it)"
    env_steps = sum(int(line["env_runners"]["num_env_steps_sampled"]) for lines in results.values() for line in lines)
    first_start = min(line["timestamp"] - line["time_this_iter_s"] for lines in results.values() for line in lines)
    last_end = max(line["timestamp"] for lines in results.values() for line in lines)
    assert numbers["best_metric"] == pytest.approx(last[best]["pbt_score"])
    assert numbers["best_hyperparameters"] == pytest.approx({k: last[best]["config"][k] for k in ("lr", "clip_param", "entropy_coeff")})
    assert numbers["exploits"] == sum(e.get("event") == "exploit" for e in lineage) > 0
    assert numbers["env_steps_total"] == env_steps >= len(results) * 128
    assert numbers["wall_time_s"] >= last_end - first_start - 1, "timestamps are whole seconds"
    assert numbers["env_steps_per_s"] == pytest.approx(env_steps / numbers["wall_time_s"], rel=1e-4), "wall time is rounded"
    assert numbers["training_share"] == pytest.approx(training_share_of(results, numbers["wall_time_s"]), abs=1e-4)
    assert set(numbers["trials"]) == set(last)
    for trial, row in numbers["trials"].items():
        assert (row["iteration"], row["metric"]) == (last[trial]["training_iteration"], pytest.approx(last[trial]["pbt_score"]))
        assert row["times_cloned"] == sum(e["recipient"] == trial for e in lineage), trial
        assert row["times_donor"] == sum(e["donor"] == trial for e in lineage), trial
    chain = numbers["best_ancestry"]
    assert chain[-1]["trial"] == best
    assert chain[-1]["to_iteration"] == last[best]["training_iteration"]
    assert chain[0]["from_iteration"] == 1
    for before, after in zip(chain, chain[1:]):
        assert after["from_iteration"] == before["to_iteration"] + 1
        assert any(e["recipient"] == after["trial"] and e["donor"] == before["trial"]
                   and e["donor_iteration"] == before["to_iteration"] for e in lineage), (before, after)


@pytest.mark.slow
def test_report_of_a_real_local_run(local_run, capsys):
    """1. `pbt-job report RUN` writes into RUN/report and prints where.
    2. Every file is there; the PNGs decode to their layout's size.
    3. report.json's numbers equal those recomputed from result.json and lineage.jsonl, the
       best trial's ancestry included (not those of summary.json, which it copies).
    """
    assert main(["report", str(local_run)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {local_run / 'report' / 'report.md'}"
    numbers = assert_report_folder(local_run / "report", str(local_run))
    assert numbers["finished"] is True
    assert_numbers_recomputed(numbers, *local_raw_files(local_run))
    assert 0 < numbers["training_share"] <= 1
    assert f"| Share of wall time spent training | {numbers['training_share']:.1%} |" in (local_run / "report" / "report.md").read_text()


@pytest.mark.slow
def test_report_of_a_run_still_training_reads_what_is_there(local_run, tmp_path):
    """Without summary.json (as while training) the numbers come from results, lineage and ledgers."""
    running = tmp_path / "running"
    shutil.copytree(local_run, running, ignore=shutil.ignore_patterns("summary.json", "report"))
    numbers = json.loads(Path(write_report(str(running), str(tmp_path / "out"))).with_name("report.json").read_text())
    assert numbers["finished"] is False and "has not finished" in numbers["notes"][0]
    assert_numbers_recomputed(numbers, *local_raw_files(running))
    assert numbers["wall_time_s"] == json.loads((running / "pbt_state.jsonl").read_text())["wall_time_s"]


@pytest.mark.slow
def test_report_of_a_real_s3_run(s3_run, tmp_path, monkeypatch):
    """An S3 run reports into ./report-<name>/ by default, or into an s3:// --out."""
    bucket, run_uri = s3_run
    monkeypatch.chdir(tmp_path)
    assert write_report(run_uri) == str(tmp_path / "report-report-s3" / "report.md")
    numbers = assert_report_folder(tmp_path / "report-report-s3", run_uri)
    assert numbers["finished"] is True
    assert_numbers_recomputed(numbers, *s3_raw_files(bucket, "runs/report-s3"))

    assert write_report(run_uri, f"s3://{bucket}/reports/tiny") == f"s3://{bucket}/reports/tiny/report.md"
    written = [key for key in list_keys(bucket, "reports/tiny/") if not key.endswith("/")]  # "/": folder markers
    assert sorted(written) == sorted(f"reports/tiny/{name}" for name in FILES)


# Damaged and hostile run files: bad input (exit 2, one line naming the file and the field) or a graceful report,
# never a traceback. Each case edits one field of a small finished run written here.

TRIALS = ("t0", "t1")


def small_run_files() -> dict[str, Any]:
    """A finished run of two trials, four iterations each, one exploit: file -> JSON document, or its lines."""
    results = {
        trial: [{"trial_id": trial, "training_iteration": i, "timestamp": 100 + 10 * i + k, "time_this_iter_s": 5.0,
                 "pbt_score": float(i + k), "config": {"lr": 1e-3, "clip_param": 0.2 + k / 10, "entropy_coeff": 0.0},
                 "env_runners": {"module_episode_returns_mean": {"type_1_prey": float(i)}}} for i in range(1, 5)]
        for k, trial in enumerate(TRIALS)
    }
    exploit = {"event": "exploit", "time": 121.5, "iteration": 2, "recipient": "t0", "donor": "t1", "donor_iteration": 2}
    ledgers = {trial: {"env_steps_total": 512, "iteration": 4, "metric": 4.0, "session_starts": [0]} for trial in TRIALS}
    return {
        "job_config.json": config_to_dict(load_config(TINY)),
        "summary.json": {"metric": "pbt_score", "mode": "max", "best_trial": "t1", "best_metric": 5.0,
                         "best_hyperparameters": {"lr": 1e-3, "clip_param": 0.3, "entropy_coeff": 0.0}, "exploits": 1,
                         "env_steps_total": 1024, "wall_time_s": 60.0, "env_steps_per_s": 17.07,
                         "trials": {trial: {"iteration": 4} for trial in TRIALS}, "errors": 0},
        "lineage.jsonl": [exploit],
        "pbt_state.jsonl": {"trials": ledgers, "wall_time_s": 60.0},
        **{f"PBTPPO_{trial}/result.json": lines for trial, lines in results.items()},
    }


LINE_FILES = ("lineage.jsonl", "PBTPPO_t0/result.json", "PBTPPO_t1/result.json")


def write_run(root: Path, files: dict[str, Any]) -> Path:
    """Write `files` (from `small_run_files`, edited) as a run folder; bytes are written as they are."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif name in LINE_FILES and isinstance(content, list):
            path.write_text("".join(json.dumps(line) + "\n" for line in content))
        else:
            path.write_text(json.dumps(content) + "\n")
    return root


DELETE = object()


def set_at(root: Any, path: tuple, value: Any) -> None:
    """Set the place `path` of nested objects and lists to `value` (`DELETE`: remove it)."""
    for part in path[:-1]:
        root = root[part]
    if value is DELETE:
        del root[path[-1]]
    else:
        root[path[-1]] = value


def edited(files: dict[str, Any], name: str, path: tuple = (), value: Any = None) -> dict[str, Any]:
    """`files` with the field at `path` of file `name` set to `value` (`path` empty: the whole file)."""
    files = copy.deepcopy(files)
    set_at(files, (name, *path), value)
    return files


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("pbt-job:")]


DAMAGED = {  # file, field path, value -> what the one line must say (besides the file's name)
    "hyperparameters-null": ("summary.json", ("best_hyperparameters",), None, "best_hyperparameters is null"),
    "hyperparameter-huge": ("summary.json", ("best_hyperparameters", "lr"), 10**400, "best_hyperparameters is"),
    "env-steps-text": ("summary.json", ("env_steps_total",), "many", 'env_steps_total is "many", not a count'),
    "exploits-negative": ("summary.json", ("exploits",), -1, "exploits is -1, not a count"),
    "exploits-bool": ("summary.json", ("exploits",), True, "exploits is true, not a count"),
    "score-huge": ("summary.json", ("best_metric",), 10**400, "best_metric is 1000000"),
    "wall-time-list": ("summary.json", ("wall_time_s",), [1], "wall_time_s is [1], not a number of seconds"),
    "best-trial-number": ("summary.json", ("best_trial",), 3, "best_trial is 3, not a trial id"),
    "best-trial-unknown": ("summary.json", ("best_trial",), "t9", 'best_trial "t9" is no trial of this run'),
    "summary-list": ("summary.json", (), [1, 2], "summary.json is not a JSON object but a list"),
    "summary-truncated": ("summary.json", (), b'{"best_trial": "t1", "best_me', "summary.json is not valid JSON"),
    "summary-binary": ("summary.json", (), bytes(range(256)), "summary.json is not valid JSON"),
    "summary-utf16": ("summary.json", (), '{"exploits": 1}'.encode("utf-16"), "summary.json is not valid JSON"),
    "summary-deep": ("summary.json", (), b"[" * 100_000, "nested too deeply"),
    "config-list": ("job_config.json", (), [1, 2], "job_config.json is not a JSON object but a list"),
    "config-truncated": ("job_config.json", (), b'{"pbt": {"metric', "job_config.json is not valid JSON"),
    "config-nul": ("job_config.json", (), b"\x00" * 64, "job_config.json is not valid JSON"),
    "config-pbt-number": ("job_config.json", ("pbt",), 3, "pbt is 3, not an object"),
    "config-metric-null": ("job_config.json", ("pbt", "metric"), None, "pbt.metric is null, not a result key"),
    "config-mode": ("job_config.json", ("pbt", "mode"), "up", 'pbt.mode is "up", not max or min'),
    "config-mutations-list": ("job_config.json", ("pbt", "mutations"), ["lr"], 'pbt.mutations is ["lr"], not an object'),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_document_the_report_shows_as_it_is_exits_2_naming_file_and_field(tmp_path, capsys, case):
    name, path, value, needle = DAMAGED[case]
    run = write_run(tmp_path / "run", edited(small_run_files(), name, path, value))
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in out + err, err
    assert f"{run / name}" in lines[0] and needle in lines[0] and "the file is malformed" in lines[0], lines[0]
    assert not (tmp_path / "out").exists(), "nothing is written for a run that cannot be reported"


def report_json(run: Path, out: Path) -> dict[str, Any]:
    assert main(["report", str(run), "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text())


ODD_BUT_HARMLESS = {  # file, field path, value -> what the report shows
    "summary-trials-list": ("summary.json", ("trials",), [1, 2], lambda n: n["best_trial"] == "t1"),
    "summary-metric-overflows": ("summary.json", ("best_metric",), float("inf"), lambda n: n["best_metric"] == math.inf),
    "summary-lacks-a-number": ("summary.json", ("env_steps_per_s",), None, lambda n: n["env_steps_per_s"] is None),
    "result-score-huge": ("PBTPPO_t1/result.json", (3, "pbt_score"), 10**400,
                          lambda n: n["trials"]["t1"]["metric"] is None and n["trials"]["t1"]["iteration"] == 4),
    "result-timestamp-huge": ("PBTPPO_t1/result.json", (3, "timestamp"), 10**400,
                              lambda n: n["trials"]["t1"]["iteration"] == 3),
    "result-iteration-text": ("PBTPPO_t1/result.json", (3, "training_iteration"), "4",
                              lambda n: n["trials"]["t1"]["iteration"] == 3),
    "result-hyperparameter-text": ("PBTPPO_t1/result.json", (3, "config", "lr"), "fast",
                                   lambda n: "lr" not in n["trials"]["t1"]["hyperparameters"]),
    "lineage-integer-time": ("lineage.jsonl", (0, "time"), 121, lambda n: n["exploits"] == 1),
    "lineage-time-huge": ("lineage.jsonl", (0, "time"), 10**400, lambda n: n["trials"]["t0"]["times_cloned"] == 0),
    "ledger-steps-text": ("pbt_state.jsonl", ("trials", "t0", "env_steps_total"), "many", lambda n: n["finished"]),
    "state-wall-time-nan": ("pbt_state.jsonl", ("wall_time_s",), float("nan"), lambda n: n["wall_time_s"] == 60.0),
}


@pytest.mark.parametrize("case", list(ODD_BUT_HARMLESS))
def test_an_odd_value_in_a_file_read_line_by_line_is_reported_gracefully(tmp_path, case):
    name, path, value, shown = ODD_BUT_HARMLESS[case]
    numbers = report_json(write_run(tmp_path / "run", edited(small_run_files(), name, path, value)), tmp_path / "out")
    assert shown(numbers), numbers


def test_a_run_still_training_is_reported_from_valid_ledgers_only(tmp_path, caplog):
    """Without summary.json env steps come from the ledgers: one of the wrong type is skipped with a warning."""
    files = edited(small_run_files(), "pbt_state.jsonl", ("trials", "t0", "env_steps_total"), "many")
    del files["summary.json"]
    with caplog.at_level(logging.WARNING):
        numbers = report_json(write_run(tmp_path / "run", files), tmp_path / "out")
    assert numbers["env_steps_total"] == 512 and numbers["finished"] is False
    assert any("entry for trial t0 skipped" in message for message in caplog.messages)


# `--out` that cannot be written: exit 2 at once naming --out; nothing retried (only outages are).

OUT_REFUSALS = {
    "existing-file": (lambda tmp: tmp / "taken", ["cannot write there (File exists)"]),
    "below-a-file": (lambda tmp: tmp / "taken" / "report", ["cannot write there"]),
    "read-only": (lambda tmp: Path("/proc/pbt-job-report"), ["cannot write there"]),
    "report-md-is-a-folder": (lambda tmp: tmp / "blocked", ["cannot write report.md there", "choose another --out"]),
    "missing-bucket": (lambda tmp: "s3://no-such-bucket-here/report", ["bucket no-such-bucket-here does not exist",
                                                                        "fix --out"]),
    "gcs": (lambda tmp: "gs://x", ["--out gs://x", "S3 API"]),
    "relative-file-uri": (lambda tmp: "file://data/report", ["file:///abs/path"]),
}


@pytest.mark.parametrize("case", list(OUT_REFUSALS))
def test_an_out_that_cannot_be_written_exits_2_at_once_naming_out(s3_endpoint, tmp_path, capsys, monkeypatch, case):
    monkeypatch.delenv("PBT_JOB_STORAGE_RETRY_S", raising=False)  # the default 300 s: a retry would show
    run = write_run(tmp_path / "run", small_run_files())
    (tmp_path / "taken").write_text("a file, not a folder")
    (tmp_path / "blocked" / "report.md").mkdir(parents=True)
    before = tree(run)
    out, needles = OUT_REFUSALS[case]
    started = time.monotonic()
    assert main(["report", str(run), "--out", str(out(tmp_path))]) == 2
    took_s = time.monotonic() - started
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--out" in lines[0] and all(n in lines[0] for n in needles), lines
    assert took_s < 15, f"--out {case} took {took_s:.1f} s"
    assert tree(run) == before and (tmp_path / "taken").read_text() == "a file, not a folder"


# Fuzz: any JSON value (or bytes) anywhere the report reads gives exit 0 or 2, one line at most, no traceback.

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from([10**400, -(10**400), 2**64]) | st.floats()
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5,
)


def field_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value: the value itself, each key of an object, each item of a list."""
    paths = [prefix]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        paths += field_paths(item, (*prefix, key))
    return paths


BASE_RUN = small_run_files()
BASE_RUN["job_config.json"] = {"name": "tiny", "pbt": BASE_RUN["job_config.json"]["pbt"]}  # all the report reads
FUZZ_PLACES = {name: field_paths(content) for name, content in BASE_RUN.items()}
"""Per file, every place in it: a file is drawn first, so a short document is hit as often as a long result.json."""


@st.composite
def damaged_runs(draw) -> dict[str, Any]:
    files = copy.deepcopy(BASE_RUN)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(FUZZ_PLACES)))
        path = draw(st.sampled_from(FUZZ_PLACES[name]))
        value = draw(st.binary(max_size=24) if not path and draw(st.booleans()) else JSON_VALUES | st.just(DELETE))
        with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier edit removed or replaced this place
            set_at(files, (name, *path), value)
    return files


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(files=damaged_runs())
def test_fuzz_run_files_exit_0_or_2_with_at_most_one_error_line(files):
    with tempfile.TemporaryDirectory() as folder:
        run = write_run(Path(folder) / "run", files)
        stderr, stdout = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            code = main(["report", str(run), "--out", f"{folder}/out"])
    assert code in (0, 2), stderr.getvalue()
    lines = error_lines(stderr.getvalue())
    assert len(lines) == (code == 2) and "Traceback" not in stderr.getvalue() + stdout.getvalue(), stderr.getvalue()
