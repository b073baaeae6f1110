"""Real PBT runs on local Ray (2 CPUs) with a tiny board, on local disk and on the S3 server."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from ray import tune
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.utils.serialization import TuneFunctionDecoder

from conftest import REPO, donor_modules, list_keys, read_object
from pbt_job.run_folder import parse_lineage
from pbt_job.storage import filesystem, parse_storage_uri
from pbt_job.training.algorithm import ENDED_AT_KEY, PBTPPO, RESTORED_KEY, SEED_KEY, weights_digest
from pbt_job.training.config import load_config
from pbt_job.training.explore import explore_fn, pbt_mutations
from pbt_job.training.run import MODULES_IN_CHECKPOINT, initial_sampler, param_space, train
from pbt_job.training.scheduler import PIN_DIR

TINY = REPO / "tests" / "data" / "tiny.yaml"
LR_CHOICES = [1e-3, 5e-4, 1e-4]
ENTROPY_CHOICES = [0.0, 1e-3, 5e-3]

pytestmark = pytest.mark.slow


def initial_draws(job, n: int, storage: Path) -> list[dict]:
    """The first `n` configs `train`'s seeded sampler draws, in trial order (no training)."""
    sampler = initial_sampler(job)
    sampler.add_configurations({"draw": {"run": PBTPPO, "config": param_space(job), "num_samples": n, "storage_path": str(storage)}})
    return [sampler.next_trial().config for _ in range(n)]


def results_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def restored_results(results: list[dict]) -> list[dict]:
    """The first result after each restore (a clone, or a trial resuming its own checkpoint)."""
    return [r for r in results if RESTORED_KEY in r]


def clone_result(results: list[dict], event: dict) -> dict | None:
    """The recipient's first result after the exploit: restored, its iteration ended after the
    decision (to the microsecond: Tune's `timestamp` is whole seconds, so a result of the same
    second as the exploit used to match either side of it), with the explored config."""
    after = event["config_after"]
    return next(
        (r for r in sorted(restored_results(results), key=lambda r: r[ENDED_AT_KEY])
         if r[ENDED_AT_KEY] > event["time"] and all(r["config"][k] == pytest.approx(v) for k, v in after.items())),
        None,
    )


def assert_explored_within_domains(event: dict) -> None:
    after = event["config_after"]
    assert after["lr"] in LR_CHOICES
    assert after["entropy_coeff"] in ENTROPY_CHOICES
    assert 0.1 <= after["clip_param"] <= 0.3


def assert_restores_train_with_their_own_config(results: list[dict]) -> int:
    """Pitfall ray-project/ray#62173: from the first iteration after a restore (a clone above
    all), the learner's optimizer lr and the loss coefficients are the trial's own config,
    not the donor's. Returns how many restores were checked."""
    restored = restored_results(results)
    for result in restored:
        config = result["config"]
        for module, applied in result[RESTORED_KEY].items():
            assert applied["lr"] == pytest.approx(config["lr"]), (module, result["training_iteration"])
            assert applied["entropy_coeff"] == pytest.approx(config["entropy_coeff"]), module
            assert applied["clip_param"] == pytest.approx(config["clip_param"]), module
    return len(restored)


def test_local_run_exploits_clone_the_donor_weights(ray_start_2_cpus, tmp_path):
    """A population of 2 on local disk, every checkpoint kept.

    1. Train with PBT; exploits happen and lineage.jsonl records them.
    2. The recipient's new config lies in the declared domains.
    3. Its first iteration after the clone trains the donor's weights (digest of the
       loaded modules == digest of the donor checkpoint's modules) with its own lr,
       entropy and clip coefficients.
    4. summary.json and best/<policy>/ are written.
    5. Seeds: trial i started from the i-th config `pbt.seed` draws, with RLlib seed
       `pbt.seed + i`; Tune's own pbt_global.txt / pbt_policy_*.txt are not written.
    """
    job = load_config(TINY, ["checkpoints.num_to_keep=null", "stop.training_iteration=10"])
    outcome = train(job, parse_storage_uri(str(tmp_path)), "local", resume="never")
    run = tmp_path / "local"
    assert outcome.errors == 0
    exploits = parse_lineage((run / "lineage.jsonl").read_text())
    assert exploits
    results = {d.name: results_of((d / "result.json").read_text()) for d in run.glob("PBTPPO_*")}
    assert sum(assert_restores_train_with_their_own_config(r) for r in results.values()) >= len(exploits)
    compared = 0
    for event in exploits:
        assert event["recipient"] != event["donor"]
        assert_explored_within_domains(event)
        restored = clone_result(next(r for d, r in results.items() if f"_{event['recipient']}_" in d), event)
        if restored is None:
            continue
        modules = donor_modules(event, exploits, MODULES_IN_CHECKPOINT)
        for policy, applied in restored[RESTORED_KEY].items():
            assert applied["weights_sha256"] == weights_digest(RLModule.from_checkpoint(modules / policy)), policy
        compared += 1
    assert compared >= 1, exploits

    summary = json.loads((run / "summary.json").read_text())
    assert summary["exploits"] == len(exploits)
    assert summary["best_trial"] in {e["recipient"] for e in exploits} | {e["donor"] for e in exploits}
    # What the trials sampled, not 2 x 10 iterations: a recipient continues from its donor's
    # iteration, which may be ahead of its own (it then samples fewer iterations itself).
    sampled = sum(r["env_runners"]["num_env_steps_sampled"] for lines in results.values() for r in lines)
    assert summary["env_steps_total"] == sampled >= 10 * 128
    assert set(summary["best_hyperparameters"]) == {"lr", "clip_param", "entropy_coeff"}
    assert sorted(p.name for p in (run / "best").iterdir() if p.is_dir()) == sorted(job.env.policies)

    mutated = ("lr", "clip_param", "entropy_coeff")
    draws = initial_draws(job, job.pbt.population, tmp_path / "draws")
    firsts = sorted((r[0] for r in results.values()), key=lambda r: r["trial_id"])  # ids end in the trial index
    assert [{k: r["config"][k] for k in mutated} for r in firsts] == [{k: d[k] for k in mutated} for d in draws]
    assert [r[SEED_KEY] for r in firsts] == [job.pbt.seed + i for i in range(job.pbt.population)]
    assert not [p.name for p in run.rglob("pbt_*.txt")], "Tune's PBT logs repeat lineage.jsonl"


class SnapshotWatcher(threading.Thread):
    """Polls the run's saved experiment snapshot (what a resume reads) while it trains and
    records each time a trial's latest checkpoint named there is missing from the bucket,
    the snapshot unchanged before and after the look (not a snapshot being replaced)."""

    def __init__(self, bucket: str, run: str):
        super().__init__(daemon=True)
        self.bucket, self.run_prefix = bucket, run
        self.client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        self.looks, self.missing, self.stopped = 0, [], threading.Event()

    def snapshot(self) -> str | None:
        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.run_prefix}/experiment_state-").get("Contents", [])
        if not listing:
            return None
        key = max(listing, key=lambda o: o["LastModified"])["Key"]
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read().decode()

    def latest_checkpoints(self, snapshot: str) -> list[str]:
        paths = []
        for _, run_metadata in json.loads(snapshot)["trial_data"]:
            latest = TuneFunctionDecoder(allow_cloudpickle=True).decode(run_metadata)["checkpoint_manager"].latest_checkpoint_result
            if latest is not None:
                paths.append(latest.checkpoint.path.removeprefix(f"{self.bucket}/"))
        return paths

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            try:
                before = self.snapshot()
                if before is None:
                    continue
                absent = [path for path in self.latest_checkpoints(before) if not list_keys(self.bucket, path + "/")]
                if absent and self.snapshot() == before:
                    self.missing += absent
                self.looks += 1
            except (json.JSONDecodeError, botocore.exceptions.ClientError):
                continue


def test_s3_run_with_small_retention_never_loses_a_donor_checkpoint(ray_start_2_cpus, bucket):
    """The retention case of ray 2.60 (population 2, interval 2, checkpoint every iteration, S3),
    with the smallest retention, num_to_keep=1.

    Every exploit restores (no trial errors), storage holds at most num_to_keep
    checkpoints per trial plus one pinned donor copy, and at no time during the run
    does the saved experiment snapshot name a trial's latest checkpoint that retention
    has deleted (a driver killed then could not resume).
    """
    job = load_config(TINY, ["stop.training_iteration=10", "checkpoints.num_to_keep=1"])  # 4 rounds: exploits are sure
    watcher = SnapshotWatcher(bucket, "runs/retention")
    watcher.start()
    try:
        outcome = train(job, parse_storage_uri(f"s3://{bucket}/runs"), "retention", resume="never")
    finally:
        watcher.stopped.set()
        watcher.join()
    assert outcome.errors == 0
    assert watcher.looks >= 20 and not watcher.missing, (watcher.looks, watcher.missing)
    exploits = parse_lineage(read_object(bucket, "runs/retention/lineage.jsonl"))
    assert exploits
    keys = list_keys(bucket, "runs/retention/")
    trial_dirs = {key.split("/")[2] for key in keys if key.split("/")[2].startswith("PBTPPO_")}
    assert len(trial_dirs) == 2
    for trial_dir in trial_dirs:
        own = {k.split("/")[3] for k in keys if k.split("/")[2] == trial_dir and k.split("/")[3].startswith("checkpoint_")}
        pins = {k.split("/")[4] for k in keys if k.split("/")[2] == trial_dir and k.split("/")[3] == PIN_DIR}
        pins.discard("")  # the folder marker object "pinned/"
        assert len(own) <= job.checkpoints.num_to_keep, own
        assert len(pins) <= 1, pins
    for event in exploits:
        assert_explored_within_domains(event)
    restores = sum(
        assert_restores_train_with_their_own_config(results_of(read_object(bucket, f"runs/retention/{d}/result.json")))
        for d in trial_dirs
    )
    assert restores >= len(exploits)


def test_stock_pbt_loses_the_donor_checkpoint_to_retention(ray_start_2_cpus, bucket):
    """Reproduces the bug LineagePBT fixes, with Tune's own PopulationBasedTraining.

    1. Same set-up as above (num_to_keep=2, population 2, interval 2, S3, every iteration).
    2. The recipient's restore references the donor's checkpoint; the donor keeps
       training and rotates it away before the recipient's new actor loads it.
    3. Tune reports "Could not recover from checkpoint as it does not exist on storage anymore".
    """
    job = load_config(TINY, ["stop.training_iteration=10"])
    location = parse_storage_uri(f"s3://{bucket}/runs")
    pbt = PopulationBasedTraining(
        time_attr="training_iteration",
        metric=job.pbt.metric,
        mode="max",
        perturbation_interval=2,
        quantile_fraction=0.5,
        hyperparam_mutations=pbt_mutations(job.pbt),
        custom_explore_fn=explore_fn(job.pbt),
    )
    tuner = tune.Tuner(
        PBTPPO,
        param_space=param_space(job),
        tune_config=tune.TuneConfig(scheduler=pbt, num_samples=2),
        run_config=tune.RunConfig(
            name="stock",
            storage_path=location.path,
            storage_filesystem=filesystem(location),
            stop={"training_iteration": 10},
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_frequency=1),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )
    results = tuner.fit()
    messages = [str(error) for error in results.errors]
    assert any("does not exist on storage anymore" in m for m in messages), messages


def test_pb2_scheduler_explores_within_the_domains(ray_start_2_cpus, tmp_path):
    """`pbt.scheduler: pb2` end to end: same lineage and pinning, explored values in the domains.

    Plain PBT would pass this too; what only PB2 does (a GP-bandit proposal) is
    `test_scheduler.py::test_pb2_explores_where_its_gp_expects_the_most_gain_not_by_perturbing`.
    """
    job = load_config(TINY, ["pbt.scheduler=pb2", "stop.training_iteration=10"])  # 4 perturbation rounds: exploits are sure
    outcome = train(job, parse_storage_uri(str(tmp_path)), "pb2", resume="never")
    assert outcome.errors == 0
    exploits = [e for e in parse_lineage((tmp_path / "pb2" / "lineage.jsonl").read_text()) if e["event"] == "exploit"]
    assert exploits
    for event in exploits:
        assert_explored_within_domains(event)
