"""The real `pbt-job` command: exit codes, one-line errors, storage checks, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, free_port, list_keys

TINY = REPO / "tests" / "data" / "tiny.yaml"


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`pbt-job ARGS` with this environment, changed by `env` (a None value removes the variable)."""
    environ = {key: value for key, value in {**os.environ, **(env or {})}.items() if value is not None}
    return subprocess.run(
        [sys.executable, "-m", "pbt_job.cli", *args], capture_output=True, text=True, timeout=timeout, env=environ, cwd=REPO
    )


def assert_bad_input(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one line on stderr naming what is wrong, no traceback, no secret."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pbt-job: error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if secret:
        assert secret not in proc.stdout + proc.stderr


def test_validate_prints_what_it_checked(bucket):
    proc = run_cli("validate", "--config", str(TINY), "--storage", f"s3://{bucket}/runs")
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout
    assert f"bucket {bucket} exists" in proc.stdout
    assert "writable" in proc.stdout
    assert list_keys(bucket) == [], "the probe object is deleted"


@pytest.mark.parametrize(
    ("storage", "env", "needles"),
    [
        ("s3://no-such-bucket-here/runs", {}, ["no-such-bucket-here", "does not exist"]),
        ("s3://{bucket}/runs", {"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, ["refused the credentials", "AWS_SECRET_ACCESS_KEY"]),
        ("s3://{bucket}/runs", {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN"}, ["refused the credentials"]),
        ("s3://{bucket}/runs", {"AWS_ENDPOINT_URL": "http://127.0.0.1:{dead_port}"}, ["unreachable", "AWS_ENDPOINT_URL"]),
        ("s3://{bucket}/runs", {"AWS_ENDPOINT_URL": "minio:9000"}, ["AWS_ENDPOINT_URL", "http://minio:9000"]),
        ("s3://{bucket}/runs", {"AWS_SECRET_ACCESS_KEY": ""}, ["AWS_SECRET_ACCESS_KEY is not set"]),
        ("s3:///runs", {}, ["no bucket"]),
        ("gs://bucket/runs", {}, ["S3 API"]),
        ("ftp://host/runs", {}, ["unsupported scheme"]),
    ],
    ids=["missing-bucket", "wrong-secret", "unknown-key", "unreachable", "endpoint-not-url",
         "half-credentials", "no-bucket", "gcs-scheme", "ftp-scheme"],
)
def test_validate_and_train_reject_bad_storage_before_training(bucket, tmp_path, storage, env, needles):
    storage = storage.format(bucket=bucket)
    env = {k: v.format(dead_port=free_port()) for k, v in env.items()}
    commands = ("validate", "train") if "bucket" in storage and not env else ("validate",)
    for command in commands:
        started = time.monotonic()
        proc = run_cli(command, "--config", str(TINY), "--storage", storage, env=env, timeout=120)
        assert_bad_input(proc, *needles)
        assert time.monotonic() - started < 60, "storage problems are found before any trial starts"
    assert list_keys(bucket) == []


@pytest.mark.slow
def test_a_shared_credentials_file_alone_serves_validate_train_and_report(bucket, tmp_path):
    """No key in the environment: the default AWS credential chain reads AWS_SHARED_CREDENTIALS_FILE
    (as it reads a web identity token under IRSA) in the CLI, in Ray's trial workers and in report."""

    def credentials_file(name: str, secret: str) -> dict[str, str | None]:
        path = tmp_path / name
        path.write_text(f"[pbt-job]\naws_access_key_id = {os.environ['AWS_ACCESS_KEY_ID']}\naws_secret_access_key = {secret}\n")
        return {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
                "AWS_SHARED_CREDENTIALS_FILE": str(path), "AWS_PROFILE": "pbt-job",
                "AWS_CONFIG_FILE": str(tmp_path / "no-config"), "AWS_EC2_METADATA_DISABLED": "true", "RAY_ADDRESS": "local"}

    storage = f"s3://{bucket}/runs"
    wrong = credentials_file("wrong-credentials", "wrong-secret")
    assert_bad_input(run_cli("validate", "--config", str(TINY), "--storage", storage, env=wrong, timeout=120),
                     "refused the credentials")
    env = credentials_file("credentials", os.environ["AWS_SECRET_ACCESS_KEY"])
    proc = run_cli("validate", "--config", str(TINY), "--storage", storage, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "credentials accepted" in proc.stdout
    proc = run_cli("train", "--config", str(TINY), "--storage", storage, "--set", "stop.training_iteration=3", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    keys = list_keys(bucket, "runs/tiny/")
    assert any("/checkpoint_" in key for key in keys), keys
    proc = run_cli("report", f"{storage}/tiny", "--out", str(tmp_path / "report"), env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "report" / "report.md").is_file()


CONFIG_CASES = {
    "malformed-yaml": ("env: {width: 7\n", [], ["malformed YAML", "line"]),
    "unknown-key": ("env: {grid_size: 7}\n", [], ["env.grid_size", "unknown key"]),
    "wrong-type": ("env: {width: big}\n", [], ["env.width", "integer"]),
    "population-1": ("pbt: {population: 1}\n", [], ["pbt.population"]),
    "interval-ge-stop": ("pbt: {perturbation_interval: 5}\nstop: {training_iteration: 5}\n", [],
                         ["pbt.perturbation_interval:", "stop.training_iteration"]),
    "inverted-range": ("pbt: {mutations: {clip_param: {type: uniform, low: 0.3, high: 0.1}}}\n", [],
                       ["pbt.mutations.clip_param", "inverted range"]),
    "empty-choice": ("pbt: {mutations: {lr: {type: choice, values: []}}}\n", [], ["pbt.mutations.lr", "non-empty"]),
    "explore-breaks-batch": (
        "pbt: {mutations: {minibatch_size: {type: choice, values: [256, 1024]}}, max_train_batch_size: 4096}\n"
        "ppo: {train_batch_size_per_learner: 1024, minibatch_size: 256}\n", [],
        ["train_batch_size_per_learner", "2 x minibatch_size"]),
    "unknown-mutation": ("pbt: {mutations: {momentum: {type: uniform, low: 0.1, high: 0.2}}}\n", [],
                         ["pbt.mutations.momentum:", "cannot change in place"]),
    "set-unknown-key": ("{}\n", ["--set", "pbt.populaton=3"], ["pbt.populaton", "no such key"]),
    "set-malformed": ("{}\n", ["--set", "population"], ["KEY=VALUE"]),
    "set-bad-value": ("{}\n", ["--set", "env.max_steps=-3"], ["env.max_steps"]),
    "metrics-port-range": ("{}\n", ["--metrics-port", "70000"], ["metrics_port"]),
    "odd-window": ("env: {obs_range_prey: 8}\n", [], ["obs_range_prey", "odd"]),
    "name-with-slash": ("{}\n", ["--name", "../elsewhere"], ["--name '../elsewhere'", "not a run-folder name"]),
    "name-with-space": ("{}\n", ["--name", "a b"], ["--name 'a b'", "not a run-folder name"]),
    "mutation-outside-its-field": ("pbt: {mutations: {lr: {type: choice, values: [-1.0, -2.0]}}}\n", [],
                                   ["pbt.mutations.lr", "greater than 0"]),
    "metric-no-result-carries": ("pbt: {metric: episode_reward_mean}\n", [], ["pbt.metric", "pbt_score"]),
    "model-deeper-than-window": ("ppo: {conv_channels: [4, 4, 4, 4, 4]}\n", [], ["ppo.conv_channels", "at most"]),
    "never-stops": ("stop: {training_iteration: null, time_total_s: .inf}\n", [], ["stop.time_total_s", "finite"]),
    "boolean-count": ("ppo: {minibatch_size: true}\n", [], ["ppo.minibatch_size", "integer"]),
    "set-half-written": ("{}\n", ["--set", "pbt.population=[1,"], ["--set 'pbt.population=[1,'", "malformed YAML"]),
    "utf16-file": ("env: {width: 7}\n".encode("utf-16"), [], ["UTF-8"]),
    "binary-file": (b"\x00\xff\xfe\x01", [], ["UTF-8"]),
}


def tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_input_exits_2_naming_the_field(tmp_path, case):
    """Bad input against storage that already holds a run: exit 2, one line, the run untouched."""
    text, extra, needles = CONFIG_CASES[case]
    config = tmp_path / "job.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    runs = tmp_path / "runs"
    for name in ("pbt-predpreygrass", "tiny"):
        (runs / name).mkdir(parents=True)
        (runs / name / "lineage.jsonl").write_text('{"recipient": "a", "iteration": 2}\n')
    before = tree(runs)
    proc = run_cli("train", "--config", str(config), "--storage", str(runs), *extra, timeout=60)
    assert_bad_input(proc, *needles)
    assert tree(runs) == before, "nothing in the storage changes"


def test_missing_config_file_and_bad_flags(tmp_path):
    assert_bad_input(run_cli("train", "--config", str(tmp_path / "nope.yaml")), "cannot read")
    assert_bad_input(run_cli("validate", "--config", "/dev/zero"), "--config /dev/zero", "larger than")
    assert_bad_input(run_cli("train", "--config", str(TINY), "--resume", "sometimes"), "--resume", "see pbt-job train --help")
    assert_bad_input(run_cli(), "command", "(see pbt-job --help)")


def test_a_trial_larger_than_the_local_ray_exits_2_naming_the_shortfall(tmp_path):
    """Ray starts (its own log lines go to stderr first), then one error line; nothing is left in the storage."""
    proc = run_cli("train", "--config", str(TINY), "--storage", str(tmp_path / "runs"), "--metrics-port", "0",
                   "--set", "resources.num_cpus_per_trial=1000", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("pbt-job: error: resources: one trial needs 1000 CPU")
    assert "Traceback" not in proc.stderr and not list((tmp_path / "runs").rglob("*"))


def test_resume_must_without_a_run_exits_2(bucket):
    proc = run_cli("train", "--config", str(TINY), "--storage", f"s3://{bucket}/runs", "--resume", "must")
    assert_bad_input(proc, "--resume must", "holds no run")
    assert list_keys(bucket) == []


@pytest.mark.parametrize("command", ["validate", "train", "report"])
def test_a_hung_endpoint_is_named_within_15_s(hung_endpoint, command):
    """An endpoint that accepts connections and never answers (a hung proxy): exit 2 naming it, in seconds."""
    storage = "s3://pbt-hung/runs"
    args = ("report", f"{storage}/tiny") if command == "report" else (command, "--config", str(TINY), "--storage", storage)
    env = {"AWS_ENDPOINT_URL": hung_endpoint, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "example"}
    started = time.monotonic()
    proc = run_cli(*args, env=env, timeout=40)
    took_s = time.monotonic() - started
    assert_bad_input(proc, hung_endpoint, "did not answer", "AWS_ENDPOINT_URL")
    assert took_s < 15, f"{command} took {took_s:.1f} s to name a hung endpoint"


def test_a_throttling_endpoint_is_called_unavailable_not_misconfigured(slow_down_endpoint):
    env = {"AWS_ENDPOINT_URL": slow_down_endpoint, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "example"}
    proc = run_cli("validate", "--config", str(TINY), "--storage", "s3://pbt-busy/runs", env=env, timeout=40)
    assert_bad_input(proc, slow_down_endpoint, "unavailable now", "503", "try again later")


@pytest.mark.parametrize("name", ["2024", "yes", "1e3", "null"])
def test_name_is_taken_verbatim_not_as_yaml(tmp_path, name):
    """`--name 2024` names the folder `2024` (the flag is not YAML): here `--resume must` then finds no run there."""
    proc = run_cli("train", "--config", str(TINY), "--storage", str(tmp_path), "--name", name, "--resume", "must", timeout=120)
    assert_bad_input(proc, "--resume must", f"{tmp_path}/{name} holds no run")


def test_a_bad_name_blames_the_flag_not_the_file(tmp_path):
    proc = run_cli("train", "--config", str(TINY), "--storage", str(tmp_path), "--name", ".hidden", timeout=60)
    assert_bad_input(proc, "--name '.hidden'", "starting with a letter or digit")
    assert "tiny.yaml" not in proc.stderr and not any(tmp_path.iterdir())


def stored_run(root, config: str = str(TINY)):
    """A run folder as `train` leaves it for a resume: its `job_config.json` and Tune's `tuner.pkl`."""
    from pbt_job.training.config import config_to_dict, load_config

    run = root / "tiny"
    run.mkdir(parents=True)
    (run / "job_config.json").write_text(json.dumps(config_to_dict(load_config(config))))
    (run / "tuner.pkl").write_bytes(b"Tune's pickled run: never reached by a refused resume")
    return run


@pytest.mark.parametrize("resume", ["auto", "must"])
@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["pbt.population=3", "pbt.metric=env_runners/episode_return_mean"], ["pbt.metric", "pbt.population"]),
        (["pbt.mutations.gamma={type: uniform, low: 0.9, high: 0.99}"], ["pbt.mutations.gamma.low"]),
        (["stop.training_iteration=12"], ["stop.training_iteration"]),
    ],
    ids=["population-and-metric", "mutation", "stop"],
)
def test_a_resume_with_another_configuration_exits_2_naming_the_keys(tmp_path, resume, overrides, keys):
    """Tune would restore its pickled scheduler and stop criteria while pbt-job used the new values: refused,
    before Ray starts, the run untouched."""
    run = stored_run(tmp_path)
    before = tree(run)
    sets = [arg for override in overrides for arg in ("--set", override)]
    proc = run_cli("train", "--config", str(TINY), "--storage", str(tmp_path), "--resume", resume, *sets, timeout=120)
    assert_bad_input(proc, "a resume cannot change", *keys, "--name NEW")
    assert tree(run) == before


def test_storage_is_checked_once_per_start(tmp_path, monkeypatch):
    """One probe write per `pbt-job train`, before Ray loads (here `--resume must` stops it right after)."""
    from pbt_job import cli, storage

    probes = []
    check_local = storage._check_local
    monkeypatch.setattr(storage, "_check_local", lambda location: probes.append(location) or check_local(location))
    assert cli.main(["train", "--config", str(TINY), "--storage", str(tmp_path), "--resume", "must"]) == 2
    assert len(probes) == 1
