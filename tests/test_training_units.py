"""Pure pieces of the training layer, tested on plain values (no running Ray)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from gymnasium import spaces
from ray.rllib.core.columns import Columns
from ray.rllib.utils.pre_checks.env import check_multiagent_environments

from conftest import REPO
from pbt_job.result_keys import tune_key
from pbt_job.run_folder import parse_lineage
from pbt_job.storage import S3Endpoint, StorageError, parse_storage_uri
from pbt_job.training.config import ConfigError, PBTConfig, load_config, parse_overrides
from pbt_job.training.explore import explore_fixups, initial_space, pbt_mutations
from pbt_job.training.model import GridPPOModule, PrepackedLogits, default_conv_channels, default_hidden_sizes
from pbt_job.training.rllib_env import RLlibPredPreyGrass, policy_mapping_fn, slot_id
from pbt_job.training.score import ENV_STEPS_KEY, REWARD_SUM_KEY, EpisodeReturnScore

REFERENCE = load_config(REPO / "configs" / "reference.yaml")


# ---------------------------------------------------------------------------- explore


def test_explore_fixups_keeps_train_batch_at_least_twice_the_minibatch_and_within_the_cap():
    pbt = REFERENCE.pbt
    train = tune_key("train_batch_size_per_learner")
    fixed = explore_fixups({"minibatch_size": 512, train: 640.4, "num_epochs": 35.6, "lr": 1e-3}, pbt)
    assert fixed == {"minibatch_size": 512, train: 1024, "num_epochs": 30, "lr": 1e-3}
    fixed = explore_fixups({"minibatch_size": 4096, train: 4096, "num_epochs": 0.2}, pbt)
    assert fixed == {"minibatch_size": 512, train: 2048, "num_epochs": 10}


def test_explore_fixups_leaves_settings_that_are_not_mutated_alone():
    only_lr = PBTConfig(mutations={"lr": {"type": "choice", "values": [1e-3, 1e-4]}})
    config = {"lr": 3e-4, "minibatch_size": 256, tune_key("train_batch_size_per_learner"): 256, "num_epochs": 40}
    assert explore_fixups(config, only_lr) == {**config, "lr": 1e-4}


def test_explore_fixups_clamps_range_mutations_into_their_domain():
    pbt = REFERENCE.pbt
    assert explore_fixups({"clip_param": 0.3 * 1.2}, pbt)["clip_param"] == 0.3
    assert explore_fixups({"clip_param": 0.1 * 0.8}, pbt)["clip_param"] == 0.1
    assert explore_fixups({"clip_param": 0.2}, pbt)["clip_param"] == 0.2


def test_explore_fixups_snaps_pb2_proposals_to_choice_values():
    fixed = explore_fixups({"lr": 7.2e-4, "minibatch_size": 300.7, "entropy_coeff": 0.0004}, REFERENCE.pbt)
    assert fixed == {"lr": 5e-4, "minibatch_size": 256, "entropy_coeff": 0.0}


def test_choice_mutations_are_lists_so_tune_shifts_to_a_neighbour():
    mutations = pbt_mutations(REFERENCE.pbt)
    assert mutations["lr"] == [1e-3, 5e-4, 1e-4]
    assert mutations["minibatch_size"] == [128, 256, 512]
    assert all(isinstance(v, int) for v in mutations[tune_key("train_batch_size_per_learner")])
    assert not isinstance(mutations["clip_param"], list)
    assert set(initial_space(REFERENCE.pbt)) == set(mutations)


# ---------------------------------------------------------------------------- score


def test_score_falls_back_to_reward_rate_until_an_episode_ends():
    """1000-step episodes rarely end in a small batch; the score is defined anyway."""
    score = EpisodeReturnScore(max_steps=1000, window=2)
    no_episode = {"num_episodes": 0, "episode_return_mean": math.nan, REWARD_SUM_KEY: 20.0, ENV_STEPS_KEY: 400}
    assert score.update(no_episode) == pytest.approx(50.0)
    assert score.update({}) == 0.0
    assert score.update({"num_episodes": 2, "episode_return_mean": 30.0}) == 30.0
    assert score.update({"num_episodes": 1, "episode_return_mean": 60.0}) == pytest.approx(40.0)
    assert score.update(no_episode) == pytest.approx(60.0), "the last 2 iterations hold one episode"
    assert score.update(no_episode) == pytest.approx(50.0), "no episode within 2 iterations: fallback"


def test_score_survives_nan_episode_counts():
    """Ray 2.60 reports num_episodes as NaN (not 0) in an iteration without finished episodes."""
    score = EpisodeReturnScore(max_steps=100, window=3)
    assert score.update({"num_episodes": 1, "episode_return_mean": 20.0}) == 20.0
    nan_iteration = {"num_episodes": math.nan, "episode_return_mean": math.nan, REWARD_SUM_KEY: 1.0, ENV_STEPS_KEY: 10}
    assert score.update(nan_iteration) == 20.0


def test_score_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        EpisodeReturnScore(max_steps=10, window=0)


# ---------------------------------------------------------------------------- config


def test_set_overrides_parse_yaml_scalars_into_nested_keys():
    assert parse_overrides(["pbt.population=6", "ppo.lambda=0.9", "env.reuse_slots=false", "name=x"]) == {
        "pbt": {"population": 6}, "ppo": {"lambda": 0.9}, "env": {"reuse_slots": False}, "name": "x",
    }
    job = load_config(REPO / "configs" / "quick.yaml", ["pbt.population=4", "ppo.lambda=0.9"])
    assert (job.pbt.population, job.ppo.lambda_) == (4, 0.9)
    assert job.env.width == 13, "the file's values stay"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["pbt.populaton=3"], "pbt.populaton"),
        (["env.slots.type_3_prey=1"], "env.slots.type_3_prey"),
        (["pbt.quantile_fraction=0.7"], "pbt.quantile_fraction"),
        (["pbt.mutations.lr.type=gaussian"], "pbt.mutations.lr"),
        (["stop.training_iteration=null"], "stop"),
    ],
)
def test_bad_overrides_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(REPO / "configs" / "reference.yaml", overrides)


def test_shipped_configs_are_valid_and_quick_has_room_for_two_exploit_rounds():
    quick = load_config(REPO / "configs" / "quick.yaml")
    assert quick.pbt.population == 3
    assert quick.stop.training_iteration // quick.pbt.perturbation_interval >= 3
    gpu = load_config(REPO / "configs" / "gpu.yaml")
    assert gpu.pbt.population == 8 and gpu.resources.num_gpus_per_learner > 0
    assert REFERENCE.pbt.population == 4 and REFERENCE.pbt.perturbation_interval == 3
    assert REFERENCE.env.width == 25 and REFERENCE.env.max_steps == 1000


def test_pbt_config_defaults_follow_the_reference():
    pbt = PBTConfig()
    assert (pbt.quantile_fraction, pbt.resample_probability, pbt.metric, pbt.mode) == (0.25, 0.25, "pbt_score", "max")
    assert set(pbt.mutations) == {"lr", "clip_param", "entropy_coeff", "num_epochs", "minibatch_size",
                                  "train_batch_size_per_learner"}


# ---------------------------------------------------------------------------- storage


@pytest.mark.parametrize(
    ("uri", "is_s3", "path"),
    [
        ("s3://bucket", True, "bucket"),
        ("s3://bucket/a/b/", True, "bucket/a/b"),
        ("S3://bucket/x", True, "bucket/x"),
        ("file:///tmp/runs", False, "/tmp/runs"),
        ("/tmp/runs/", False, "/tmp/runs"),
    ],
)
def test_storage_uris(uri, is_s3, path):
    location = parse_storage_uri(uri)
    assert (location.is_s3, location.path) == (is_s3, path)


def test_relative_storage_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_storage_uri("./runs").path == str(tmp_path / "runs")


@pytest.mark.parametrize(
    ("url", "message"),
    [("minio:9000", "not a URL"), ("http://minio:port", "bad port"), ("ftp://minio:9000", "not a URL")],
)
def test_bad_endpoint_variable_is_named(monkeypatch, url, message):
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    with pytest.raises(StorageError, match=message):
        S3Endpoint.from_env()


def test_endpoint_from_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example:9443")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    endpoint = S3Endpoint.from_env()
    assert (endpoint.host, endpoint.scheme, endpoint.region) == ("minio.example:9443", "https", "us-east-1")


# ---------------------------------------------------------------------------- run files


def test_corrupt_lineage_lines_are_skipped_with_a_warning(caplog):
    text = '{"recipient": "a", "iteration": 2, "event": "exploit"}\nnot json\n[1, 2]\n\n{"recipient": "b", "iteration": 4}\n'
    with caplog.at_level(logging.WARNING):
        events = parse_lineage(text)
    assert [e["recipient"] for e in events] == ["a", "b"]
    assert "line 2" in caplog.text and "line 3" in caplog.text


# ---------------------------------------------------------------------------- RLlib adapter and model


def test_adapter_passes_rllib_env_check_and_never_revives_a_done_id():
    """The game reuses a dead agent's slot; RLlib must see a new id for the new life."""
    env = RLlibPredPreyGrass({})
    check_multiagent_environments(env)
    rng = np.random.default_rng(0)
    revived = 0
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        done_ids: set[str] = set()
        while True:
            actions = {a: int(rng.integers(env.get_action_space(a).n)) for a in obs if a not in done_ids}
            obs, rewards, terminated, truncated, _ = env.step(actions)
            assert not done_ids & set(obs), "an id that was done got data again"
            assert set(rewards) == set(obs)
            done_ids |= {a for a, d in terminated.items() if d and a != "__all__"}
            done_ids |= {a for a, d in truncated.items() if d and a != "__all__"}
            revived += sum("." in a for a in obs)
            if terminated["__all__"] or truncated["__all__"]:
                break
    assert revived > 0, "slot reuse happened and was renamed"
    assert slot_id("type_1_prey_3.2") == "type_1_prey_3"
    assert policy_mapping_fn("type_1_prey_3.2") == policy_mapping_fn("type_1_prey_3") == "type_1_prey"


def test_module_follows_the_spec_architecture():
    assert default_conv_channels(7) == [16, 32, 64]
    assert default_conv_channels(9) == [16, 32, 64, 64]
    assert default_hidden_sizes(9) == [256, 256] and default_hidden_sizes(25) == [384, 256]
    module = GridPPOModule(
        observation_space=spaces.Box(0, 100, (4, 9, 9), np.float32), action_space=spaces.Discrete(25), model_config={}
    )
    convs = [m for m in module._encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64]
    dense = [m for m in module._encoder if isinstance(m, torch.nn.Linear)]
    assert [d.out_features for d in dense] == [384, 256]
    batch = {Columns.OBS: torch.zeros(5, 4, 9, 9)}
    assert module.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS].shape == (5, 25)
    assert module.compute_values(batch).shape == (5,)


@pytest.mark.parametrize(("window", "n_actions", "model_config"), [(7, 9, {}), (9, 25, {}), (5, 9, {"conv_channels": [8], "hidden_sizes": [32]})])
def test_prepacked_logits_equal_the_modules_and_follow_its_weights_only_when_rebuilt(window, n_actions, model_config):
    """The fast env runner's CPU inference: for any batch size the logits are `action_logits`'s up to float
    rounding; a snapshot keeps the weights it was built from."""
    torch.manual_seed(0)
    module = GridPPOModule(observation_space=spaces.Box(0, 100, (4, window, window), np.float32),
                           action_space=spaces.Discrete(n_actions), model_config=model_config)
    prepacked = PrepackedLogits(module)
    with torch.inference_mode():
        for rows in (1, 3, 200):
            obs = torch.rand(rows, 4, window, window) * 100 * (torch.rand(rows, 4, window, window) < 0.3)
            torch.testing.assert_close(prepacked(obs), module.action_logits(obs), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        module._policy.bias += 1.0
    with torch.inference_mode():
        torch.testing.assert_close(prepacked(obs) + 1.0, module.action_logits(obs), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(PrepackedLogits(module)(obs), module.action_logits(obs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("config", "cpus"), [("quick", 0.5), ("gpu", 1 + 4 * 1)])
def test_a_trial_reserves_the_cpus_its_config_asks_for(config, cpus):
    """RLlib reserves a whole CPU for a local learner unless told otherwise: the quick
    population of 3 would then not fit on 2 cores."""
    from pbt_job.training.algorithm import PBTPPO, build_ppo_config

    job = load_config(REPO / "configs" / f"{config}.yaml")
    request = PBTPPO.default_resource_request(build_ppo_config(job))
    assert request.required_resources["CPU"] == pytest.approx(cpus)


def test_one_seed_draws_the_same_initial_population_and_another_seed_does_not(tmp_path):
    """`initial_sampler` is the search algorithm `train` gives Tune: trial by trial, one seed, one population."""
    from pbt_job.training.algorithm import PBTPPO
    from pbt_job.training.run import initial_sampler, param_space

    def draws(seed: int) -> list[dict]:
        job = load_config(REPO / "tests" / "data" / "tiny.yaml", [f"pbt.seed={seed}", "pbt.population=4"])
        sampler = initial_sampler(job)
        sampler.add_configurations(
            {"x": {"run": PBTPPO, "config": param_space(job), "num_samples": 4, "storage_path": str(tmp_path)}}
        )
        configs = [sampler.next_trial().config for _ in range(4)]
        return [{k: c[k] for k in ("lr", "clip_param", "entropy_coeff")} for c in configs]

    first = draws(7)
    assert draws(7) == first
    assert draws(8) != first
    assert len({c["clip_param"] for c in first}) == 4, "trials of one run still differ"


def test_a_resume_refuses_what_tune_restores_as_stored_and_applies_the_metrics_port():
    from pbt_job.training.config import config_to_dict, resume_changes

    tiny = REPO / "tests" / "data" / "tiny.yaml"
    stored = config_to_dict(load_config(tiny))
    assert resume_changes(stored, config_to_dict(load_config(tiny))) == ([], [])
    changed = load_config(tiny, [
        "pbt.population=3", "pbt.metric=env_runners/episode_return_mean", "stop.training_iteration=9",
        "pbt.mutations.gamma={type: uniform, low: 0.9, high: 0.99}", "metrics_port=9500",
    ], name="elsewhere")
    refused, applied = resume_changes(stored, config_to_dict(changed))
    assert refused == [
        "pbt.metric", "pbt.mutations.gamma.high", "pbt.mutations.gamma.low", "pbt.mutations.gamma.type",
        "pbt.mutations.gamma.values", "pbt.population", "stop.training_iteration",
    ]
    assert applied == ["metrics_port"]


def test_the_run_recorder_and_live_metrics_read_each_result_key_once(tmp_path):
    """Tune hands both callbacks the same result; what the recorder reads, the exporter takes from its ledger."""
    from functools import partial
    from types import SimpleNamespace

    import pyarrow.fs

    from pbt_job import metrics
    from pbt_job.training.live_metrics import LiveMetrics
    from pbt_job.training.run import RunRecorder
    from pbt_job.run_folder import RunFiles

    reads: dict[str, int] = {}

    class CountingDict(dict):
        """Counts each read of a leaf value by its path (`env_runners/num_env_steps_sampled`)."""

        def __init__(self, data: dict, prefix: str = ""):
            super().__init__(data)
            self.prefix = prefix

        def get(self, key, default=None):
            if not super().__contains__(key):
                return default
            value = super().__getitem__(key)
            if isinstance(value, dict):
                return CountingDict(value, f"{self.prefix}{key}/")
            reads[self.prefix + key] = reads.get(self.prefix + key, 0) + 1
            return value

        __getitem__ = get

    files = RunFiles(partial(pyarrow.fs.LocalFileSystem), str(tmp_path))
    trial = SimpleNamespace(trial_id="t0", config={"lr": 1e-3})
    result = CountingDict({
        "training_iteration": 3, "iterations_since_restore": 3, "time_this_iter_s": 1.5, "pbt_score": 2.0,
        "env_runners": {"num_env_steps_sampled": 100, "module_episode_returns_mean": {"prey": 1.0}},
    })
    with metrics.serve(0, host="127.0.0.1") as server:
        live = LiveMetrics(files, "max", ["lr"])
        live.setup()
        for callback in (RunRecorder(files, "pbt_score", ["lr"]), live):
            callback.on_trial_result(0, [trial], trial, result)
        registry = server.metrics.registry
        assert registry.get_sample_value("pbt_trial_metric", {"trial": "t0"}) == 2.0
        assert registry.get_sample_value("pbt_trial_iteration", {"trial": "t0"}) == 3
        assert registry.get_sample_value("pbt_trial_hyperparameter", {"trial": "t0", "name": "lr"}) == 1e-3
    twice = {key: n for key, n in reads.items() if n > 1}
    assert not twice, f"read by both callbacks: {twice}"
