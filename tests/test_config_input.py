"""Hostile and careless configuration input: whatever `validate` accepts can train.

Checked in-process against `load_config` (what `validate` and `train` both call);
`tests/test_cli.py` checks that the CLI turns each `ConfigError` into one line and exit 2.
"""

from __future__ import annotations

import logging

import annotated_types
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from pbt_job.result_keys import metric_names, tune_key
from pbt_job.storage import parse_storage_uri
from pbt_job.training.config import INTEGER_SETTINGS, MUTABLE, ConfigError, JobConfig, PPOSettings, load_config
from pbt_job.training.explore import explore_fixups

TINY = REPO / "tests" / "data" / "tiny.yaml"


def refused(*overrides: str, config=TINY) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(config, list(overrides))
    message = str(err.value)
    assert "\n" not in message
    return message


def field_of(name: str):
    return {f.alias or n: f for n, f in PPOSettings.model_fields.items()}[name]


def just_outside(name: str) -> list[float]:
    """Values just past each limit the PPO field itself declares."""
    outside = []
    for limit in field_of(name).metadata:
        if isinstance(limit, annotated_types.Gt):
            outside.append(limit.gt)
        elif isinstance(limit, annotated_types.Ge):
            outside.append(limit.ge - 1)
        elif isinstance(limit, annotated_types.Le):
            outside.append(limit.le + 1 if name in INTEGER_SETTINGS else limit.le * 1.5)
    return outside


@pytest.mark.parametrize("name", MUTABLE)
def test_every_mutation_domain_must_lie_inside_its_ppo_field(name):
    """For every mutable setting and every limit of its field: a choice value, a range's low or
    high past the limit is refused, naming the mutation."""
    values = just_outside(name)
    assert values, f"{name} declares no limit"
    for value in values:
        assert f"pbt.mutations.{name}" in refused(f"pbt.mutations.{name}={{type: choice, values: [{value}]}}")
        kind = "randint" if name in INTEGER_SETTINGS else "uniform"
        low, high = sorted([value, value + 1 if value < 1 else value / 2])
        assert f"pbt.mutations.{name}" in refused(f"pbt.mutations.{name}={{type: {kind}, low: {low}, high: {high}}}")


@pytest.mark.parametrize("domain, needle", [
    ("{type: choice, values: [-1.0, -2.0]}", "greater than 0"),
    ("{type: choice, values: [.nan]}", "finite"),
    ("{type: uniform, low: 1.0e-4, high: .inf}", "finite"),
    ("{type: loguniform, low: 1.0e-5, high: 1e400}", "finite"),
])
def test_the_issue_examples_for_lr(domain, needle):
    assert needle in refused(f"pbt.mutations.lr={domain}")


@pytest.mark.parametrize("name, domain", [
    ("num_epochs", "{type: choice, values: [1.7, 2.9]}"),
    ("minibatch_size", "{type: choice, values: [true, 64]}"),
    ("num_epochs", "{type: randint, low: 1.5, high: 3}"),
])
def test_fractions_and_booleans_are_not_counts(name, domain):
    assert f"pbt.mutations.{name}" in refused(f"pbt.mutations.{name}={domain}")


def test_explore_keeps_every_value_inside_its_field():
    """Explore scales ranges by 0.8/1.2 and clamps; at the edges of valid domains the result stays valid."""
    job = load_config(TINY, [
        "pbt.mutations={gamma: {type: uniform, low: 0.9, high: 1.0}, lambda: {type: uniform, low: 0.5, high: 1.0},"
        " lr: {type: loguniform, low: 1e-6, high: 1e-2}, clip_param: {type: uniform, low: 0.01, high: 0.5},"
        " num_epochs: {type: randint, low: 1, high: 4}, minibatch_size: {type: choice, values: [16, 32]}}",
    ])
    for mutation_name, mutation in job.pbt.mutations.items():
        for end in mutation.bounds():
            for factor in (0.8, 1.2):
                config = {tune_key(n): m.bounds()[0] for n, m in job.pbt.mutations.items()}
                config["_train_batch_size_per_learner"] = job.ppo.train_batch_size_per_learner
                config[tune_key(mutation_name)] = end * factor
                fixed = explore_fixups(config, job.pbt)
                PPOSettings.model_validate({name: fixed[tune_key(name)] for name in job.pbt.mutations})


def test_a_metric_no_result_carries_is_refused_and_every_offered_one_is_accepted():
    message = refused("pbt.metric=episode_reward_mean")
    assert "pbt.metric" in message and "pbt_score" in message
    job = load_config(TINY)
    for metric in metric_names(job.env.policies):
        assert load_config(TINY, [f"pbt.metric={metric}"]).pbt.metric == metric
    assert "pbt.metric" in refused("pbt.metric=env_runners/module_episode_returns_mean/type_2_predator")


def test_a_model_deeper_than_the_observation_window_is_refused():
    message = refused("ppo.conv_channels=[4, 4, 4, 4, 4]", "env.obs_range_predator=7", "env.obs_range_prey=9")
    assert "ppo.conv_channels" in message and "obs_range_predator is 7" in message and "at most 3" in message
    assert load_config(TINY, ["ppo.conv_channels=[4, 4, 4]", "env.obs_range_predator=7"]).ppo.conv_channels == [4, 4, 4]


@pytest.mark.parametrize("overrides, needle", [
    (["stop={training_iteration: null, time_total_s: .inf}"], "stop.time_total_s"),
    (["stop={training_iteration: null, time_total_s: .nan}"], "stop.time_total_s"),
    (["stop={training_iteration: null}"], "never stop"),
    (["pbt.population=1e23"], "pbt.population"),
    (["pbt.population=100000000000000000000000"], "pbt.population"),
    (["env.slots.type_1_prey=1000000000", "env.width=1024", "env.height=1024"], "env.slots"),
    (["pbt.seed=1e29"], "pbt.seed"),
    (["pbt.seed=-1"], "pbt.seed"),
    (["resources.rollout_fragment_length=-5"], "resources.rollout_fragment_length"),
    (["resources.rollout_fragment_length=true"], "resources.rollout_fragment_length"),
    (["ppo.hidden_sizes=[0]"], "ppo.hidden_sizes"),
    (["ppo.conv_channels=[]"], "ppo.conv_channels"),
    (["ppo.hidden_sizes=[1000000]"], "ppo.hidden_sizes"),
    (["resources.num_env_runners=1000000"], "resources.num_env_runners"),
    (["ppo.minibatch_size=true"], "ppo.minibatch_size"),
    (["ppo.num_epochs=2.5"], "ppo.num_epochs"),
    (["env.width=true"], "env.width"),
    (["ppo.lr=.inf"], "ppo.lr"),
    (["env.energy_gain_per_step_grass=.nan"], "env.energy_gain_per_step_grass"),
    (["ppo.gamma=yes"], "ppo.gamma"),
])
def test_absurd_sizes_infinities_and_wrong_kinds_of_number(overrides, needle):
    assert needle in refused(*overrides)


def test_numbers_in_exponent_notation_are_numbers():
    """YAML 1.1 reads `1e-4` as a string; a config (and `--set`) reads a number."""
    job = load_config(TINY, ["ppo.lr=1e-4", "pbt.mutations.lr={type: choice, values: [1e-3, 5E-4]}"])
    assert job.ppo.lr == 1e-4 and job.pbt.mutations["lr"].values == [1e-3, 5e-4]


@pytest.mark.parametrize("content, needle", [
    (b"\x00\x01\x02binary\xff\xfe", "UTF-8"),
    ("env: {width: 7}\n".encode("utf-16"), "UTF-8"),
    (b"env: {width: 7}\x00\n", "malformed YAML"),
    (b"[" * 20000 + b"]" * 20000, "nested too deeply"),
    (b"a: " + b"x" * (2 << 20), "larger than 1 MiB"),
])
def test_files_that_are_not_configs(tmp_path, content, needle):
    path = tmp_path / "job.yaml"
    path.write_bytes(content)
    assert needle in refused(config=path)


def test_dev_zero_ends():
    assert "larger than" in refused(config="/dev/zero")


@pytest.mark.parametrize("override", ["pbt.population=[1,", "ppo.lr={", "pbt.mutations=" + "[" * 20000])
def test_half_written_set_values(override):
    assert "--set" in refused(override)


SECTIONS = {name: field.annotation for name, field in JobConfig.model_fields.items()}
YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def _keys_of(section: str) -> list[str]:
    annotation = SECTIONS[section]
    fields = getattr(annotation, "model_fields", None)
    return [f.alias or n for n, f in fields.items()] if fields else [""]


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_values_give_a_config_or_one_config_error(data):
    """Any YAML value at any key of the schema (and at unknown keys): a JobConfig or a one-line
    ConfigError naming a field, never another exception."""
    section = data.draw(st.sampled_from(sorted(SECTIONS)))
    key = data.draw(st.sampled_from(_keys_of(section)) | st.text(min_size=1, max_size=8))
    value = data.draw(YAML_VALUES)
    override = f"{section}.{key}" if key else section
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    except yaml.YAMLError:
        return
    try:
        load_config(TINY, [f"{override}={text}"])
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)


# -- resources a cluster cannot give -------------------------------------------------------------------


@pytest.mark.parametrize("overrides, needle", [
    (["resources.num_cpus_per_trial=1000"], "1000 CPU"),
    (["resources.num_gpus_per_learner=1"], "1 GPU"),
    (["resources.num_env_runners=4"], "4.5 CPU"),
])
def test_a_trial_larger_than_the_local_ray_is_refused_before_anything_is_written(ray_start_2_cpus, tmp_path,
                                                                                 overrides, needle):
    from pbt_job.training.run import ResourcesError, train

    with pytest.raises(ResourcesError) as err:
        train(load_config(TINY, overrides), parse_storage_uri(str(tmp_path)), "too-big", resume="auto")
    assert needle in str(err.value) and "this Ray cluster has" in str(err.value) and "\n" not in str(err.value)
    assert not any(tmp_path.iterdir()), "nothing written"


def test_pending_trials_are_logged_once_a_minute_on_a_cluster_that_may_grow(ray_start_2_cpus, caplog):
    """A Ray the driver connected to may autoscale: what the waiting trials need is logged, not refused."""
    from ray.tune.execution.placement_groups import PlacementGroupFactory
    from ray.tune.experiment import Trial

    from pbt_job.training.run import PendingDemandLog

    trials = [Trial("PBTPPO", stub=True, placement_group_factory=PlacementGroupFactory([{"CPU": 8, "GPU": 1}]))
              for _ in range(2)]
    for trial in trials:
        trial.create_placement_group_factory()  # as Tune does when it adds a trial
    log = PendingDemandLog(every_s=0.0)
    log.setup()
    log._active = True  # this test's Ray was started here; a RayJob's driver connects to its cluster
    with caplog.at_level(logging.WARNING, logger="pbt_job.training.run"):
        log.on_step_end(iteration=1, trials=trials)
        PendingDemandLog(every_s=3600.0).on_step_end(iteration=1, trials=trials)
    lines = [r.getMessage() for r in caplog.records if "[resources]" in r.getMessage()]
    assert len(lines) == 1, lines  # the second log's minute has not passed
    assert lines[0].startswith("[resources] 2 trial(s) waiting, each for 8 CPU, 1 GPU; free now ")
    assert lines[0].endswith(" of 2 CPU, 0 GPU")


def test_an_rllib_metric_trains_before_any_episode_has_ended(ray_start_2_cpus, tmp_path):
    """1000-step episodes and 128-step batches: no episode ends in the first iterations, so RLlib's
    result has no episode means; Tune would fail the trial for a missing metric. pbt-job's result
    carries them as NaN, and PBT runs on."""
    from pbt_job.training.run import train

    job = load_config(TINY, ["env.max_steps=1000", "stop.training_iteration=3", "pbt.perturbation_interval=1",
                             "pbt.metric=env_runners/module_episode_returns_mean/type_1_prey"])
    outcome = train(job, parse_storage_uri(str(tmp_path)), "nan-metric", resume="never")
    assert outcome.errors == 0 and outcome.summary["status"] == "finished"
