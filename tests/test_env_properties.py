"""Property tests: invariants of the predator-prey-grass game under random seeds and actions.

Hypothesis draws the reset seed and a sequence of action numbers (each agent plays
`number % n_actions`, so shrinking gives short, mostly-staying runs). After every step
the board must be consistent: energies within (0, cap], one agent per role per cell,
occupant grids matching positions, live counts within the slots, well-formed ids,
grass within [0, max], and observations inside their Box.
"""

from __future__ import annotations

import re

import numpy as np
from env_helpers import SMALL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbt_job.env import KINDS, EnvConfig, PredPreyGrassEnv
from pbt_job.env.state import EMPTY, PREDATOR, PREY

ID = re.compile(r"type_([12])_(predator|prey)_(0|[1-9][0-9]*)")

CROWDED = EnvConfig.model_validate(
    {
        **SMALL,
        "n_grass": 20,
        "slots": {"type_1_predator": 5, "type_2_predator": 3, "type_1_prey": 6, "type_2_prey": 3},
        "initial_agents": {"type_1_predator": 3, "type_2_predator": 1, "type_1_prey": 4, "type_2_prey": 2},
        "reproduction_energy_predator": 7.0,
        "reproduction_energy_prey": 3.5,
        "reproduction_cooldown_steps": 1,
        "mutation_rate_predator": 0.3,
        "mutation_rate_prey": 0.2,
        "max_steps": 60,
    }
)
"""7 x 11 with few slots and low thresholds: births, deaths, full kinds and slot reuse happen often."""

GRAZING = EnvConfig.model_validate(
    {
        **SMALL,
        "n_grass": 45,
        "initial_agents": {"type_1_predator": 2, "type_2_predator": 1, "type_1_prey": 4, "type_2_prey": 2},
        "reproduction_chance_predator": 0.0,
        "reproduction_chance_prey": 0.0,
        "energy_gain_per_step_grass": 0.5,
    }
)
"""7 x 11, no births and fast grass: prey grow into their energy cap."""

CONFIGS = {
    "default": EnvConfig(),
    "crowded": CROWDED,
    "grazing": GRAZING,
    "crowded-no-quirks-no-reuse": EnvConfig.model_validate(
        {
            **CROWDED.model_dump(),
            "reuse_slots": False,
            "quirk_truncate_after_last_step": False,
            "quirk_prey_child_uses_predator_mutation_rate": False,
        }
    ),
}

FULL = EnvConfig.model_validate({**CROWDED.model_dump(), "initial_agents": CROWDED.slots.model_dump()})
"""CROWDED with every slot alive at reset: no child can be born until someone dies."""

PROPERTY_SETTINGS = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def check_board(env: PredPreyGrassEnv) -> None:
    """The state invariants that hold after reset and after every step."""
    cfg, state, layout = env.config, env.state, env.layout
    live = state.alive_slots()
    caps = np.where(layout.role[live] == PREDATOR, cfg.max_energy_predator, cfg.max_energy_prey)
    assert np.all(state.energy[live] > 0.0), "a living agent has no energy left"
    assert np.all(state.energy[live] <= caps), "a living agent is above its energy cap"

    for role in (PREDATOR, PREY):
        mine = live[layout.role[live] == role]
        cells = set(zip(state.x[mine].tolist(), state.y[mine].tolist()))
        assert len(cells) == len(mine), "two agents of one role share a cell"
        assert np.all(state.occupant[role, state.x[mine], state.y[mine]] == mine)
        assert np.count_nonzero(state.occupant[role] != EMPTY) == len(mine)
    assert np.all((0 <= state.x[live]) & (state.x[live] < cfg.width))
    assert np.all((0 <= state.y[live]) & (state.y[live] < cfg.height))

    for kind in KINDS:
        start, count = layout.kind_offset[kind], layout.kind_count[kind]
        assert np.count_nonzero(state.alive[start : start + count]) <= cfg.slots.get(kind)

    assert np.all((0.0 <= state.grass_energy) & (state.grass_energy <= cfg.max_energy_grass))
    assert len(state.grass_energy) == cfg.n_grass


def check_ids(env: PredPreyGrassEnv, ids) -> None:
    possible = set(env.possible_agents)
    for agent in ids:
        match = ID.fullmatch(agent)
        assert match, f"malformed id {agent!r}"
        assert agent in possible
        assert int(match.group(3)) < env.config.slots.get(f"type_{match.group(1)}_{match.group(2)}")


def check_observations(env: PredPreyGrassEnv, obs: dict) -> None:
    for agent, window in obs.items():
        space = env.observation_space(agent)
        assert window.shape == space.shape and window.dtype == space.dtype
        assert space.contains(window), f"observation of {agent} outside its Box"


def play(config: EnvConfig, seed: int, numbers: list[int], steps: int) -> None:
    """Reset with `seed`, then play up to `steps` steps, checking every invariant after each."""
    env = PredPreyGrassEnv(config)
    obs, infos = env.reset(seed=seed)
    check_board(env)
    check_ids(env, obs)
    check_observations(env, obs)
    assert list(obs) == env.agents == list(infos)
    for t in range(steps):
        if not env.agents:
            break
        before = list(env.agents)
        actions = {
            agent: numbers[(t * 7 + i) % len(numbers)] % env.action_space(agent).n for i, agent in enumerate(before)
        }
        obs, rewards, terminated, truncated, infos = env.step(actions)
        check_board(env)
        check_ids(env, env.agents)
        check_ids(env, obs)
        check_observations(env, obs)
        assert set(obs) == set(rewards) == set(terminated) == set(truncated) == set(infos)
        assert set(env.agents) <= set(obs), "a live agent got no observation"
        assert set(before) <= set(obs), "an agent that acted was not reported"
        for agent in obs:
            if terminated[agent] or truncated[agent]:
                assert agent not in env.agents, f"{agent} is done but still in agents"
            if agent not in before and env.agents:
                slot = env.possible_agents.index(agent)
                assert rewards[agent] == 0.0 and not terminated[agent], "a newborn starts with reward 0, alive"
                assert env.state.age[slot] == 0
        assert set(rewards.values()) <= {0.0, 10.0}, "only reproduction is rewarded, once per step"
        if config.quirk_truncate_after_last_step and t == config.max_steps:
            assert set(truncated) == set(env.possible_agents) and all(truncated.values())
        elif not env.agents:
            assert all(terminated[a] or truncated[a] for a in obs)


@PROPERTY_SETTINGS
@given(
    config_name=st.sampled_from(sorted(CONFIGS)),
    seed=st.integers(0, 2**32 - 1),
    numbers=st.lists(st.integers(0, 24), min_size=1, max_size=50),
)
def test_invariants_hold_under_random_seeds_and_actions(config_name, seed, numbers):
    """Every step of 80 on a random seed keeps the board, ids and observations valid."""
    play(CONFIGS[config_name], seed, numbers, steps=80)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), numbers=st.lists(st.integers(0, 24), min_size=1, max_size=50))
def test_invariants_hold_through_truncation(seed, numbers):
    """Crowded game played past max_steps (60): the truncation call keeps every invariant too."""
    play(FULL, seed, numbers, steps=70)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_reset_places_every_agent_and_patch_on_its_own_cell(seed):
    """Any seed: agents and grass start on distinct cells, slots 0..n-1 of each kind alive, full energy."""
    for config in (EnvConfig(), CROWDED):
        env = PredPreyGrassEnv(config)
        env.reset(seed=seed)
        state = env.state
        live = state.alive_slots()
        cells = list(zip(state.x[live].tolist(), state.y[live].tolist()))
        cells += list(zip(state.grass_x.tolist(), state.grass_y.tolist()))
        assert len(set(cells)) == len(cells) == len(live) + config.n_grass
        for kind in KINDS:
            start, n = env.layout.kind_offset[kind], config.initial_agents.get(kind)
            assert state.alive[start : start + env.layout.kind_count[kind]].tolist() == [True] * n + [False] * (
                config.slots.get(kind) - n
            )
        assert np.all(state.grass_energy == config.initial_energy_grass)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(config_name=st.sampled_from(sorted(CONFIGS)), seed=st.integers(0, 2**32 - 1),
       numbers=st.lists(st.integers(0, 24), min_size=1, max_size=50))
def test_step_slots_reports_what_step_reports(config_name, seed, numbers):
    """The same seed and moves through `step` (a dict in slot order) and `step_slots` (arrays), to the
    episode's end (truncation included): every step reports the same agents, windows, rewards and flags."""
    config = CONFIGS[config_name]
    by_dict, by_slots = PredPreyGrassEnv(config), PredPreyGrassEnv(config)
    by_dict.reset(seed=seed)
    by_slots.reset(seed=seed)
    ids = by_dict.possible_agents
    for t in range(config.max_steps + 1):
        slots = by_slots.state.alive_slots()
        moves = np.array([numbers[(t + i) % len(numbers)] % by_dict.action_space(ids[s]).n for i, s in enumerate(slots)])
        obs, rewards, terminated, truncated, _ = by_dict.step({ids[s]: int(m) for s, m in zip(slots, moves)})
        played = by_slots.step_slots(slots, moves)
        reported = [ids[s] for s in played.slots]
        quirk_truncation = config.quirk_truncate_after_last_step and t == config.max_steps  # `step` adds the empty slots
        assert set(reported) == set(obs) or (quirk_truncation and set(reported) == {ids[s] for s in slots} < set(obs))
        assert by_slots.agents == by_dict.agents
        roles = by_slots.layout.role[played.slots]
        for role, windows in played.windows.items():
            for agent, window in zip(np.array(reported)[roles == role], windows):
                np.testing.assert_array_equal(window, obs[agent], err_msg=agent)
        assert played.rewards.tolist() == [rewards[a] for a in reported]
        assert played.terminated.tolist() == [terminated[a] for a in reported]
        assert played.truncated.tolist() == [truncated[a] for a in reported]
        if not by_dict.agents:
            break
    assert not by_slots.agents
