"""Hand-built boards for the predator-prey-grass rule tests.

The rule tests start from `reset(seed=0)` and then swap in a board of their own
(`GameState.empty` + `place` + grass), so that every position and energy is known.
The default test grid is 7 x 11: non-square, so a swapped x/y axis shows up as a
wrong position or an out-of-range index instead of passing by symmetry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pbt_job.env import EnvConfig, PredPreyGrassEnv
from pbt_job.env.state import GameState

WIDTH, HEIGHT = 7, 11

SMALL: dict[str, Any] = {
    "width": WIDTH,
    "height": HEIGHT,
    "n_grass": 0,
    "slots": {"type_1_predator": 4, "type_2_predator": 2, "type_1_prey": 4, "type_2_prey": 2},
    "initial_agents": {"type_1_predator": 1, "type_2_predator": 0, "type_1_prey": 1, "type_2_prey": 0},
}
"""A 7 x 11 game with a few slots of every kind and no grass at reset."""

STILL: dict[str, Any] = {
    "energy_loss_per_step_predator": 0.0,
    "energy_loss_per_step_prey": 0.0,
    "move_energy_cost_factor": 0.0,
    "energy_gain_per_step_grass": 0.0,
    "reproduction_chance_predator": 0.0,
    "reproduction_chance_prey": 0.0,
}
"""Overrides that switch off energy drain, regrowth and reproduction, so one rule can be watched alone."""


def small_config(*overlays: dict[str, Any], **overrides: Any) -> EnvConfig:
    """`SMALL`, then each overlay (e.g. `STILL`), then keyword overrides."""
    fields: dict[str, Any] = dict(SMALL)
    for overlay in overlays:
        fields.update(overlay)
    fields.update(overrides)
    return EnvConfig.model_validate(fields)


def make_board(
    config: EnvConfig,
    agents: dict[str, tuple[int, int, float]],
    grass: dict[tuple[int, int], float] | None = None,
    seed: int = 0,
) -> PredPreyGrassEnv:
    """An env reset with `seed` whose board is replaced by exactly `agents` and `grass`.

    Args:
        config: The game's configuration.
        agents: `{agent_id: (x, y, energy)}`; every other slot is inactive.
        grass: `{(x, y): energy}`, one patch per cell.
        seed: Seed of the env's generator (random free cells, chances, mutation).
    """
    env = PredPreyGrassEnv(config)
    env.reset(seed=seed)
    state = GameState.empty(config, env.layout)
    for agent, (x, y, energy) in agents.items():
        state.place(slot(env, agent), x, y, energy)
    cells = list(grass or {})
    state.add_grass(
        np.array([x for x, _ in cells], dtype=np.int64), np.array([y for _, y in cells], dtype=np.int64), 0.0
    )
    state.grass_energy[:] = [grass[cell] for cell in cells] if cells else []
    env.state = state
    env.agents = [agent for agent in env.possible_agents if state.alive[slot(env, agent)]]
    return env


def slot(env: PredPreyGrassEnv, agent: str) -> int:
    return env.possible_agents.index(agent)


def position(env: PredPreyGrassEnv, agent: str) -> tuple[int, int]:
    s = slot(env, agent)
    return int(env.state.x[s]), int(env.state.y[s])


def energy(env: PredPreyGrassEnv, agent: str) -> float:
    return float(env.state.energy[slot(env, agent)])


def grass_energy(env: PredPreyGrassEnv, x: int, y: int) -> float:
    patch = env.state.grass_at[x, y]
    assert patch >= 0, f"no grass patch at ({x}, {y})"
    return float(env.state.grass_energy[patch])


def move(env: PredPreyGrassEnv, agent: str, dx: int, dy: int) -> int:
    """The action index of move (dx, dy): k = (dx + d) * r + (dy + d)."""
    r = int(np.sqrt(env.action_space(agent).n))
    d = (r - 1) // 2
    assert abs(dx) <= d and abs(dy) <= d, f"({dx}, {dy}) is outside the {r} x {r} move range"
    return (dx + d) * r + (dy + d)


def stay(env: PredPreyGrassEnv, agent: str) -> int:
    return move(env, agent, 0, 0)


def stay_all(env: PredPreyGrassEnv) -> dict[str, int]:
    """Every live agent stays put this step."""
    return {agent: stay(env, agent) for agent in env.agents}


def random_actions(env: PredPreyGrassEnv, rng: np.random.Generator) -> dict[str, int]:
    """A uniformly random move for every live agent, in `env.agents` order."""
    return {agent: int(rng.integers(env.action_space(agent).n)) for agent in env.agents}
