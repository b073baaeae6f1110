"""Exploits in place: `PBTPPO.reset_config` on a real PBTPPO, and a real population whose actors are reused."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pyarrow.fs
import pytest
from ray.rllib.connectors.learner.general_advantage_estimation import GeneralAdvantageEstimation
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.train._internal.session import _TrainingResult
from ray.tune import Checkpoint
from ray.tune.search.sample import Domain

from conftest import REPO, donor_modules
from pbt_job.result_keys import tune_key
from pbt_job.run_folder import parse_lineage
from pbt_job.storage import filesystem, parse_storage_uri, retries_so_far
from pbt_job.training.algorithm import ENDED_AT_KEY, IN_PLACE_KEYS, PBTPPO, RESTORED_KEY, SEED_KEY, weights_digest
from pbt_job.training import node_checkpoints
from pbt_job.training.config import ConfigError, load_config
from pbt_job.training.ray_compat import learner_connector
from pbt_job.training.run import MODULES_IN_CHECKPOINT, param_space, train

TINY = REPO / "tests" / "data" / "tiny.yaml"

pytestmark = pytest.mark.slow

EXPLORED = {
    "lr": 2.5e-4, "gamma": 0.9, "lambda": 0.8, "clip_param": 0.15, "vf_loss_coeff": 0.5, "entropy_coeff": 0.004,
    "kl_coeff": 0.3, "num_epochs": 2, "minibatch_size": 32, "train_batch_size_per_learner": 96,
}
"""A new value for every key PBT may mutate (YAML names)."""


def trial_config(job) -> dict:
    """One member's Tune config: the param space with its domains drawn."""
    return {key: value.sample() if isinstance(value, Domain) else value for key, value in param_space(job).items()}


def in_force(learner) -> dict:
    """What a learner will train with, read from its config, optimizer and GAE piece."""
    gae = next(piece for piece in learner_connector(learner) if isinstance(piece, GeneralAdvantageEstimation))
    module = next(iter(learner.module.keys()))
    optimizer = learner.get_optimizers_for_module(module)[0][1]
    return {
        "lr": optimizer.param_groups[0]["lr"],
        "gamma": gae.gamma,
        "lambda": gae.lambda_,
        "entropy_coeff": float(learner.entropy_coeff_schedulers_per_module[module].get_current_value()),
        "kl_coeff": float(learner.curr_kl_coeffs_per_module[module]),
        **{name: getattr(learner.config, name) for name in ("clip_param", "vf_loss_coeff")},
    }


@pytest.fixture(scope="module")
def member(ray_start_2_cpus):
    """A live member and the Tune config it was started with."""
    config = trial_config(load_config(TINY))
    algo = PBTPPO(config=dict(config))
    yield algo, config
    algo.stop()


def test_reset_config_changes_every_mutable_key_in_place(member):
    """Every key PBT may mutate reaches the learner (optimizer lr, loss coefficients, GAE) and the sampler."""
    algo, config = member
    assert {tune_key(name) for name in EXPLORED} == IN_PLACE_KEYS
    algo.train()
    assert algo.reset_config({**config, **{tune_key(name): value for name, value in EXPLORED.items()}}) is True
    learner_view = next(iter(algo.learner_group.foreach_learner(in_force))).get()
    assert learner_view == pytest.approx({k: EXPLORED[k] for k in learner_view})
    assert algo.config.num_epochs == 2 and algo.config.minibatch_size == 32
    result = algo.train()
    assert result["env_runners"]["num_env_steps_sampled"] == 96  # the new train batch, sampled by the new config
    assert result[RESTORED_KEY]  # a reused actor without a checkpoint restarts from its initial weights


@pytest.mark.parametrize("runners", [0, 1])
def test_env_runners_take_the_new_config_and_the_loaded_weights(ray_start_2_cpus, tmp_path, runners):
    """An exploit loads a checkpoint that may be older than the live weights: the learner and
    the sampler (in the trial, or a remote env runner) must both take it."""
    config = trial_config(load_config(TINY, [f"resources.num_env_runners={runners}", "resources.num_cpus_per_env_runner=0.5"]))
    algo = PBTPPO(config=dict(config))
    try:
        def sampler_view(env_runner):
            module = env_runner.module
            return env_runner.config.train_batch_size_per_learner, {p: weights_digest(module[p]) for p in module.keys()}

        def sampler():
            return algo.env_runner_group.foreach_env_runner(sampler_view, local_env_runner=runners == 0)[0]

        algo.train()
        algo.save_to_path(str(tmp_path / "own"))
        saved = {p: weights_digest(RLModule.from_checkpoint(tmp_path / "own" / MODULES_IN_CHECKPOINT / p)) for p in algo.config.policies}
        _, sampler_saved = sampler()
        algo.train()
        algo.train()  # the live weights move two versions past the checkpoint
        assert sampler()[1] != sampler_saved
        assert algo.reset_config({**config, tune_key("train_batch_size_per_learner"): 96, "minibatch_size": 32}) is True
        algo.load_checkpoint(str(tmp_path / "own"))  # what Tune calls next on an exploit
        assert sampler() == (96, sampler_saved)
        result = algo.train()
        assert {p: v["weights_sha256"] for p, v in result[RESTORED_KEY].items()} == saved
        assert result["env_runners"]["num_env_steps_sampled"] == 96
    finally:
        algo.stop()


def test_reset_config_refuses_a_key_that_cannot_change_in_place(member):
    algo, config = member
    before = algo.config
    with pytest.raises(ValueError, match="cannot change num_env_runners in a live trial"):
        algo.reset_config({**config, "num_env_runners": 1})
    assert algo.config is before


def test_reset_config_takes_a_config_that_went_through_pb2(member):
    """PB2 flattens and unflattens the config it explores, which drops empty mappings."""
    from ray.tune.utils.util import flatten_dict, unflatten_dict

    algo, config = member
    assert unflatten_dict(flatten_dict(config)) != config
    assert algo.reset_config(unflatten_dict(flatten_dict({**config, "lr": 3e-4}))) is True


def test_a_mutation_that_cannot_change_in_place_is_refused_at_load():
    for key in ("conv_channels", "num_env_runners"):
        with pytest.raises(ConfigError, match=rf"pbt\.mutations\.{key}: .*in place"):
            load_config(TINY, [f"pbt.mutations.{key}={{type: choice, values: [1, 2]}}"])


def results_by_trial(run: Path) -> dict[str, list[dict]]:
    results = {}
    for result_file in run.glob("PBTPPO_*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        results[lines[0]["trial_id"]] = lines
    return results


def test_exploits_reuse_the_actors_and_a_new_trial_on_a_reused_actor_starts_fresh(ray_start_2_cpus, tmp_path):
    """Population 3 where only 2 trials fit at once (1 CPU each on 2 CPUs).

    1. Exploits happen; no trial ever gets a new actor after the first two: every
       result comes from at most two processes.
    2. The third trial starts on the actor a paused recipient left: its first result
       trains the initial weights (digest of a fresh member's modules, seeded with the
       `rllib_seed` it reports: that of the actor's first trial), not the previous
       trial's trained ones.
    3. Each recipient's first result after its exploit trains the donor's weights
       with its own explored lr, entropy and clip (see test_training_pbt).
    4. The result an exploit was decided on stays in the recipient's result.json.
    """
    job = load_config(TINY, ["pbt.population=3", "resources.num_cpus_per_trial=1", "stop.training_iteration=8",
                             "checkpoints.num_to_keep=null"])
    outcome = train(job, parse_storage_uri(str(tmp_path)), "reuse", resume="never")
    assert outcome.errors == 0
    run = tmp_path / "reuse"
    results = results_by_trial(run)
    assert len(results) == 3
    assert len({r["pid"] for lines in results.values() for r in lines}) <= 2  # 1 when the shared Ray has 1 CPU free
    exploits = parse_lineage((run / "lineage.jsonl").read_text())
    assert exploits
    for event in exploits:  # Tune's loggers replaced result.json by the lagging stored copy at each restart
        assert any(r["training_iteration"] == event["iteration"] for r in results[event["recipient"]]), event

    late_starter = next(lines for lines in results.values() if RESTORED_KEY in lines[0])
    assert late_starter[0]["training_iteration"] == 1
    assert late_starter[0][SEED_KEY] in {r[SEED_KEY] for t, lines in results.items() if lines is not late_starter for r in lines}
    fresh = PBTPPO(config={**trial_config(job), "seed": late_starter[0][SEED_KEY]})  # the actor's first trial's seed
    fresh.save_to_path(str(tmp_path / "fresh"))
    fresh.stop()
    initial = {p: weights_digest(RLModule.from_checkpoint(tmp_path / "fresh" / MODULES_IN_CHECKPOINT / p)) for p in job.env.policies}
    assert {p: v["weights_sha256"] for p, v in late_starter[0][RESTORED_KEY].items()} == initial

    for event in exploits:
        after = [r for r in results[event["recipient"]] if r[ENDED_AT_KEY] > event["time"]]
        if not after:
            continue
        first = min(after, key=lambda r: r[ENDED_AT_KEY])
        for module, applied in first[RESTORED_KEY].items():
            assert applied["lr"] == pytest.approx(event["config_after"]["lr"]), module
            assert applied["entropy_coeff"] == pytest.approx(event["config_after"]["entropy_coeff"]), module
            assert applied["clip_param"] == pytest.approx(event["config_after"]["clip_param"]), module
        modules = donor_modules(event, exploits, MODULES_IN_CHECKPOINT)
        for policy, applied in first[RESTORED_KEY].items():
            assert applied["weights_sha256"] == weights_digest(RLModule.from_checkpoint(modules / policy)), policy


def test_a_restore_rides_out_a_storage_outage(member, bucket, restartable_s3, monkeypatch, tmp_path):
    """An exploit's recipient downloads its pinned copy right after the decision, when an outage
    may just have begun: a failed restore fails the trial, and Tune then writes the error to the
    unreachable storage and stops the run. With the endpoint down for 3 s the restore is retried
    and loads the checkpoint."""
    algo, _ = member
    monkeypatch.setenv("AWS_ENDPOINT_URL", restartable_s3.url)
    monkeypatch.setenv("PBT_JOB_STORAGE_RETRY_S", "60")
    fs = filesystem(parse_storage_uri(f"s3://{bucket}/restore"))
    algo.save_to_path(str(tmp_path / "saved"))
    pyarrow.fs.copy_files(str(tmp_path / "saved"), f"{bucket}/restore/checkpoint", destination_filesystem=fs)
    digest = weights_digest(algo.get_module(next(iter(algo.config.policies))))
    retries = retries_so_far()
    restartable_s3.stop()
    threading.Timer(3.0, restartable_s3.start).start()
    algo.restore(Checkpoint(f"{bucket}/restore/checkpoint", filesystem=fs))
    assert retries_so_far() > retries, "the restore met the outage"
    assert weights_digest(algo.get_module(next(iter(algo.config.policies)))) == digest


def test_a_pin_whose_source_this_node_kept_is_restored_without_a_download(member, bucket, tmp_path):
    """A donor's process keeps its uploaded checkpoints on the node's disk; a recipient on the same
    node restores a pin of one from there. The pin here does not exist in the bucket at all: only
    the node's copy can serve it, and once that is gone the restore goes to storage (and fails)."""
    algo, _ = member
    algo.save_to_path(str(tmp_path / "saved"))
    donor_checkpoint = f"{bucket}/run/donor/checkpoint_000003"
    kept = node_checkpoints.KeptCheckpoints()
    kept.keep(str(tmp_path / "saved"), donor_checkpoint)
    fs = filesystem(parse_storage_uri(f"s3://{bucket}"))
    pin = node_checkpoints.pin_name(f"{bucket}/run/recipient/pinned/iter_000002_from_donor_at_1", donor_checkpoint)
    restore = _TrainingResult(checkpoint=Checkpoint(pin, filesystem=fs), metrics={"training_iteration": 3})
    algo.restore(restore)  # the pin is not in the bucket: only the node's copy can serve it
    kept.clear()
    with pytest.raises(ValueError, match="does not exist on storage"):
        algo.restore(restore)

