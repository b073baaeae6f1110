"""Faults injected into real processes: storage outages, driver deaths, node loss, full or read-only disks.

Each scenario runs the real `pbt-job train` in its own process group (its own local
Ray, or a multi-node `ray.cluster_utils.Cluster`) against moto's S3 server, injects
the fault from the test, and checks that the run finishes with nothing lost.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Callable

import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, RestartableS3, free_port, list_keys, read_object
from pbt_job.run_folder import parse_lineage
from pbt_job.storage import filesystem, parse_storage_uri
from pbt_job.training.algorithm import CHECKPOINTS_KEY
from pbt_job.training.scheduler import PIN_DIR
from test_cli import TINY, assert_bad_input, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
SNAPSHOT_EVERY_2S = {"TUNE_GLOBAL_CHECKPOINT_S": "2"}
EXPLOIT_STARTS = "restores from its pinned copy"  # the scheduler's log line as the recipient's reset begins


class Driver:
    """`pbt-job train` in its own process group, its output in a log file."""

    def __init__(self, log: Path, *args: str, env: dict[str, str] | None = None):
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pbt_job.cli", "train", *args], stdout=out, stderr=subprocess.STDOUT,
                cwd=REPO, start_new_session=True, env={**os.environ, **SNAPSHOT_EVERY_2S, **(env or {})},
            )

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 400, poll: float = 1.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"driver exited before {what}:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(poll)

    def kill(self) -> None:
        """SIGKILL the driver's whole process group: driver, its Ray head and workers."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"driver still running after {timeout} s:\n{self.output()[-6000:]}") from None
        finally:
            if self.process.poll() is None:
                self.kill()

    def output(self) -> str:
        return self.log.read_text()


def stored_ledgers(bucket: str, run: str) -> dict[str, dict]:
    if f"{run}/pbt_state.jsonl" not in list_keys(bucket, run):
        return {}
    return json.loads(read_object(bucket, f"{run}/pbt_state.jsonl"))["trials"]


def stored_iterations(bucket: str, run: str) -> dict[str, int]:
    return {trial: ledger["iteration"] for trial, ledger in stored_ledgers(bucket, run).items()}


def stored_lineage(bucket: str, run: str) -> list[dict]:
    keys = list_keys(bucket, f"{run}/lineage.jsonl")
    return parse_lineage(read_object(bucket, f"{run}/lineage.jsonl")) if keys else []


def stored_results(bucket: str, run: str) -> dict[str, list[dict]]:
    """Each trial folder's result.json, parsed."""
    return {
        key: [json.loads(line) for line in read_object(bucket, key).splitlines() if line.strip()]
        for key in list_keys(bucket, run) if key.endswith("/result.json")
    }


def snapshot_saved_after(bucket: str, run: str, since: float) -> Callable[[], bool]:
    """True once Tune has saved its experiment state (`experiment_state-*.json`) after `since`.
    S3 times are whole seconds: a save stamped `since + 1` or later happened after `since`."""
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])

    def saved() -> bool:
        objects = client.list_objects_v2(Bucket=bucket, Prefix=f"{run}/experiment_state-").get("Contents", [])
        return any(o["LastModified"].timestamp() >= since + 1 for o in objects)

    return saved


def all_trials_reached(bucket: str, run: str, iteration: int) -> Callable[[], bool]:
    def reached() -> bool:
        stored = stored_iterations(bucket, run)
        return len(stored) == 2 and min(stored.values()) >= iteration

    return reached


def assert_run_complete_and_consistent(bucket: str, run: str, stop: int, lineage_before: list[dict], all_kept: bool) -> dict:
    """Every trial reached `stop`, lineage kept its events without duplicates (one recipient may
    be cloned twice at one iteration: a clone sets its iteration back), summary agrees, and
    every checkpoint the final Tune state lists exists. With `all_kept` (no retention) every
    donor checkpoint the lineage names exists too, pinned copies aside; with retention no
    trial folder holds more checkpoints than `num_to_keep`, whatever the kills left."""
    from ray import tune

    from pbt_job.training.algorithm import PBTPPO

    for trial, ledger in stored_ledgers(bucket, run).items():
        assert ledger["iteration"] == stop, (trial, ledger)
    lineage = stored_lineage(bucket, run)
    lines = [json.dumps(e, sort_keys=True) for e in lineage]
    assert len(lines) == len(set(lines)), "no duplicate lineage events"
    keys = {(e["recipient"], e["iteration"]) for e in lineage}
    assert {(e["recipient"], e["iteration"]) for e in lineage_before} <= keys, "no lineage event lost"
    summary = json.loads(read_object(bucket, f"{run}/summary.json"))
    assert summary["errors"] == 0 and summary["exploits"] == len(lineage)

    location = parse_storage_uri(f"s3://{bucket}/{run}")
    results = tune.Tuner.restore(location.path, trainable=PBTPPO, storage_filesystem=filesystem(location)).get_results()
    referenced = {result.checkpoint.path: "Tune state, latest" for result in results}
    referenced |= {checkpoint.path: "Tune state" for result in results for checkpoint, _ in result.best_checkpoints}
    if all_kept:
        referenced |= {e["donor_checkpoint"]: "lineage" for e in lineage if f"/{PIN_DIR}/" not in e["donor_checkpoint"]}
    assert referenced
    stored = set(list_keys(bucket, run))
    for path, source in referenced.items():
        prefix = path.removeprefix(f"{bucket}/")
        assert any(key.startswith(prefix + "/") for key in stored), f"{path} ({source}) is not in the bucket"
    if not all_kept:
        folders = {tuple(key.removeprefix(f"{run}/").split("/")[:2]) for key in stored if key.count("/") > 3}
        own = Counter(trial for trial, folder in folders if folder.startswith("checkpoint_"))
        assert own and max(own.values()) <= 2, own
    return summary


def scrape_env_steps(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    return {s.labels["trial"]: s.value for s in families["pbt_env_steps"].samples if s.name == "pbt_env_steps_total"}


# -- storage outages ------------------------------------------------------------------------------------


def outage_run(bucket: str, name: str, tmp_path: Path, s3: RestartableS3, retry_s: int, stop: int) -> tuple[Driver, list]:
    """Start a run through the restartable endpoint; once trials stored 2 iterations, stop the endpoint."""
    args = ("--config", str(TINY), "--storage", f"s3://{bucket}/runs", "--name", name, "--metrics-port", "0",
            "--set", f"stop.training_iteration={stop}", "--set", "checkpoints.num_to_keep=null")
    env = {"AWS_ENDPOINT_URL": s3.url, "PBT_JOB_STORAGE_RETRY_S": str(retry_s)}
    driver = Driver(tmp_path / f"{name}.log", *args, env=env)
    driver.wait_until(all_trials_reached(bucket, f"runs/{name}", 2), "2 stored iterations")
    lineage_before = stored_lineage(bucket, f"runs/{name}")
    s3.stop()
    return driver, lineage_before


def test_a_storage_outage_of_25_s_is_ridden_out(bucket, tmp_path, restartable_s3):
    """1. Train through an S3 endpoint; after 2 stored iterations, stop the endpoint for 25 s.
    2. Uploads are retried (the log says so) and the driver does not crash.
    3. Once the endpoint is back the run finishes: every trial at the stop iteration, no
       trial errored, lineage complete, every referenced checkpoint in the bucket."""
    started = time.monotonic()
    driver, lineage_before = outage_run(bucket, "outage", tmp_path, restartable_s3, retry_s=120, stop=6)
    outage_started = time.monotonic()
    driver.wait_until(lambda: time.monotonic() - outage_started >= 25 and "Could not connect to server" in driver.output(),
                      "25 s of outage, met by the driver", timeout=90, poll=0.5)
    assert driver.process.poll() is None, "the driver survives the outage"
    restartable_s3.start()
    assert driver.finish() == 0, driver.output()[-3000:]
    assert "Could not connect to server" in driver.output(), "the outage was real"
    assert_run_complete_and_consistent(bucket, "runs/outage", 6, lineage_before, all_kept=True)
    save_seconds = [seconds for results in stored_results(bucket, "runs/outage").values()
                    for r in results for seconds, _ in r.get(CHECKPOINTS_KEY, [])]
    retried_in_driver = "[storage]" in driver.output() and "retrying" in driver.output()
    assert retried_in_driver or max(save_seconds) >= 15, "writes (driver) or uploads (trials) were retried"
    print(json.dumps({"fault": "S3 outage 25 s", "run_s": round(time.monotonic() - started, 1),
                      "longest_checkpoint_save_s": round(max(save_seconds), 1)}))


def test_an_outage_beyond_the_limit_stops_the_run_resumably(bucket, tmp_path, restartable_s3):
    """With `PBT_JOB_STORAGE_RETRY_S=5` a 40 s outage stops the run with a clear error (exit 1);
    once storage is back the same command resumes it to the end."""
    driver, lineage_before = outage_run(bucket, "limit", tmp_path, restartable_s3, retry_s=5, stop=4)
    outage_started = time.monotonic()
    exit_code = driver.finish(timeout=300)
    stopped_after_s = time.monotonic() - outage_started
    restartable_s3.start()
    output = driver.output()
    assert exit_code == 1, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("pbt-job: error:")]
    assert len(errors) == 1 and "storage failed while" in errors[0], output[-3000:]
    assert "run the same command to resume" in errors[0] and "PBT_JOB_STORAGE_RETRY_S" in errors[0]
    assert output.rstrip().splitlines()[-1] == errors[0], "a clean stop, not a crash"

    again = Driver(tmp_path / "limit-again.log", "--config", str(TINY), "--storage", f"s3://{bucket}/runs", "--name",
                   "limit", "--metrics-port", "0", "--set", "stop.training_iteration=4", "--set", "checkpoints.num_to_keep=null",
                   env={"AWS_ENDPOINT_URL": restartable_s3.url})
    assert again.finish() == 0, again.output()[-3000:]
    assert_run_complete_and_consistent(bucket, "runs/limit", 4, lineage_before, all_kept=True)
    print(json.dumps({"fault": "S3 outage beyond PBT_JOB_STORAGE_RETRY_S=5", "stopped_after_s": round(stopped_after_s, 1)}))


# -- driver death ---------------------------------------------------------------------------------------


def new_lineage_line(bucket: str, run: str) -> Callable[[], bool]:
    known = len(stored_lineage(bucket, run))
    return lambda: len(stored_lineage(bucket, run)) > known


def trials_advanced(bucket: str, run: str) -> Callable[[], bool]:
    """Every trial stored at least one iteration more than now: the session is training."""
    start = stored_iterations(bucket, run)
    return lambda: all(stored_iterations(bucket, run).get(t, 0) > i for t, i in start.items())


def new_checkpoint_object(bucket: str, run: str) -> Callable[[], bool]:
    """True as soon as a checkpoint object appears that is not there now: the driver is
    killed while that checkpoint's files are being uploaded (or just after)."""
    seen = {key for key in list_keys(bucket, run) if "/checkpoint_" in key}
    return lambda: bool({key for key in list_keys(bucket, run) if "/checkpoint_" in key} - seen)


KILL_POINTS = {
    "right after an exploit": new_lineage_line,
    "during training": trials_advanced,
    "during a checkpoint upload": new_checkpoint_object,
}


def test_sigkill_of_the_driver_at_three_points_then_the_same_command_resumes(bucket, tmp_path):
    """Driver death and a RayJob-style retry, three times in one run.

    1. `pbt-job train` on S3. Once every trial has stored 3 iterations, at each kill point
       in turn (right after an exploit, during training, during a checkpoint upload) SIGKILL the driver's whole process group
       (driver, its Ray head and workers), then start the same command again.
    2. Each new session's exporter continues `pbt_env_steps_total` from the stored totals.
    3. The last session finishes: every trial reaches the stop iteration having continued,
       each time, from a stored iteration (not from zero); lineage keeps its events (a
       redone exploit replaces the killed session's line, never doubles it); summary
       agrees; referenced checkpoints exist.
    4. No object of the run and no session's output holds the S3 secret.
    5. `--resume never` then refuses the run and changes nothing in the bucket.
    """
    stop, name = 10, "killed"
    run = f"runs/{name}"
    args = ["--config", str(TINY), "--storage", f"s3://{bucket}/runs", "--name", name,
            "--set", f"stop.training_iteration={stop}"]
    driver = Driver(tmp_path / "session-1.log", *args, "--metrics-port", "0")
    driver.wait_until(all_trials_reached(bucket, run, 3), "3 stored iterations")
    # An experiment snapshot with every trial's checkpoint: resumes need not start from zero.
    driver.wait_until(snapshot_saved_after(bucket, run, time.time()), "an experiment snapshot after 3 iterations", poll=0.2)
    figures = []
    for session, (kill_point, condition) in enumerate(KILL_POINTS.items(), start=2):
        driver.wait_until(condition(bucket, run), kill_point, poll=0.1)
        driver.kill()
        killed_at, ledgers_at_kill = time.time(), stored_ledgers(bucket, run)
        port = free_port()
        driver = Driver(tmp_path / f"session-{session}.log", *args, "--metrics-port", str(port))
        driver.wait_until(lambda: _answers(port), "the exporter to answer", poll=0.2)
        steps_at_start = scrape_env_steps(port)
        for trial, ledger in ledgers_at_kill.items():
            assert steps_at_start.get(trial, 0) >= ledger["env_steps_total"], (trial, steps_at_start, ledger)
        driver.wait_until(lambda: len(stored_ledgers(bucket, run).get(next(iter(ledgers_at_kill)), {})
                                      .get("session_starts", [])) == session, "the session's first result")
        restarted = stored_ledgers(bucket, run)
        redone = sum(ledgers_at_kill[t]["iteration"] - restarted[t]["session_starts"][-1]
                     for t in ledgers_at_kill if len(restarted[t]["session_starts"]) == session)
        figures.append({"fault": f"driver SIGKILL {kill_point}", "iterations_redone": redone,
                        "seconds_to_first_result": round(time.time() - killed_at, 1)})
        lineage_at_kill = [e for e in stored_lineage(bucket, run) if e["time"] <= killed_at]
    assert driver.finish() == 0, driver.output()[-3000:]
    assert "[resume] continuing" in driver.output()

    for trial, ledger in stored_ledgers(bucket, run).items():
        starts = ledger["session_starts"]
        assert len(starts) == 4 and starts[0] == 0 and all(s >= 1 for s in starts[1:]), (trial, ledger)
    lineage = stored_lineage(bucket, run)
    before_last_kill = {(e["recipient"], e["iteration"]) for e in lineage if e["time"] <= killed_at}
    after_last_kill = {(e["recipient"], e["iteration"]) for e in lineage if e["time"] > killed_at}
    assert not before_last_kill & after_last_kill, "a redone exploit replaced the killed session's line"
    assert_run_complete_and_consistent(bucket, run, stop, lineage_at_kill, all_kept=False)
    for line in figures:
        print(json.dumps(line))

    client = boto3.client("s3")
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    keys = list_keys(bucket, f"{run}/")
    assert any(k.endswith("tuner.pkl") for k in keys) and any(k.endswith("/params.json") for k in keys)
    for key in keys:  # Tune pickles its storage filesystem and the trial configs: no secret in them
        assert secret not in client.get_object(Bucket=bucket, Key=key)["Body"].read(), key
    for log in tmp_path.glob("session-*.log"):
        assert secret not in log.read_bytes(), log.name

    before = {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert_bad_input(run_cli("train", *args, "--resume", "never"), "already holds a run", "--resume auto")
    assert {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]} == before


def _answers(port: int) -> bool:
    try:
        return bool(scrape_env_steps(port))
    except OSError:
        return False


# -- node loss ------------------------------------------------------------------------------------------


def test_losing_a_worker_node_restarts_its_trial_from_a_checkpoint(bucket, tmp_path):
    """A head without trial resources and two 1-CPU worker nodes (a worker pool); one trial per node.

    1. After 3 stored iterations per trial, at the next exploit (the recipient's actor is
       being reset for its new config, the riskiest moment with reused actors; PBT may
       decide none, then after 4 stored iterations), remove one
       worker node (its raylet and its trial's processes die with it); once Tune reports the
       trial failed, a replacement node joins.
    2. The lost trial restarts from its last checkpoint (its first result in the new
       session continues from a stored iteration), the run finishes, and no lineage
       event or referenced checkpoint is lost.
    """
    from ray.cluster_utils import Cluster

    detect_node_death_in_20s = {"health_check_period_ms": 2000, "health_check_failure_threshold": 10}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": detect_node_death_in_20s},
    )
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        name, stop = "nodeloss", 6
        run = f"runs/{name}"
        driver = Driver(tmp_path / "nodeloss.log", "--config", str(TINY), "--storage", f"s3://{bucket}/runs",
                        "--name", name, "--metrics-port", "0", "--set", f"stop.training_iteration={stop}",
                        "--set", "resources.num_cpus_per_trial=1", env={"RAY_ADDRESS": cluster.address})
        driver.wait_until(all_trials_reached(bucket, run, 3), "3 stored iterations")
        exploits_so_far = driver.output().count(EXPLOIT_STARTS)
        four_stored = all_trials_reached(bucket, run, 4)
        driver.wait_until(lambda: driver.output().count(EXPLOIT_STARTS) > exploits_so_far or four_stored(),
                          "the next exploit or 4 stored iterations", timeout=120, poll=0.2)
        lineage_before = stored_lineage(bucket, run)
        lost_at = time.monotonic()
        cluster.remove_node(workers[0], allow_graceful=False)
        driver.wait_until(lambda: "Trial task failed for trial" in driver.output(), "the node loss to fail its trial",
                          timeout=120, poll=0.5)
        cluster.add_node(num_cpus=1)
        assert driver.finish() == 0, driver.output()[-3000:]
        finished_after_s = time.monotonic() - lost_at
    finally:
        cluster.shutdown()
    assert "Trial task failed for trial" in driver.output(), "the loss hit a trial"
    summary = assert_run_complete_and_consistent(bucket, run, stop, lineage_before, all_kept=False)
    for key, results in stored_results(bucket, run).items():
        iterations = [r["training_iteration"] for r in results]
        assert iterations.count(1) == 1, f"{key}: a restart from zero ({iterations})"
    print(json.dumps({"fault": "worker node loss", "finished_after_s": round(finished_after_s, 1),
                      "exploits": summary["exploits"]}))


# -- local disk -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("storage", "env", "needles"),
    [
        ("/sys/pbt-job-runs", {}, ["--storage /sys/pbt-job-runs", "cannot write", "writable folder"]),
        ("{tmp}/a-file/runs", {}, ["cannot write", "writable folder"]),
        ("{tmp}/runs", {"PBT_JOB_MIN_FREE_MB": "100000000"}, ["free", "PBT_JOB_MIN_FREE_MB"]),
        ("{tmp}/runs", {"PBT_JOB_STORAGE_RETRY_S": "soon"}, ["PBT_JOB_STORAGE_RETRY_S", "seconds"]),
    ],
    ids=["read-only-filesystem", "path-under-a-file", "disk-full", "bad-retry-env"],
)
def test_unwritable_or_full_local_storage_is_refused_before_training(tmp_path, storage, env, needles):
    (tmp_path / "a-file").write_text("not a folder")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = run_cli("train", "--config", str(TINY), "--storage", storage.format(tmp=tmp_path), env=env, timeout=60)
    assert_bad_input(proc, *needles)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "nothing written"


# -- interruptions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "whole_group"), [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c-in-a-terminal", "kubernetes-stops-the-pod"])
def test_a_signal_interrupts_the_run_and_the_printed_command_resumes_it(tmp_path, signum, whole_group):
    """Ctrl-C (SIGINT to the terminal's whole process group) or Kubernetes' stop (SIGTERM to the
    driver only), after two stored iterations: the driver exits 128 + the signal with one line
    holding the pbt-job command that resumes (not Tune's `Tuner.restore` hint); `summary.json`
    and the report say interrupted, not finished; that command continues every trial from a
    stored iteration (not from zero) to the stop."""
    run = tmp_path / "runs" / "stopped"
    args = ["--config", str(TINY), "--storage", str(tmp_path / "runs"), "--name", "stopped",
            "--set", "stop.training_iteration=8", "--metrics-port", "0"]
    driver = Driver(tmp_path / "interrupted.log", *args)

    def ledgers() -> dict[str, dict]:
        state = run / "pbt_state.jsonl"
        return json.loads(state.read_text())["trials"] if state.exists() else {}

    driver.wait_until(lambda: len(ledgers()) == 2 and min(t["iteration"] for t in ledgers().values()) >= 2,
                      "two stored iterations per trial")
    (os.killpg if whole_group else os.kill)(driver.process.pid, signum)
    assert driver.process.wait(timeout=120) == 128 + signum, driver.output()[-3000:]
    output = driver.output()
    assert "Tuner.restore" not in output
    interrupted = [line for line in output.splitlines() if line.startswith("pbt-job: interrupted by")]
    assert len(interrupted) == 1 and signal.Signals(signum).name in interrupted[0], output[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    report = run_cli("report", str(run), "--out", str(tmp_path / "report"))
    assert report.returncode == 0 and "interrupted" in (tmp_path / "report" / "report.md").read_text()

    command = shlex.split(interrupted[0].split("resume with: ", 1)[1])
    assert command[:2] == ["pbt-job", "train"]
    resumed = subprocess.run([sys.executable, "-m", "pbt_job.cli", *command[1:]], capture_output=True, text=True,
                             cwd=REPO, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    for trial, ledger in ledgers().items():
        assert ledger["iteration"] == 8 and len(ledger["session_starts"]) == 2, (trial, ledger)
        # From a stored iteration, not from zero; a recipient interrupted right after an exploit continues
        # from the checkpoint it was cloned from, which may be its donor's first.
        assert ledger["session_starts"][1] >= 1, (trial, ledger)


# -- untrusted run files --------------------------------------------------------------------------------


def test_corrupt_run_files_are_skipped_with_warnings_on_resume(ray_start_2_cpus, tmp_path):
    """A finished run whose pbt-job files were damaged (truncated lines, garbage, a pickle
    where JSON belongs): `train --resume auto` warns per bad line or file, never crashes
    and never unpickles them, and rewrites a valid summary."""
    import pickle

    from pbt_job.training.config import load_config
    from pbt_job.training.run import train

    job = load_config(TINY, ["stop.training_iteration=3", "pbt.perturbation_interval=1"])
    train(job, parse_storage_uri(str(tmp_path)), "damaged", resume="never")
    run = tmp_path / "damaged"
    lineage = (run / "lineage.jsonl").read_text() if (run / "lineage.jsonl").exists() else ""
    (run / "lineage.jsonl").write_text(lineage + '{"recipient": "x", "iter\n[1, 2]\nnot json at all\n')
    (run / "pbt_state.jsonl").write_bytes(pickle.dumps({"trials": {}}))
    (run / "summary.json").write_text('{"best_trial": ')
    proc = run_cli("train", "--config", str(TINY), "--storage", str(tmp_path), "--name", "damaged", "--metrics-port", "0",
                   "--set", "stop.training_iteration=3", "--set", "pbt.perturbation_interval=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    valid = len(lineage.splitlines())
    for bad_line in (valid + 1, valid + 2, valid + 3):
        assert f"lineage.jsonl line {bad_line} skipped" in proc.stderr, proc.stderr[-3000:]
    assert "pbt_state.jsonl is not valid JSON" in proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["exploits"] == len(parse_lineage(lineage))
