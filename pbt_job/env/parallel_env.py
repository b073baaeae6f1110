"""PettingZoo `ParallelEnv` for the predator-prey-grass game: a thin adapter over `rules`.

The game lives in `state.py` (numpy arrays) and `rules.py` (one function per step
phase); this module turns action dicts into slot arrays and the state back into
the five PettingZoo dicts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from pbt_job.env import rules
from pbt_job.env.config import KINDS, EnvConfig
from pbt_job.env.render import render_ansi
from pbt_job.env.state import PREDATOR, PREY, GameState, ObservationWindows, SlotLayout, kind_role, kind_type

OBS_HIGH = 100.0


@dataclass
class SlotStep:
    """What one step reports, as arrays over the reported slots (ascending): the fast env runner's `step`."""

    slots: np.ndarray  # int64: the slots with data this step (the living before it, and the newborns)
    windows: dict[int, np.ndarray]  # per role: the observation windows of `slots` of that role, in slot order
    rewards: np.ndarray  # float64 per slot
    terminated: np.ndarray  # bool per slot
    truncated: np.ndarray  # bool per slot

    def only(self, keep: np.ndarray, roles: np.ndarray) -> SlotStep:
        """This step for the slots where `keep` is true; `roles` holds each slot's role."""
        windows = {role: rows[keep[roles == role]] for role, rows in self.windows.items()}
        return SlotStep(self.slots[keep], windows, self.rewards[keep], self.terminated[keep], self.truncated[keep])


def policy_of(agent_id: str) -> str:
    """The policy (agent kind) of an id: the id without its trailing index."""
    return agent_id.rsplit("_", 1)[0]


class PredPreyGrassEnv(ParallelEnv):
    """Predators and prey of two types on a bounded grid with regrowing grass.

    Rules: `shared/spec/predpreygrass.md`. Agent ids are `type_{1|2}_{predator|prey}_{i}`
    with `i` a slot index; `possible_agents` lists every slot. An agent that dies is
    reported `terminated=True` in that step and absent afterwards; a newborn appears
    with its first observation in the step it is born.

    Quirk (`quirk_truncate_after_last_step`, default on): truncation is reported on
    the call after step `max_steps`, for every possible agent, with zero observations
    for inactive slots.

    With `reuse_slots` on (the reference rule), an id whose agent died can come back
    as a newborn later in the same episode. PettingZoo's API test forbids that; the
    RLlib adapter gives each life its own id.

    Args:
        config: An `EnvConfig`, or a dict of its fields.
        render_mode: None or "ansi" (`render()` returns the grid as text).
    """

    metadata = {"name": "predpreygrass_v0", "render_modes": ["ansi"], "is_parallelizable": True}

    def __init__(self, config: EnvConfig | dict[str, Any] | None = None, render_mode: str | None = None):
        self.config = config if isinstance(config, EnvConfig) else EnvConfig.model_validate(config or {})
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        self.layout = SlotLayout.from_config(self.config)
        self.possible_agents = list(self.layout.agent_ids)
        self.agents: list[str] = []
        self._slot_of = {agent: slot for slot, agent in enumerate(self.possible_agents)}
        self._windows = ObservationWindows(self.config)
        obs_ranges = {PREDATOR: self.config.obs_range_predator, PREY: self.config.obs_range_prey}
        move_ranges = {1: self.config.move_range_type_1, 2: self.config.move_range_type_2}
        self._observation_spaces = {
            kind: spaces.Box(0.0, OBS_HIGH, shape=(4, r, r), dtype=np.float32)
            for kind in KINDS
            for r in (obs_ranges[kind_role(kind)],)
        }
        self._action_spaces = {kind: spaces.Discrete(move_ranges[kind_type(kind)] ** 2) for kind in KINDS}
        self._rng: np.random.Generator | None = None
        self.state: GameState | None = None

    @functools.lru_cache(maxsize=None)
    def observation_space(self, agent: str) -> spaces.Box:
        return self._observation_spaces[policy_of(agent)]

    @functools.lru_cache(maxsize=None)
    def action_space(self, agent: str) -> spaces.Discrete:
        return self._action_spaces[policy_of(agent)]

    def reset(self, seed: int | None = None, options: dict | None = None):
        """Start an episode: agents and grass on distinct random cells.

        `reset(seed=s)` seeds all randomness of the episode; without a seed the
        generator continues from the previous episode.
        """
        cfg, layout = self.config, self.layout
        if seed is not None or self._rng is None:
            self._rng = np.random.default_rng(seed)
        state = GameState.empty(cfg, layout)
        n_agents = sum(cfg.initial_agents.get(kind) for kind in KINDS)
        cells = self._rng.choice(cfg.width * cfg.height, size=n_agents + cfg.n_grass, replace=False)
        xs, ys = cells // cfg.height, cells % cfg.height
        placed = 0
        for kind in KINDS:
            energy = cfg.initial_energy_predator if kind_role(kind) == PREDATOR else cfg.initial_energy_prey
            for i in range(cfg.initial_agents.get(kind)):
                state.place(layout.kind_offset[kind] + i, int(xs[placed]), int(ys[placed]), energy)
                placed += 1
        state.add_grass(xs[placed:], ys[placed:], cfg.initial_energy_grass)
        self.state = state
        live = state.alive_slots()
        self.agents = self._ids(live)
        return self._observe(live), {agent: {} for agent in self.agents}

    def step(self, actions: dict[str, int]):
        """Play one step; see `rules` for the phases and their order."""
        cfg, state = self.config, self.state
        if state is None:
            raise RuntimeError("call reset() before step()")
        if cfg.quirk_truncate_after_last_step and state.step >= cfg.max_steps:
            return self._truncate_every_slot()
        acting, moves = self._acting(actions)
        played = self._play(acting, moves)
        ids = self._ids(played.slots)
        terminated = dict(zip(ids, played.terminated.tolist()))
        truncated = dict(zip(ids, played.truncated.tolist()))
        reward = dict(zip(ids, played.rewards.tolist()))
        return self._observe(played.slots), reward, terminated, truncated, {agent: {} for agent in ids}

    def step_slots(self, slots: np.ndarray, moves: np.ndarray) -> SlotStep:
        """`step` for callers that keep the agents as slot arrays (the fast env runner): no dicts.

        Args:
            slots: The acting slots, ascending (the order `step` moves agents in when its
                dict is in slot order); each must be alive.
            moves: One action per slot.
        """
        cfg, state = self.config, self.state
        if state is None:
            raise RuntimeError("call reset() before step_slots()")
        if cfg.quirk_truncate_after_last_step and state.step >= cfg.max_steps:
            live = state.alive_slots()
            self.agents = []
            return SlotStep(live, self.observe_slots(live), np.zeros(len(live)), np.zeros(len(live), dtype=bool),
                            np.ones(len(live), dtype=bool))
        slots, moves = np.asarray(slots, dtype=np.int64), np.asarray(moves, dtype=np.int64)
        if not (state.alive[slots].all() and (np.diff(slots) > 0).all()):
            raise ValueError(f"step_slots takes living slots in ascending order, got {slots.tolist()}")
        n_moves = self.layout.move_range[slots] ** 2
        if not ((moves >= 0) & (moves < n_moves)).all():
            raise ValueError(f"moves {moves.tolist()} are outside the slots' Discrete({n_moves.tolist()})")
        played = self._play(slots.tolist(), moves.tolist())
        played.windows = self.observe_slots(played.slots)
        return played

    def observe_slots(self, slots: np.ndarray) -> dict[int, np.ndarray]:
        """The observation windows of `slots` per role (`PREDATOR`, `PREY`), each role's rows in slot order."""
        return self._windows.cut(self.state, slots)

    def _play(self, acting: list[int], moves: list[int]) -> SlotStep:
        """The rules of one step for the `acting` slots (in move order) and their moves; the windows are left to the caller."""
        cfg, state = self.config, self.state
        before = state.alive_slots()
        rewards = np.zeros(len(self.possible_agents))
        acting_slots = np.array(acting, dtype=np.int64)
        rules.lose_step_energy(state, cfg, acting_slots, rewards)
        rules.grow_older(state, acting_slots)
        rules.regrow_grass(state, cfg)
        rules.move(state, cfg, acting, moves)
        dead = rules.resolve_encounters(state, cfg, rewards)
        rules.remove_dead(state, cfg, dead)
        born = rules.reproduce(state, cfg, self._rng, rewards, dead)
        state.step += 1

        over = rules.is_over(state)
        truncate = not cfg.quirk_truncate_after_last_step and state.step >= cfg.max_steps
        marked = np.zeros(len(self.possible_agents), dtype=bool)  # masks: np.union1d and np.isin cost more here
        marked[before] = True
        marked[born] = True
        reported = np.flatnonzero(marked)
        marked[:] = False
        marked[dead] = True
        terminated = marked[reported] | over
        self.agents = [] if over or truncate else self._ids(state.alive_slots())
        return SlotStep(reported, {}, rewards[reported], terminated, truncate & ~terminated)

    def render(self) -> str | None:
        if self.render_mode == "ansi" and self.state is not None:
            return render_ansi(self.state, self.config)
        return None

    def close(self) -> None:
        pass

    def _acting(self, actions: dict[str, int]) -> tuple[list[int], list[int]]:
        """Slots of the living agents in `actions`, in dict order, and their validated moves."""
        acting, moves = [], []
        alive, n_moves = self.state.alive, self.layout.move_range**2
        for agent, action in actions.items():
            slot = self._slot_of.get(agent)
            if slot is None:
                raise KeyError(f"unknown agent id {agent!r} in actions; ids look like 'type_1_prey_0'")
            if not alive[slot]:
                continue
            move = int(action)
            if not 0 <= move < n_moves[slot]:
                raise ValueError(f"action {move} of {agent!r} is outside Discrete({n_moves[slot]})")
            acting.append(slot)
            moves.append(move)
        return acting, moves

    def _ids(self, slots: np.ndarray) -> list[str]:
        ids = self.possible_agents
        return [ids[slot] for slot in slots.tolist()]

    def _observe(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        windows = self._windows.cut(self.state, slots)
        roles = self.layout.role[slots]
        obs: dict[str, np.ndarray] = {}
        for role, rows in windows.items():
            obs.update(zip(self._ids(slots[roles == role]), rows))
        return obs

    def _truncate_every_slot(self):
        """Quirk: the reference's truncation, one call late and for every slot."""
        live = self.state.alive_slots()
        obs = {agent: np.zeros(self.observation_space(agent).shape, np.float32) for agent in self.possible_agents}
        obs.update(self._observe(live))
        every = self.possible_agents
        self.agents = []
        return (
            obs,
            dict.fromkeys(every, 0.0),
            dict.fromkeys(every, False),
            dict.fromkeys(every, True),
            {agent: {} for agent in every},
        )
