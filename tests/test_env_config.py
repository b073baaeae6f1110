"""Configuration tests: defaults equal the spec table, YAML sets every field, bad values fail with the field's name.

Spec: `shared/spec/predpreygrass.md`, "Defaults (the PBT configuration)".
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from pbt_job.env import KINDS, EnvConfig, PredPreyGrassEnv

SPEC_DEFAULTS: dict[str, Any] = {
    "width": 25,
    "height": 25,
    "max_steps": 1000,
    "slots": {"type_1_predator": 50, "type_2_predator": 0, "type_1_prey": 40, "type_2_prey": 40},
    "initial_agents": {"type_1_predator": 12, "type_2_predator": 0, "type_1_prey": 10, "type_2_prey": 10},
    "obs_range_predator": 7,
    "obs_range_prey": 9,
    "move_range_type_1": 3,
    "move_range_type_2": 5,
    "initial_energy_predator": 6.0,
    "initial_energy_prey": 3.0,
    "energy_loss_per_step_predator": 0.06,
    "energy_loss_per_step_prey": 0.02,
    "move_energy_cost_factor": 0.01,
    "n_grass": 100,
    "initial_energy_grass": 2.0,
    "energy_gain_per_step_grass": 0.1,
    "max_energy_grass": 2.0,
    "max_energy_gain_predator": 5.0,
    "max_energy_gain_prey": 1.5,
    "energy_transfer_efficiency": 0.9,
    "max_energy_predator": 20.0,
    "max_energy_prey": 14.0,
    "reproduction_energy_predator": 12.0,
    "reproduction_energy_prey": 8.0,
    "reproduction_cooldown_steps": 5,
    "reproduction_chance_predator": 0.95,
    "reproduction_chance_prey": 0.95,
    "mutation_rate_predator": 0.05,
    "mutation_rate_prey": 0.05,
    "child_energy_efficiency": 0.9,
    "reproduction_reward_predator": 10.0,
    "reproduction_reward_prey": 10.0,
    "catch_reward_predator": 0.0,
    "eat_reward_prey": 0.0,
    "caught_reward_prey": 0.0,
    "step_reward_predator": 0.0,
    "step_reward_prey": 0.0,
    "reuse_slots": True,
    "quirk_prey_child_uses_predator_mutation_rate": True,
    "quirk_truncate_after_last_step": True,
}
"""Every number of the spec's defaults table, plus the reference's zero rewards and the quirk switches."""

EVERY_FIELD_YAML = """
width: 13
height: 17
max_steps: 500
slots:
  type_1_predator: 20
  type_2_predator: 5
  type_1_prey: 30
  type_2_prey: 10
initial_agents:
  type_1_predator: 6
  type_2_predator: 2
  type_1_prey: 8
  type_2_prey: 4
obs_range_predator: 5
obs_range_prey: 11
move_range_type_1: 5
move_range_type_2: 7
initial_energy_predator: 5.0
initial_energy_prey: 2.5
energy_loss_per_step_predator: 0.1
energy_loss_per_step_prey: 0.05
move_energy_cost_factor: 0.02
n_grass: 40
initial_energy_grass: 1.5
energy_gain_per_step_grass: 0.2
max_energy_grass: 3.0
max_energy_gain_predator: 4.0
max_energy_gain_prey: 1.0
energy_transfer_efficiency: 0.8
max_energy_predator: 25.0
max_energy_prey: 12.0
reproduction_energy_predator: 10.0
reproduction_energy_prey: 6.0
reproduction_cooldown_steps: 3
reproduction_chance_predator: 0.5
reproduction_chance_prey: 0.6
mutation_rate_predator: 0.1
mutation_rate_prey: 0.2
child_energy_efficiency: 0.8
reproduction_reward_predator: 5.0
reproduction_reward_prey: 4.0
catch_reward_predator: 1.0
eat_reward_prey: 0.5
caught_reward_prey: -1.0
step_reward_predator: -0.01
step_reward_prey: 0.01
reuse_slots: false
quirk_prey_child_uses_predator_mutation_rate: false
quirk_truncate_after_last_step: false
"""
"""A value other than the default for every field of `EnvConfig`."""


def test_defaults_equal_the_spec_table():
    assert EnvConfig().model_dump() == SPEC_DEFAULTS


def test_every_field_is_described():
    """STYLE: every tunable is a keyword with a default and a one-line description."""
    for name, field in EnvConfig.model_fields.items():
        assert field.description, f"{name} has no description"


def test_every_field_can_be_set_from_yaml():
    """yaml.safe_load + EnvConfig.model_validate sets every field; the document covers them all."""
    document = yaml.safe_load(EVERY_FIELD_YAML)
    assert set(document) == set(EnvConfig.model_fields), "the YAML document must name every field"
    config = EnvConfig.model_validate(document)
    assert config.model_dump() == document
    defaults = EnvConfig().model_dump()
    assert [name for name in document if document[name] == defaults[name]] == []


def test_a_yaml_config_drives_the_env():
    """The YAML game plays: its windows, move ranges, slots and agents at reset come from the file."""
    config = EnvConfig.model_validate(yaml.safe_load(EVERY_FIELD_YAML))
    env = PredPreyGrassEnv(config)
    obs, _ = env.reset(seed=0)
    assert len(env.possible_agents) == 20 + 5 + 30 + 10
    assert len(obs) == 6 + 2 + 8 + 4
    assert env.observation_space("type_2_predator_4").shape == (4, 5, 5)
    assert env.observation_space("type_1_prey_0").shape == (4, 11, 11)
    assert env.action_space("type_1_prey_0").n == 25
    assert env.action_space("type_2_predator_0").n == 49
    assert env.state.grass_energy.tolist() == [1.5] * 40
    assert config.policies == KINDS


def test_partial_yaml_keeps_the_other_defaults():
    config = EnvConfig.model_validate(yaml.safe_load("width: 30\nheight: 20\nmax_steps: 50\n"))
    assert config.model_dump() == {**SPEC_DEFAULTS, "width": 30, "height": 20, "max_steps": 50}


def test_config_is_frozen():
    config = EnvConfig()
    with pytest.raises(ValidationError, match="frozen"):
        config.width = 7


def test_env_accepts_a_dict_and_rejects_bad_ones():
    assert PredPreyGrassEnv({"width": 30, "height": 20}).config.height == 20
    with pytest.raises(ValidationError, match="width"):
        PredPreyGrassEnv({"width": -1})


def _full(per_kind: dict[str, int]) -> dict[str, int]:
    return {**dict.fromkeys(KINDS, 0), **per_kind}


BAD_CONFIGS = [
    # (id, fields, the field's name as the message gives it, the bad value as the message shows it)
    ("negative-width", {"width": -1}, "width", "-1"),
    ("zero-height", {"height": 0}, "height", "0"),
    ("negative-grass", {"n_grass": -5}, "n_grass", "-5"),
    ("zero-max-steps", {"max_steps": 0}, "max_steps", "0"),
    ("negative-slots", {"slots": {**SPEC_DEFAULTS["slots"], "type_1_prey": -1}}, "slots.type_1_prey", "-1"),
    (
        "more-agents-than-slots",
        {"initial_agents": {**SPEC_DEFAULTS["initial_agents"], "type_1_prey": 41}},
        "initial_agents.type_1_prey",
        "41",
    ),
    (
        "agents-in-a-kind-without-slots",
        {"initial_agents": {**SPEC_DEFAULTS["initial_agents"], "type_2_predator": 1}},
        "initial_agents.type_2_predator",
        "slots.type_2_predator=0",
    ),
    ("no-predators", {"initial_agents": _full({"type_1_prey": 3})}, "initial_agents", "predator"),
    ("even-predator-window", {"obs_range_predator": 8}, "obs_range_predator", "8"),
    ("even-prey-window", {"obs_range_prey": 6}, "obs_range_prey", "6"),
    ("even-move-range", {"move_range_type_1": 4}, "move_range_type_1", "4"),
    ("even-move-range-type-2", {"move_range_type_2": 2}, "move_range_type_2", "2"),
    ("window-too-large", {"width": 7, "height": 11, "n_grass": 10, "obs_range_prey": 23}, "obs_range_prey", "23"),
    ("chance-above-1", {"reproduction_chance_prey": 1.5}, "reproduction_chance_prey", "1.5"),
    ("chance-below-0", {"reproduction_chance_predator": -0.5}, "reproduction_chance_predator", "-0.5"),
    ("mutation-below-0", {"mutation_rate_predator": -0.1}, "mutation_rate_predator", "-0.1"),
    ("mutation-above-1", {"mutation_rate_prey": 2.0}, "mutation_rate_prey", "2.0"),
    ("efficiency-above-1", {"energy_transfer_efficiency": 1.1}, "energy_transfer_efficiency", "1.1"),
    ("child-efficiency-above-1", {"child_energy_efficiency": 1.5}, "child_energy_efficiency", "1.5"),
    ("unknown-key", {"grid_size": 25}, "grid_size", "Extra inputs are not permitted"),
    ("unknown-kind", {"slots": {**SPEC_DEFAULTS["slots"], "type_3_prey": 1}}, "slots.type_3_prey", "Extra inputs"),
    ("string-width", {"width": "big"}, "width", "'big'"),
    ("fractional-steps", {"max_steps": 2.5}, "max_steps", "2.5"),
    ("string-flag", {"reuse_slots": "maybe"}, "reuse_slots", "'maybe'"),
    ("string-slots", {"slots": "many"}, "slots", "'many'"),
    ("grid-too-full", {"n_grass": 600}, "n_grass", "600"),
    ("small-grid-too-full", {"width": 7, "height": 11, "n_grass": 50}, "n_grass", "77"),
    (
        "predator-threshold-below-initial",
        {"reproduction_energy_predator": 5.0},
        "reproduction_energy_predator",
        "5.0",
    ),
    ("prey-threshold-above-cap", {"reproduction_energy_prey": 15.0}, "reproduction_energy_prey", "15.0"),
    ("prey-cap-below-threshold", {"max_energy_prey": 7.0}, "max_energy_prey", "7.0"),
    ("grass-above-its-cap", {"initial_energy_grass": 3.0}, "initial_energy_grass", "max_energy_grass"),
    ("zero-initial-energy", {"initial_energy_prey": 0.0}, "initial_energy_prey", "0.0"),
]


@pytest.mark.parametrize(
    ("fields", "name", "shown"), [case[1:] for case in BAD_CONFIGS], ids=[case[0] for case in BAD_CONFIGS]
)
def test_bad_config_is_rejected_naming_the_field(fields, name, shown):
    """Each bad value raises a ValidationError whose message names the field and shows the value."""
    with pytest.raises(ValidationError) as caught:
        EnvConfig.model_validate(fields)
    message = str(caught.value)
    assert name in message
    assert shown in message


def test_bad_yaml_is_rejected_naming_the_field():
    with pytest.raises(ValidationError, match=r"reproduction_chance_prey\n\s+Input should be less than or equal to 1"):
        EnvConfig.model_validate(yaml.safe_load("reproduction_chance_prey: 1.5\n"))
