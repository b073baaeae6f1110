"""The rules of one step, one function per phase, in the order of the spec.

`shared/spec/predpreygrass.md`, "One step, in order": energy loss, ageing, grass
regrowth, moves, encounters (starvation, catching, grazing), removal of the dead,
reproduction. Each function mutates the `GameState` and adds to `rewards`
(indexed by slot); randomness only comes from the `np.random.Generator` passed in.
"""

from __future__ import annotations

import math

import numpy as np

from pbt_job.env.config import EnvConfig
from pbt_job.env.state import EMPTY, PREDATOR, PREY, GameState, kind_of

_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))
"""Child placement order "up, down, left, right" as the reference writes it: x is its row index."""


def lose_step_energy(state: GameState, cfg: EnvConfig, acting: np.ndarray, rewards: np.ndarray) -> None:
    """Phase 1: every acting agent pays its per-step energy and gets the step reward."""
    is_predator = state.layout.role[acting] == PREDATOR
    state.energy[acting] -= np.where(is_predator, cfg.energy_loss_per_step_predator, cfg.energy_loss_per_step_prey)
    rewards[acting] += np.where(is_predator, cfg.step_reward_predator, cfg.step_reward_prey)


def grow_older(state: GameState, acting: np.ndarray) -> None:
    """Phase 2: every acting agent ages by one step (as in the reference)."""
    state.age[acting] += 1


def regrow_grass(state: GameState, cfg: EnvConfig) -> None:
    """Phase 3: every patch, eaten ones included, regrows up to the cap."""
    np.minimum(state.grass_energy + cfg.energy_gain_per_step_grass, cfg.max_energy_grass, out=state.grass_energy)


def move(state: GameState, cfg: EnvConfig, acting: list[int], actions: list[int]) -> None:
    """Phase 4: apply moves one agent at a time, in the order of the action dict.

    The target is clipped to the grid; a target cell holding another agent of the
    same role blocks the move (the agent stays). Each agent pays
    euclidean distance actually moved x `move_energy_cost_factor` x its energy.
    The loop is sequential on purpose: whether a cell is free depends on the
    agents that moved before. It works on Python ints to stay cheap.
    """
    occupant, layout = state.occupant, state.layout
    width, height, factor = cfg.width, cfg.height, cfg.move_energy_cost_factor
    xs, ys = state.x.tolist(), state.y.tolist()
    for slot, action in zip(acting, actions):
        r = int(layout.move_range[slot])
        half = r // 2
        x, y = xs[slot], ys[slot]
        nx = min(max(x + action // r - half, 0), width - 1)
        ny = min(max(y + action % r - half, 0), height - 1)
        if nx == x and ny == y:
            continue
        grid = occupant[layout.role[slot]]
        if grid[nx, ny] != EMPTY:
            continue
        grid[x, y] = EMPTY
        grid[nx, ny] = slot
        xs[slot], ys[slot] = nx, ny
        state.energy[slot] -= math.hypot(nx - x, ny - y) * factor * state.energy[slot]
    state.x[:] = xs
    state.y[:] = ys


def resolve_encounters(state: GameState, cfg: EnvConfig, rewards: np.ndarray) -> np.ndarray:
    """Phase 5: starvation, then predators catch prey, then surviving prey graze.

    Starvation is resolved first for everyone, so a starving prey dies of hunger
    and is never a (negative-energy) meal; with at most one agent per role per
    cell the rest does not depend on agent order.

    Returns:
        The slots that die this step (starved or caught), in slot order.
    """
    role, living = state.layout.role, state.alive.copy()
    live = np.flatnonzero(living)
    starved = live[state.energy[live] <= 0.0]
    living[starved] = False

    predators = np.flatnonzero(living & (role == PREDATOR))
    prey = state.occupant[PREY, state.x[predators], state.y[predators]]
    hunting = prey != EMPTY
    hunting[hunting] = living[prey[hunting]]
    hunters, caught = predators[hunting], prey[hunting]
    gain = np.minimum(state.energy[caught], cfg.max_energy_gain_predator) * cfg.energy_transfer_efficiency
    state.energy[hunters] = np.minimum(state.energy[hunters] + gain, cfg.max_energy_predator)
    rewards[hunters] += cfg.catch_reward_predator
    rewards[caught] += cfg.caught_reward_prey
    living[caught] = False

    grazers = np.flatnonzero(living & (role == PREY))
    patches = state.grass_at[state.x[grazers], state.y[grazers]]
    grazing = patches != EMPTY
    grazers, patches = grazers[grazing], patches[grazing]
    gain = np.minimum(state.grass_energy[patches], cfg.max_energy_gain_prey) * cfg.energy_transfer_efficiency
    state.energy[grazers] = np.minimum(state.energy[grazers] + gain, cfg.max_energy_prey)
    state.grass_energy[patches] = 0.0
    rewards[grazers] += cfg.eat_reward_prey

    dead = np.sort(np.concatenate([starved, caught]))
    return dead


def remove_dead(state: GameState, cfg: EnvConfig, dead: np.ndarray) -> None:
    """Phase 6: dead agents leave the grid; their slots reopen unless `reuse_slots` is off."""
    for slot in dead.tolist():
        state.remove(slot)
    state.closed[dead] = not cfg.reuse_slots


def reproduce(
    state: GameState, cfg: EnvConfig, rng: np.random.Generator, rewards: np.ndarray, just_died: np.ndarray
) -> list[int]:
    """Phase 7: each eligible survivor has a child with the configured chance.

    Eligible: energy >= the role's reproduction threshold and at least
    `reproduction_cooldown_steps` since the last child. The child's type flips
    (1 <-> 2) with the mutation rate; it takes the lowest free slot of its kind
    (see `GameState.lowest_free_slot`; a slot freed in this very step only reopens
    in the next one, so that no step reports two lives under one id), is born in the first free neighbour cell (up,
    down, left, right; free means no agent of either role) or else a random free
    cell, with initial energy x `child_energy_efficiency`; the parent pays its
    initial energy. The parent is rewarded even if no slot is free; then no child
    is born and the parent keeps its energy.

    Quirk: without a free slot the cooldown does not restart (as in the
    reference), so an eligible parent can be rewarded again in the next step.

    Quirk: prey children flip with `mutation_rate_predator` by default
    (`quirk_prey_child_uses_predator_mutation_rate`).

    Returns:
        The newborns' slots, in birth order.
    """
    layout = state.layout
    unavailable = state.closed.copy()
    unavailable[just_died] = True
    born: list[int] = []
    for parent in state.alive_slots().tolist():
        role = int(layout.role[parent])
        if role == PREDATOR:
            threshold, chance = cfg.reproduction_energy_predator, cfg.reproduction_chance_predator
            initial, reward, rate = cfg.initial_energy_predator, cfg.reproduction_reward_predator, cfg.mutation_rate_predator
        else:
            threshold, chance = cfg.reproduction_energy_prey, cfg.reproduction_chance_prey
            initial, reward = cfg.initial_energy_prey, cfg.reproduction_reward_prey
            use_predator_rate = cfg.quirk_prey_child_uses_predator_mutation_rate
            rate = cfg.mutation_rate_predator if use_predator_rate else cfg.mutation_rate_prey
        if state.energy[parent] < threshold:
            continue
        if state.step - state.last_reproduction[parent] < cfg.reproduction_cooldown_steps:
            continue
        if rng.random() >= chance:
            continue
        parent_type = int(layout.type_[parent])
        child_type = 3 - parent_type if rng.random() < rate else parent_type
        rewards[parent] += reward
        child = state.lowest_free_slot(kind_of(child_type, role), unavailable)
        if child is None:
            continue
        cell = _free_cell_near(state, cfg, rng, int(state.x[parent]), int(state.y[parent]))
        if cell is None:
            continue
        state.last_reproduction[parent] = state.step
        state.energy[parent] -= initial
        state.place(child, cell[0], cell[1], initial * cfg.child_energy_efficiency)
        state.last_reproduction[child] = state.step
        born.append(child)
    return born


def _free_cell_near(
    state: GameState, cfg: EnvConfig, rng: np.random.Generator, x: int, y: int
) -> tuple[int, int] | None:
    """First free neighbour of (x, y) in `_NEIGHBOURS` order, else a random free cell."""
    occupant = state.occupant
    for dx, dy in _NEIGHBOURS:
        nx, ny = x + dx, y + dy
        if 0 <= nx < cfg.width and 0 <= ny < cfg.height:
            if occupant[PREDATOR, nx, ny] == EMPTY and occupant[PREY, nx, ny] == EMPTY:
                return nx, ny
    free = np.flatnonzero((occupant[PREDATOR] == EMPTY) & (occupant[PREY] == EMPTY))
    if len(free) == 0:
        return None
    cell = int(free[rng.integers(len(free))])
    return cell // cfg.height, cell % cfg.height


def is_over(state: GameState) -> bool:
    """The episode terminates for everyone when no predators or no prey remain."""
    return state.count_alive(PREDATOR) == 0 or state.count_alive(PREY) == 0
