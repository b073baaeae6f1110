"""Rule tests of the predator-prey-grass game on small hand-built boards.

Rules: `shared/spec/predpreygrass.md`. Each test builds a 7 x 11 board (non-square,
so swapped axes fail) with `env_helpers.make_board`, plays a step or a few, and
asserts exact positions, energies, ids and flags. Energies that go through float
arithmetic are compared with `pytest.approx(rel=1e-12)`, i.e. exactly up to rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from env_helpers import (
    HEIGHT,
    STILL,
    WIDTH,
    energy,
    grass_energy,
    make_board,
    move,
    position,
    random_actions,
    slot,
    small_config,
    stay,
    stay_all,
)
from gymnasium import spaces
from pettingzoo.test import parallel_api_test

from pbt_job.env import KINDS, EnvConfig, PredPreyGrassEnv, policy_of
from pbt_job.env.state import EMPTY, PREDATOR, PREY


def exact(value: float) -> pytest.approx:
    return pytest.approx(value, rel=1e-12, abs=1e-12)


def newborns(env: PredPreyGrassEnv, before: list[str], obs: dict) -> list[str]:
    return [agent for agent in obs if agent not in before]


# ---------------------------------------------------------------------------
# Moves
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mover", "other", "r"),
    [("type_1_predator_0", "type_1_prey_0", 3), ("type_2_prey_0", "type_1_predator_0", 5)],
)
def test_action_k_moves_by_k_div_r_minus_d_and_k_mod_r_minus_d(mover, other, r):
    """Action k of Discrete(r^2) moves by (k // r - d, k % r - d), d = (r - 1) / 2.

    1. An agent stands at (3, 5) in the middle of the 7 x 11 grid, nothing nearby.
    2. It plays action k; every k lands on its own cell, dx from k // r, dy from k % r.
    """
    d = (r - 1) // 2
    for k in range(r * r):
        env = make_board(small_config(STILL), {mover: (3, 5, 5.0), other: (6, 10, 2.0)})
        assert env.action_space(mover) == spaces.Discrete(r * r)
        env.step({mover: k, other: stay(env, other)})
        assert position(env, mover) == (3 + k // r - d, 5 + k % r - d), f"action {k}"


@pytest.mark.parametrize(
    "blocker", ["type_1_predator_1", "type_2_predator_0"], ids=["same-kind", "same-role-other-type"]
)
def test_predator_cannot_move_onto_another_predator(blocker):
    """A target cell holding another predator (either type) blocks the move; no move cost is paid.

    1. Predator A at (2, 5) with 10 energy, another predator at (3, 5).
    2. A plays (+1, 0); it stays at (2, 5) and, having moved 0 cells, keeps its energy.
    """
    cfg = small_config(STILL, move_energy_cost_factor=0.01)
    env = make_board(cfg, {"type_1_predator_0": (2, 5, 10.0), blocker: (3, 5, 6.0), "type_1_prey_0": (6, 10, 3.0)})
    env.step({"type_1_predator_0": move(env, "type_1_predator_0", 1, 0), blocker: stay(env, blocker)})
    assert position(env, "type_1_predator_0") == (2, 5)
    assert position(env, blocker) == (3, 5)
    assert energy(env, "type_1_predator_0") == 10.0


def test_prey_cannot_move_onto_another_prey():
    """A prey's move onto a cell holding another prey (here of the other type) is blocked."""
    cfg = small_config(STILL, move_energy_cost_factor=0.01)
    env = make_board(
        cfg, {"type_1_prey_0": (4, 7, 3.0), "type_2_prey_0": (4, 6, 3.0), "type_1_predator_0": (0, 0, 6.0)}
    )
    env.step({"type_1_prey_0": move(env, "type_1_prey_0", 0, -1)})
    assert position(env, "type_1_prey_0") == (4, 7)
    assert energy(env, "type_1_prey_0") == 3.0


@pytest.mark.parametrize(
    ("mover", "dx"), [("type_1_prey_0", 1), ("type_1_predator_0", -1)], ids=["prey-onto-predator", "predator-onto-prey"]
)
def test_predator_and_prey_may_share_a_cell(mover, dx):
    """Cross-role moves are not blocked: the mover enters the cell, and the prey there is caught.

    1. Prey at (3, 5), predator at (4, 5).
    2. One of them steps onto the other's cell; both end on (4, 5) or (3, 5) and the prey dies.
    """
    env = make_board(
        small_config(STILL),
        {"type_1_prey_0": (3, 5, 3.0), "type_1_predator_0": (4, 5, 6.0), "type_1_prey_1": (6, 10, 3.0)},
    )
    _, _, terminated, _, _ = env.step({mover: move(env, mover, dx, 0)})
    assert position(env, "type_1_prey_0") == position(env, "type_1_predator_0")
    assert terminated["type_1_prey_0"] is True
    assert terminated["type_1_predator_0"] is False


def test_moves_are_clipped_to_the_non_square_grid():
    """A target outside the 7 x 11 grid is clipped to its border (x to 0..6, y to 0..10).

    1. type_2 predator at (5, 1) plays (+2, -2): lands on (6, 0), moved sqrt(2).
    2. type_2 prey at (1, 9) plays (-2, +2): lands on (0, 10).
    3. type_1 predator at (6, 9) plays (+1, +1): lands on (6, 10); a swapped axis would clip x to 10.
    4. type_1 prey at (0, 0) plays (-1, -1): stays, pays no move cost.
    """
    cfg = small_config(STILL, move_energy_cost_factor=0.01)
    env = make_board(
        cfg,
        {
            "type_2_predator_0": (5, 1, 10.0),
            "type_2_prey_0": (1, 9, 5.0),
            "type_1_predator_0": (6, 9, 10.0),
            "type_1_prey_0": (0, 0, 3.0),
        },
    )
    env.step(
        {
            "type_2_predator_0": move(env, "type_2_predator_0", 2, -2),
            "type_2_prey_0": move(env, "type_2_prey_0", -2, 2),
            "type_1_predator_0": move(env, "type_1_predator_0", 1, 1),
            "type_1_prey_0": move(env, "type_1_prey_0", -1, -1),
        }
    )
    assert position(env, "type_2_predator_0") == (6, 0)
    assert position(env, "type_2_prey_0") == (0, 10)
    assert position(env, "type_1_predator_0") == (WIDTH - 1, HEIGHT - 1)
    assert position(env, "type_1_prey_0") == (0, 0)
    assert energy(env, "type_2_predator_0") == exact(10.0 - math.sqrt(2) * 0.01 * 10.0)
    assert energy(env, "type_2_prey_0") == exact(5.0 - math.sqrt(2) * 0.01 * 5.0)
    assert energy(env, "type_1_prey_0") == 3.0


@pytest.mark.parametrize(
    ("order", "a_end", "b_end"),
    [(("A", "B"), (3, 5), (2, 5)), (("B", "A"), (3, 5), (1, 5))],
    ids=["A-then-B-both-move", "B-then-A-B-blocked"],
)
def test_moves_apply_one_at_a_time_in_action_dict_order(order, a_end, b_end):
    """Moves are sequential in the order of the action dict.

    1. Prey A at (2, 5) and prey B at (1, 5) both play (+1, 0).
    2. A first: A leaves (2, 5) for (3, 5), then B moves into the cell A just left.
    3. B first: B's target (2, 5) still holds A, so B stays; then A moves.
    """
    names = {"A": "type_1_prey_0", "B": "type_1_prey_1"}
    env = make_board(
        small_config(STILL),
        {names["A"]: (2, 5, 3.0), names["B"]: (1, 5, 3.0), "type_1_predator_0": (6, 10, 6.0)},
    )
    env.step({names[who]: move(env, names[who], 1, 0) for who in order})
    assert position(env, names["A"]) == a_end
    assert position(env, names["B"]) == b_end


def test_move_cost_is_distance_times_factor_times_energy_after_the_step_loss():
    """Move cost = euclidean distance actually moved x 0.01 x energy after the per-step loss.

    1. type_1 predator with 10.0 moves (+1, +1): 10 - 0.06 = 9.94, then pays sqrt(2) x 0.01 x 9.94.
    2. type_2 prey with 5.0 moves (+2, +1): 4.98, then pays sqrt(5) x 0.01 x 4.98.
    3. type_1 prey with 3.0 stays: pays only the step loss, 2.98.
    """
    env = make_board(
        small_config(reproduction_chance_predator=0.0, reproduction_chance_prey=0.0),
        {"type_1_predator_0": (3, 5, 10.0), "type_2_prey_0": (0, 0, 5.0), "type_1_prey_0": (6, 10, 3.0)},
    )
    env.step(
        {
            "type_1_predator_0": move(env, "type_1_predator_0", 1, 1),
            "type_2_prey_0": move(env, "type_2_prey_0", 2, 1),
            "type_1_prey_0": stay(env, "type_1_prey_0"),
        }
    )
    assert position(env, "type_1_predator_0") == (4, 6)
    assert position(env, "type_2_prey_0") == (2, 1)
    assert energy(env, "type_1_predator_0") == exact(9.94 - math.sqrt(2) * 0.01 * 9.94)
    assert energy(env, "type_2_prey_0") == exact(4.98 - math.sqrt(5) * 0.01 * 4.98)
    assert energy(env, "type_1_prey_0") == exact(2.98)


# ---------------------------------------------------------------------------
# Energy loss and ageing
# ---------------------------------------------------------------------------


def test_every_acting_agent_loses_its_step_energy_and_an_absent_one_does_not():
    """Phase 1: predators lose 0.06, prey 0.02 per step; an agent missing from the actions loses nothing."""
    env = make_board(
        small_config(),
        {
            "type_1_predator_0": (1, 1, 6.0),
            "type_1_predator_1": (5, 1, 6.0),
            "type_1_prey_0": (1, 9, 3.0),
            "type_2_prey_0": (5, 9, 3.0),
        },
    )
    actions = stay_all(env)
    del actions["type_1_predator_1"]
    env.step(actions)
    assert energy(env, "type_1_predator_0") == exact(5.94)
    assert energy(env, "type_1_prey_0") == exact(2.98)
    assert energy(env, "type_2_prey_0") == exact(2.98)
    assert energy(env, "type_1_predator_1") == 6.0
    for _ in range(2):
        env.step(stay_all(env))
    assert energy(env, "type_1_predator_0") == exact(6.0 - 3 * 0.06)
    assert energy(env, "type_1_prey_0") == exact(3.0 - 3 * 0.02)


def test_ages_grow_by_one_per_step():
    """Phase 2: every agent that plays ages by one per step."""
    env = make_board(small_config(STILL), {"type_1_predator_0": (1, 1, 6.0), "type_2_prey_0": (5, 9, 3.0)})
    for _ in range(3):
        env.step(stay_all(env))
    assert env.state.age[slot(env, "type_1_predator_0")] == 3
    assert env.state.age[slot(env, "type_2_prey_0")] == 3
    assert env.state.step == 3
    env.step({"type_1_predator_0": 4})
    assert env.state.age[slot(env, "type_1_predator_0")] == 4
    assert env.state.age[slot(env, "type_2_prey_0")] == 3, "an agent without an action does not age (reference)"


# ---------------------------------------------------------------------------
# Catching, grazing, grass regrowth
# ---------------------------------------------------------------------------

NO_BIRTHS = {"reproduction_chance_predator": 0.0, "reproduction_chance_prey": 0.0}


@pytest.mark.parametrize(
    ("predator_energy", "prey_energy", "expected"),
    [
        (10.0, 4.0, 9.94 + 3.98 * 0.9),  # gain = prey energy (after its step loss) x 0.9
        (10.0, 7.0, 9.94 + 5.0 * 0.9),  # prey energy 6.98 is capped at 5.0 before the 0.9
        (18.0, 4.0, 20.0),  # 17.94 + 3.582 is capped at the predator cap 20.0
    ],
    ids=["plain", "gain-cap-5", "energy-cap-20"],
)
def test_predator_on_a_prey_cell_eats_it(predator_energy, prey_energy, expected):
    """A predator on a live prey's cell gains min(prey energy, 5.0) x 0.9, capped at 20; the prey is terminated."""
    env = make_board(
        small_config(NO_BIRTHS),
        {
            "type_1_predator_0": (3, 5, predator_energy),
            "type_1_prey_0": (3, 5, prey_energy),
            "type_2_prey_0": (6, 10, 3.0),
        },
    )
    obs, rewards, terminated, truncated, _ = env.step(stay_all(env))
    assert energy(env, "type_1_predator_0") == exact(expected)
    assert terminated == {"type_1_predator_0": False, "type_1_prey_0": True, "type_2_prey_0": False}
    assert truncated == {"type_1_predator_0": False, "type_1_prey_0": False, "type_2_prey_0": False}
    assert rewards == {"type_1_predator_0": 0.0, "type_1_prey_0": 0.0, "type_2_prey_0": 0.0}
    assert obs["type_1_prey_0"].shape == (4, 9, 9)
    assert env.agents == ["type_1_predator_0", "type_2_prey_0"]
    assert env.state.occupant[PREY, 3, 5] == EMPTY


@pytest.mark.parametrize(
    ("prey_energy", "grass", "expected"),
    [
        (3.0, 2.0, 2.98 + 1.5 * 0.9),  # grass 2.0 is capped at 1.5 before the 0.9
        (3.0, 1.0, 2.98 + 1.1 * 0.9),  # the patch regrows to 1.1 (phase 3) before it is eaten (phase 5)
        (13.5, 2.0, 14.0),  # 13.48 + 1.35 is capped at the prey cap 14.0
    ],
    ids=["gain-cap-1.5", "regrown-first", "energy-cap-14"],
)
def test_prey_on_a_grass_cell_eats_it_and_the_patch_drops_to_zero(prey_energy, grass, expected):
    """A prey on a grass cell gains min(grass, 1.5) x 0.9, capped at 14; the patch's energy drops to 0."""
    env = make_board(
        small_config(NO_BIRTHS),
        {"type_1_prey_0": (2, 8, prey_energy), "type_1_predator_0": (6, 0, 6.0)},
        grass={(2, 8): grass, (5, 5): 1.0},
    )
    env.step(stay_all(env))
    assert energy(env, "type_1_prey_0") == exact(expected)
    assert grass_energy(env, 2, 8) == 0.0
    assert grass_energy(env, 5, 5) == exact(1.1)


def test_eaten_patch_stays_and_regrows_by_0_1_per_step_up_to_2():
    """An eaten patch stays on its cell and regrows +0.1 per step, capped at 2.0.

    1. Prey at (3, 5) eats the patch there in step 1: the patch drops to 0.
    2. Step 2: the patch regrows to 0.1 (phase 3), then the prey steps off to (3, 6).
    3. Steps 3..22: +0.1 each, the patch reaches 2.0 after 20 regrowths and stays there;
       the prey's window (centre (4, 4) = (3, 6)) shows it at [3, 4, 3].
    """
    env = make_board(
        small_config(NO_BIRTHS),
        {"type_1_prey_0": (3, 5, 3.0), "type_1_predator_0": (6, 0, 6.0)},
        grass={(3, 5): 2.0},
    )
    env.step(stay_all(env))
    assert grass_energy(env, 3, 5) == 0.0
    obs, *_ = env.step({"type_1_prey_0": move(env, "type_1_prey_0", 0, 1), "type_1_predator_0": 4})
    assert position(env, "type_1_prey_0") == (3, 6)
    assert grass_energy(env, 3, 5) == exact(0.1)
    for regrowths in range(2, 25):
        obs, *_ = env.step(stay_all(env))
        expected = min(0.1 * regrowths, 2.0)
        assert grass_energy(env, 3, 5) == pytest.approx(expected, abs=1e-9), f"after {regrowths} regrowths"
        assert obs["type_1_prey_0"][3, 4, 3] == pytest.approx(expected, abs=1e-6)
    assert grass_energy(env, 3, 5) == 2.0
    assert env.state.grass_at[3, 5] == 0


def test_starved_agent_is_terminated_with_an_observation_then_absent():
    """Energy <= 0 after the step's costs means starvation.

    1. Predator P0 has 0.06, exactly its step loss: it ends the step at 0.0.
    2. That step reports P0 terminated=True, truncated=False, reward 0, with a 7 x 7 observation.
    3. P0 leaves `agents`; in the next step it is in none of the five dicts, even if an action is sent for it.
    """
    env = make_board(
        small_config(),
        {"type_1_predator_0": (0, 0, 0.06), "type_1_predator_1": (6, 10, 10.0), "type_1_prey_0": (3, 5, 3.0)},
    )
    obs, rewards, terminated, truncated, infos = env.step(stay_all(env))
    assert terminated["type_1_predator_0"] is True
    assert truncated["type_1_predator_0"] is False
    assert rewards["type_1_predator_0"] == 0.0
    assert obs["type_1_predator_0"].shape == (4, 7, 7)
    assert infos["type_1_predator_0"] == {}
    assert env.agents == ["type_1_predator_1", "type_1_prey_0"]
    assert env.state.occupant[PREDATOR, 0, 0] == EMPTY

    step = env.step({**stay_all(env), "type_1_predator_0": 4})
    for returned in step:
        assert set(returned) == {"type_1_predator_1", "type_1_prey_0"}


def test_starving_prey_is_not_eaten():
    """Starvation is resolved for everyone before catching: a starving prey is no meal.

    1. A prey with 0.01 (less than its 0.02 step loss) stands on a predator's cell and on a grass patch.
    2. The prey starves at -0.01: terminated; the predator gains nothing (and loses nothing):
       10 - 0.06 = 9.94; the grass is untouched.
    """
    env = make_board(
        small_config(NO_BIRTHS),
        {"type_1_predator_0": (3, 5, 10.0), "type_1_prey_0": (3, 5, 0.01), "type_2_prey_0": (6, 10, 3.0)},
        grass={(3, 5): 2.0},
    )
    _, _, terminated, _, _ = env.step(stay_all(env))
    assert terminated["type_1_prey_0"] is True
    assert energy(env, "type_1_predator_0") == exact(9.94)
    assert grass_energy(env, 3, 5) == 2.0


def test_starving_predator_does_not_eat():
    """A predator that starves this step catches nothing: the prey on its cell survives (and grazes)."""
    env = make_board(
        small_config(NO_BIRTHS),
        {"type_1_predator_0": (3, 5, 0.05), "type_1_predator_1": (0, 0, 6.0), "type_1_prey_0": (3, 5, 3.0)},
        grass={(3, 5): 2.0},
    )
    _, _, terminated, _, _ = env.step(stay_all(env))
    assert terminated == {"type_1_predator_0": True, "type_1_predator_1": False, "type_1_prey_0": False}
    assert energy(env, "type_1_prey_0") == exact(2.98 + 1.35)
    assert grass_energy(env, 3, 5) == 0.0


def test_caught_prey_does_not_graze():
    """A prey caught on a grass cell dies before grazing: the patch keeps its energy, the predator gains 2.98 x 0.9."""
    env = make_board(
        small_config(NO_BIRTHS),
        {"type_1_predator_0": (3, 5, 10.0), "type_1_prey_0": (3, 5, 3.0), "type_2_prey_0": (6, 10, 3.0)},
        grass={(3, 5): 2.0},
    )
    env.step(stay_all(env))
    assert grass_energy(env, 3, 5) == 2.0
    assert energy(env, "type_1_predator_0") == exact(9.94 + 2.98 * 0.9)


# ---------------------------------------------------------------------------
# Reproduction
# ---------------------------------------------------------------------------

BIRTHS = {
    **STILL,
    "reproduction_chance_predator": 1.0,
    "reproduction_chance_prey": 1.0,
    "mutation_rate_predator": 0.0,
    "mutation_rate_prey": 0.0,
}
"""No drain, and every eligible parent reproduces without mutation."""


@pytest.mark.parametrize(
    ("parent", "other", "parent_energy", "child"),
    [
        ("type_1_predator_0", "type_1_prey_0", 12.0, "type_1_predator_1"),
        ("type_1_predator_0", "type_1_prey_0", 11.99, None),
        ("type_1_prey_0", "type_1_predator_0", 8.0, "type_1_prey_1"),
        ("type_1_prey_0", "type_1_predator_0", 7.99, None),
    ],
    ids=["predator-at-12", "predator-below-12", "prey-at-8", "prey-below-8"],
)
def test_reproduction_needs_the_energy_threshold(parent, other, parent_energy, child):
    """A parent reproduces iff its energy >= 12.0 (predator) / 8.0 (prey)."""
    env = make_board(small_config(BIRTHS), {parent: (3, 5, parent_energy), other: (6, 10, 2.0)})
    before = list(env.agents)
    obs, rewards, *_ = env.step(stay_all(env))
    assert newborns(env, before, obs) == ([child] if child else [])
    assert rewards[parent] == (10.0 if child else 0.0)


def test_reproduction_cooldown_is_5_steps_and_initial_agents_start_eligible():
    """A parent reproduces again only 5 steps after its last child; agents at reset may reproduce at once.

    1. Predator with 20.0 (no drain): step 0 it has a child (energy 14), steps 1-4 it may not,
       step 5 it has another (energy 8), then it is below 12 for good.
    """
    env = make_board(small_config(BIRTHS), {"type_1_predator_0": (3, 5, 20.0), "type_1_prey_0": (6, 10, 2.0)})
    births = {}
    for step in range(11):
        before = list(env.agents)
        obs, rewards, *_ = env.step(stay_all(env))
        births[step] = (rewards["type_1_predator_0"], newborns(env, before, obs))
    assert births[0] == (10.0, ["type_1_predator_1"])
    assert births[5] == (10.0, ["type_1_predator_2"])
    assert all(births[step] == (0.0, []) for step in (1, 2, 3, 4, 6, 7, 8, 9, 10))
    assert energy(env, "type_1_predator_0") == 8.0
    assert env.state.last_reproduction[slot(env, "type_1_predator_0")] == 5


def test_reproduction_chance_0_never_reproduces():
    """With reproduction_chance 0, a parent far above the threshold never has a child."""
    env = make_board(
        small_config(BIRTHS, reproduction_chance_predator=0.0, reproduction_chance_prey=0.0),
        {"type_1_predator_0": (3, 5, 20.0), "type_1_prey_0": (6, 10, 13.0)},
    )
    for _ in range(12):
        _, rewards, *_ = env.step(stay_all(env))
        assert rewards == {"type_1_predator_0": 0.0, "type_1_prey_0": 0.0}
    assert env.agents == ["type_1_predator_0", "type_1_prey_0"]


def test_reproduction_chance_one_half_lets_about_half_the_parents_reproduce():
    """40 eligible prey parents with reproduction_chance_prey 0.5: the births of one step lie in [10, 30] (3 sigma)."""
    cfg = EnvConfig.model_validate(
        {
            **BIRTHS,
            "reproduction_chance_prey": 0.5,
            "slots": {"type_1_predator": 1, "type_2_predator": 0, "type_1_prey": 80, "type_2_prey": 0},
            "initial_agents": {"type_1_predator": 1, "type_2_predator": 0, "type_1_prey": 1, "type_2_prey": 0},
        }
    )
    parents = {f"type_1_prey_{i}": (2 * (i % 10) + 2, 3 * (i // 10) + 2, 8.0) for i in range(40)}
    env = make_board(cfg, {"type_1_predator_0": (24, 24, 6.0), **parents})
    before = list(env.agents)
    obs, rewards, *_ = env.step(stay_all(env))
    born = newborns(env, before, obs)
    assert 10 <= len(born) <= 30
    assert sum(reward == 10.0 for reward in rewards.values()) == len(born)


@pytest.mark.parametrize(
    ("parent_at", "blocked", "child_at"),
    [
        ((3, 5), [], (2, 5)),
        ((3, 5), [(2, 5)], (4, 5)),
        ((3, 5), [(2, 5), (4, 5)], (3, 4)),
        ((3, 5), [(2, 5), (4, 5), (3, 4)], (3, 6)),
        ((0, 5), [], (1, 5)),
        ((3, 0), [(2, 0), (4, 0)], (3, 1)),
    ],
    ids=["up", "down", "left", "right", "up-off-grid-so-down", "left-off-grid-so-right"],
)
def test_child_is_born_in_the_first_free_cell_of_up_down_left_right(parent_at, blocked, child_at):
    """The child goes to the first free cell among up (-1, 0), down (+1, 0), left (0, -1), right (0, +1).

    That is the reference's order, which names x its row index.

    Free means no agent of either role: the first blocker is a predator, the others are prey.
    Cells outside the grid are skipped.
    """
    blockers = ["type_2_predator_0", "type_1_prey_1", "type_1_prey_2"]
    agents = {"type_1_predator_0": (*parent_at, 12.0), "type_1_prey_0": (6, 10, 2.0)}
    agents.update({who: (x, y, 2.0) for who, (x, y) in zip(blockers, blocked)})
    env = make_board(small_config(BIRTHS), agents)
    before = list(env.agents)
    obs, *_ = env.step(stay_all(env))
    assert newborns(env, before, obs) == ["type_1_predator_1"]
    assert position(env, "type_1_predator_1") == child_at


def test_child_goes_to_a_random_free_cell_when_all_four_neighbours_are_taken():
    """With up, down, left and right all taken, the child lands on some free cell elsewhere.

    1. Predator parent at (3, 5); a predator and three prey fill (3, 4), (3, 6), (2, 5), (4, 5).
    2. The child is born on a cell that is none of those and holds no other agent.
    """
    neighbours = [(3, 4), (3, 6), (2, 5), (4, 5)]
    blockers = ["type_2_predator_0", "type_1_prey_1", "type_1_prey_2", "type_1_prey_3"]
    agents = {"type_1_predator_0": (3, 5, 12.0), "type_1_prey_0": (6, 10, 2.0)}
    agents.update({who: (x, y, 2.0) for who, (x, y) in zip(blockers, neighbours)})
    env = make_board(small_config(BIRTHS), agents, seed=0)
    taken = {(x, y) for x, y, _ in agents.values()}
    obs, *_ = env.step(stay_all(env))
    child_at = position(env, "type_1_predator_1")
    assert "type_1_predator_1" in obs
    assert child_at not in taken
    assert 0 <= child_at[0] < WIDTH and 0 <= child_at[1] < HEIGHT


def test_child_goes_to_the_only_free_cell_of_a_full_grid():
    """On a 3 x 4 grid with 11 agents the one free cell, (0, 2), is where the child must go."""
    cfg = EnvConfig.model_validate(
        {
            **BIRTHS,
            "width": 3,
            "height": 4,
            "n_grass": 0,
            "obs_range_predator": 3,
            "obs_range_prey": 3,
            "slots": {"type_1_predator": 6, "type_2_predator": 0, "type_1_prey": 6, "type_2_prey": 0},
            "initial_agents": {"type_1_predator": 1, "type_2_predator": 0, "type_1_prey": 1, "type_2_prey": 0},
        }
    )
    cells = [(x, y) for x in range(3) for y in range(4) if (x, y) not in {(1, 1), (0, 2)}]
    occupants = [f"type_1_predator_{i}" for i in range(1, 5)] + [f"type_1_prey_{i}" for i in range(6)]
    agents = {"type_1_predator_0": (1, 1, 12.0)}
    agents.update({who: (x, y, 2.0) for who, (x, y) in zip(occupants, cells, strict=True)})
    env = make_board(cfg, agents)
    env.step(stay_all(env))
    assert position(env, "type_1_predator_5") == (0, 2)
    assert env.state.occupant[PREDATOR, 0, 2] == slot(env, "type_1_predator_5")


def test_child_takes_the_lowest_free_slot_of_its_kind():
    """Slots 0 and 2 of type_1_prey are alive, 1 and 3 free: the child is type_1_prey_1."""
    env = make_board(
        small_config(BIRTHS),
        {"type_1_prey_0": (3, 5, 8.0), "type_1_prey_2": (0, 0, 2.0), "type_1_predator_0": (6, 10, 2.0)},
    )
    before = list(env.agents)
    obs, *_ = env.step(stay_all(env))
    assert newborns(env, before, obs) == ["type_1_prey_1"]


@pytest.mark.parametrize(("reuse_slots", "child"), [(True, "type_1_prey_1"), (False, "type_1_prey_3")])
def test_slot_of_a_dead_agent_is_reused_only_with_reuse_slots(reuse_slots, child):
    """A slot freed by a death takes a later newborn when `reuse_slots` is on; off, it stays closed.

    1. Step 0: type_1_prey_1 (energy 0) starves; the parent, prey_0, is 1 step short of its cooldown.
    2. Step 1: prey_0 reproduces; the lowest open type_1_prey slot is 1 (reuse on) or 3 (off, 2 is alive).
    """
    env = make_board(
        small_config(BIRTHS, reuse_slots=reuse_slots),
        {
            "type_1_prey_0": (3, 5, 8.0),
            "type_1_prey_1": (5, 2, 0.0),
            "type_1_prey_2": (0, 0, 2.0),
            "type_1_predator_0": (6, 10, 2.0),
        },
    )
    env.state.last_reproduction[slot(env, "type_1_prey_0")] = -4
    _, _, terminated, _, _ = env.step(stay_all(env))
    assert terminated["type_1_prey_1"] is True
    before = list(env.agents)
    obs, rewards, terminated, _, _ = env.step(stay_all(env))
    assert newborns(env, before, obs) == [child]
    assert terminated[child] is False
    assert rewards[child] == 0.0


def test_slot_freed_in_this_step_only_reopens_in_the_next():
    """A slot freed by a death is not reused by a birth in the same step, so no step reports two lives under one id.

    1. Step 0: type_1_prey_1 starves and prey_0 reproduces.
    2. The child takes type_1_prey_3 (slot 1 only reopens next step; 2 is alive);
       prey_1 is reported terminated and is not in `agents`.
    """
    env = make_board(
        small_config(BIRTHS),
        {
            "type_1_prey_0": (3, 5, 8.0),
            "type_1_prey_1": (5, 2, 0.0),
            "type_1_prey_2": (0, 0, 2.0),
            "type_1_predator_0": (6, 10, 2.0),
        },
    )
    before = list(env.agents)
    obs, _, terminated, _, _ = env.step(stay_all(env))
    assert newborns(env, before, obs) == ["type_1_prey_3"]
    assert terminated["type_1_prey_1"] is True
    assert "type_1_prey_1" not in env.agents


def test_no_free_slot_rewards_the_parent_but_no_child_is_born():
    """With every child mutating into type_2_predator, which has 0 slots, no child can be born.

    1. Predator with 12.0 (no drain), mutation_rate_predator 1.0, type_2_predator slots 0.
    2. Step 0: reward +10, no new agent, the parent keeps its 12.0.
    3. Quirk (as in the reference): the cooldown does not restart, so +10 comes every step.
    """
    cfg = small_config(
        BIRTHS,
        mutation_rate_predator=1.0,
        slots={"type_1_predator": 4, "type_2_predator": 0, "type_1_prey": 4, "type_2_prey": 2},
    )
    env = make_board(cfg, {"type_1_predator_0": (3, 5, 12.0), "type_1_prey_0": (6, 10, 2.0)})
    parent_rewards = []
    for _ in range(7):
        obs, rewards, *_ = env.step(stay_all(env))
        parent_rewards.append(rewards["type_1_predator_0"])
        assert set(obs) == {"type_1_predator_0", "type_1_prey_0"}
    assert parent_rewards == [10.0] * 7
    assert energy(env, "type_1_predator_0") == 12.0


def test_predator_child_flips_type_with_mutation_rate_1():
    """mutation_rate_predator 1.0: a type_1 predator's child is type_2_predator_0, with a 5 x 5 move range."""
    env = make_board(
        small_config(BIRTHS, mutation_rate_predator=1.0),
        {"type_1_predator_0": (3, 5, 12.0), "type_1_prey_0": (6, 10, 2.0)},
    )
    before = list(env.agents)
    obs, *_ = env.step(stay_all(env))
    assert newborns(env, before, obs) == ["type_2_predator_0"]
    assert env.action_space("type_2_predator_0") == spaces.Discrete(25)


@pytest.mark.parametrize(
    ("quirk", "rate_predator", "rate_prey", "child"),
    [
        (True, 1.0, 0.0, "type_2_prey_0"),
        (True, 0.0, 1.0, "type_1_prey_1"),
        (False, 1.0, 0.0, "type_1_prey_1"),
        (False, 0.0, 1.0, "type_2_prey_0"),
    ],
    ids=["quirk-on-predator-rate-1", "quirk-on-prey-rate-1", "quirk-off-predator-rate-1", "quirk-off-prey-rate-1"],
)
def test_prey_child_mutation_uses_the_predator_rate_while_the_quirk_is_on(quirk, rate_predator, rate_prey, child):
    """Quirk (default on): prey children flip type with mutation_rate_predator; off, with mutation_rate_prey."""
    cfg = small_config(
        BIRTHS,
        quirk_prey_child_uses_predator_mutation_rate=quirk,
        mutation_rate_predator=rate_predator,
        mutation_rate_prey=rate_prey,
    )
    env = make_board(cfg, {"type_1_prey_0": (3, 5, 8.0), "type_1_predator_0": (6, 10, 2.0)})
    before = list(env.agents)
    obs, *_ = env.step(stay_all(env))
    assert newborns(env, before, obs) == [child]


def test_prey_mutation_quirk_is_on_by_default():
    assert EnvConfig().quirk_prey_child_uses_predator_mutation_rate is True


@pytest.mark.parametrize(
    ("parent", "other", "parent_energy", "child", "parent_after", "child_energy"),
    [
        ("type_1_predator_0", "type_1_prey_0", 13.0, "type_1_predator_1", 13.0 - 6.0, 6.0 * 0.9),
        ("type_1_prey_0", "type_1_predator_0", 9.0, "type_1_prey_1", 9.0 - 3.0, 3.0 * 0.9),
    ],
    ids=["predator", "prey"],
)
def test_parent_pays_its_initial_energy_and_the_child_gets_90_percent_of_it(
    parent, other, parent_energy, child, parent_after, child_energy
):
    """Parent energy -= initial energy (6.0 / 3.0); child energy = initial x 0.9 (5.4 / 2.7), shown in its window."""
    env = make_board(small_config(BIRTHS), {parent: (3, 5, parent_energy), other: (6, 10, 2.0)})
    obs, rewards, *_ = env.step(stay_all(env))
    assert energy(env, parent) == exact(parent_after)
    assert energy(env, child) == exact(child_energy)
    centre = obs[child].shape[1] // 2
    channel = 1 if "predator" in child else 2
    assert obs[child][channel, centre, centre] == np.float32(child_energy)
    assert rewards[parent] == 10.0
    assert rewards[child] == 0.0
    assert env.state.age[slot(env, child)] == 0


def test_only_reproduction_is_rewarded_by_default():
    """Default rewards: +10 to a parent, 0 for catching, being caught, grazing, stepping and being born.

    1. Predator P0 catches prey Y0 at (1, 1); prey Y1 grazes at (4, 4); predator P1 (12.0) has a child.
    2. Rewards: P1 10, everyone else (P0, Y0, Y1 and the child P2) 0.
    """
    env = make_board(
        small_config(BIRTHS, reproduction_chance_prey=0.0),
        {
            "type_1_predator_0": (1, 1, 6.0),
            "type_1_prey_0": (1, 1, 3.0),
            "type_1_prey_1": (4, 4, 3.0),
            "type_1_predator_1": (5, 8, 12.0),
        },
        grass={(4, 4): 2.0},
    )
    _, rewards, terminated, _, _ = env.step(stay_all(env))
    assert rewards == {
        "type_1_predator_0": 0.0,
        "type_1_predator_1": 10.0,
        "type_1_predator_2": 0.0,
        "type_1_prey_0": 0.0,
        "type_1_prey_1": 0.0,
    }
    assert terminated["type_1_prey_0"] is True
    assert energy(env, "type_1_predator_0") == exact(6.0 + 2.7)
    assert energy(env, "type_1_prey_1") == exact(3.0 + 1.35)


def test_configured_rewards_are_paid_where_they_say():
    """Non-default rewards add up per agent: step reward + catch / caught / eat / reproduction reward.

    Same board as above, with catch +1, caught -1, eat +0.5, step -0.01 (predator) / +0.01 (prey), reproduction +5.
    """
    cfg = small_config(
        BIRTHS,
        reproduction_chance_prey=0.0,
        catch_reward_predator=1.0,
        caught_reward_prey=-1.0,
        eat_reward_prey=0.5,
        step_reward_predator=-0.01,
        step_reward_prey=0.01,
        reproduction_reward_predator=5.0,
    )
    env = make_board(
        cfg,
        {
            "type_1_predator_0": (1, 1, 6.0),
            "type_1_prey_0": (1, 1, 3.0),
            "type_1_prey_1": (4, 4, 3.0),
            "type_1_predator_1": (5, 8, 12.0),
        },
        grass={(4, 4): 2.0},
    )
    _, rewards, *_ = env.step(stay_all(env))
    assert rewards == {
        "type_1_predator_0": exact(-0.01 + 1.0),
        "type_1_predator_1": exact(-0.01 + 5.0),
        "type_1_predator_2": 0.0,
        "type_1_prey_0": exact(0.01 - 1.0),
        "type_1_prey_1": exact(0.01 + 0.5),
    }


# ---------------------------------------------------------------------------
# End of the episode
# ---------------------------------------------------------------------------


def test_episode_terminates_for_all_when_the_last_prey_is_caught():
    """No prey left: every agent reported in that step is terminated and `agents` is empty."""
    env = make_board(
        small_config(STILL),
        {"type_1_predator_0": (3, 5, 6.0), "type_1_prey_0": (3, 5, 3.0), "type_2_predator_0": (0, 0, 6.0)},
    )
    obs, _, terminated, truncated, _ = env.step(stay_all(env))
    assert terminated == {"type_1_predator_0": True, "type_2_predator_0": True, "type_1_prey_0": True}
    assert truncated == {"type_1_predator_0": False, "type_2_predator_0": False, "type_1_prey_0": False}
    assert set(obs) == set(terminated)
    assert env.agents == []


def test_episode_terminates_for_all_when_the_last_predator_starves():
    """No predator left: the surviving prey are terminated too."""
    env = make_board(
        small_config(),
        {"type_1_predator_0": (3, 5, 0.05), "type_1_prey_0": (0, 0, 3.0), "type_2_prey_0": (6, 10, 3.0)},
    )
    _, _, terminated, _, _ = env.step(stay_all(env))
    assert terminated == {"type_1_predator_0": True, "type_1_prey_0": True, "type_2_prey_0": True}
    assert env.agents == []


def test_truncation_quirk_reports_every_slot_on_the_call_after_max_steps():
    """Quirk (default on): steps 1..max_steps play normally; the next call truncates every possible agent.

    1. max_steps 3: the first three calls report truncated=False and keep the agents.
    2. The fourth call plays no step: all 12 slots are truncated, none terminated, rewards 0;
       live agents get their real window, inactive slots an all-zero one. `agents` becomes empty.
    """
    env = make_board(small_config(STILL, max_steps=3), {"type_1_predator_0": (1, 1, 6.0), "type_2_prey_0": (5, 9, 3.0)})
    assert EnvConfig().quirk_truncate_after_last_step is True
    for _ in range(3):
        _, _, terminated, truncated, _ = env.step(stay_all(env))
        assert truncated == {"type_1_predator_0": False, "type_2_prey_0": False}
        assert env.agents == ["type_1_predator_0", "type_2_prey_0"]
    obs, rewards, terminated, truncated, infos = env.step(stay_all(env))
    every = set(env.possible_agents)
    assert len(every) == 12
    assert set(obs) == set(rewards) == set(terminated) == set(truncated) == set(infos) == every
    assert all(truncated.values()) and not any(terminated.values())
    assert set(rewards.values()) == {0.0}
    assert obs["type_1_predator_0"][1, 3, 3] == 6.0
    assert obs["type_2_prey_0"][2, 4, 4] == 3.0
    for agent in every - {"type_1_predator_0", "type_2_prey_0"}:
        assert obs[agent].shape == env.observation_space(agent).shape
        assert not obs[agent].any()
    assert env.agents == []
    assert env.state.step == 3


def test_without_the_quirk_step_max_steps_truncates_the_live_agents():
    """Quirk off: the max_steps-th step itself truncates the agents alive after it; one dying in it is terminated."""
    env = make_board(
        small_config(STILL, max_steps=3, quirk_truncate_after_last_step=False),
        {"type_1_predator_0": (1, 1, 6.0), "type_2_prey_0": (5, 9, 3.0), "type_1_prey_0": (3, 3, 3.0)},
    )
    for _ in range(2):
        _, _, _, truncated, _ = env.step(stay_all(env))
        assert not any(truncated.values())
    env.state.energy[slot(env, "type_1_prey_0")] = 0.0  # starves in step 3
    obs, _, terminated, truncated, _ = env.step(stay_all(env))
    assert terminated == {"type_1_predator_0": False, "type_1_prey_0": True, "type_2_prey_0": False}
    assert truncated == {"type_1_predator_0": True, "type_1_prey_0": False, "type_2_prey_0": True}
    assert set(obs) == set(terminated)
    assert env.agents == []


# ---------------------------------------------------------------------------
# Observations
# ---------------------------------------------------------------------------


def test_channel_0_marks_cells_outside_the_grid():
    """Channel 0 is 1 outside the 7 x 11 grid, 0 inside.

    1. Predator (7 x 7, h=3) at (0, 0): window rows i < 3 (x < 0) and columns j < 3 (y < 0) are outside.
    2. Prey (9 x 9, h=4) at (6, 10): i >= 5 (x > 6) and j >= 5 (y > 10) are outside.
    3. Prey at (3, 5): only i = 0 (x = -1) and i = 8 (x = 7) are outside; y = 1..9 fit the height 11.
    """
    env = make_board(
        small_config(STILL),
        {"type_1_predator_0": (0, 0, 6.0), "type_1_prey_0": (6, 10, 3.0), "type_1_prey_1": (3, 5, 3.0)},
    )
    obs, *_ = env.step(stay_all(env))
    corner = np.zeros((7, 7), np.float32)
    corner[:3, :] = corner[:, :3] = 1
    far_corner = np.zeros((9, 9), np.float32)
    far_corner[5:, :] = far_corner[:, 5:] = 1
    middle = np.zeros((9, 9), np.float32)
    middle[0, :] = middle[8, :] = 1
    np.testing.assert_array_equal(obs["type_1_predator_0"][0], corner)
    np.testing.assert_array_equal(obs["type_1_prey_0"][0], far_corner)
    np.testing.assert_array_equal(obs["type_1_prey_1"][0], middle)


def test_channels_1_to_3_show_predator_prey_and_grass_energy_at_their_window_positions():
    """Window cell [c, i, j] of an agent at (x, y) shows grid cell (x - h + i, y - h + j).

    Board: predators at (2, 3) with 7.5 and (5, 1) with 6.25, a prey at (4, 4) with 2.5, grass at (1, 5) with 1.25.
    1. Predator at (2, 3), h=3: (5, 1) -> [1, 6, 1], prey -> [2, 5, 4], grass -> [3, 2, 5], itself -> [1, 3, 3].
    2. Prey at (4, 4), h=4: the window index equals the cell, e.g. (2, 3) -> [1, 2, 3].
    """
    env = make_board(
        small_config(STILL),
        {"type_1_predator_0": (2, 3, 7.5), "type_2_predator_0": (5, 1, 6.25), "type_1_prey_0": (4, 4, 2.5)},
        grass={(1, 5): 1.25},
    )
    obs, *_ = env.step(stay_all(env))
    predator = np.zeros((3, 7, 7), np.float32)
    predator[0, 3, 3], predator[0, 6, 1], predator[1, 5, 4], predator[2, 2, 5] = 7.5, 6.25, 2.5, 1.25
    prey = np.zeros((3, 9, 9), np.float32)
    prey[0, 2, 3], prey[0, 5, 1], prey[1, 4, 4], prey[2, 1, 5] = 7.5, 6.25, 2.5, 1.25
    np.testing.assert_array_equal(obs["type_1_predator_0"][1:], predator)
    np.testing.assert_array_equal(obs["type_1_prey_0"][1:], prey)
    assert obs["type_1_prey_0"].dtype == np.float32


@pytest.mark.parametrize("agent_at", [(1, 2), (5, 8), (0, 10), (6, 0)])
def test_window_orientation_over_a_fully_grassed_grid(agent_at):
    """With grass energy (x + 7y) / 128 on every cell, window cell [3, i, j] shows cell (x - h + i, y - h + j)."""
    grid = {(x, y): (x + 7 * y) / 128 for x in range(WIDTH) for y in range(HEIGHT)}
    for role, prey_cell, predator_cell in (("prey", agent_at, (3, 5)), ("predator", (3, 5), agent_at)):
        grass = {cell: e for cell, e in grid.items() if cell != prey_cell}  # the prey would graze its own cell
        env = make_board(
            small_config(STILL),
            {"type_1_prey_0": (*prey_cell, 3.0), "type_1_predator_0": (*predator_cell, 6.0)},
            grass=grass,
        )
        obs, *_ = env.step(stay_all(env))
        window = obs[f"type_1_{role}_0"][3]
        h = window.shape[0] // 2
        x, y = agent_at
        for i in range(window.shape[0]):
            for j in range(window.shape[1]):
                expected = grass.get((x - h + i, y - h + j), 0.0)
                assert window[i, j] == np.float32(expected), f"{role} at {agent_at}: [3, {i}, {j}]"


# ---------------------------------------------------------------------------
# Action validation
# ---------------------------------------------------------------------------


def test_unknown_agent_id_is_rejected():
    env = make_board(small_config(STILL), {"type_1_predator_0": (1, 1, 6.0), "type_1_prey_0": (5, 9, 3.0)})
    with pytest.raises(KeyError, match="type_3_prey_0"):
        env.step({"type_3_prey_0": 0})
    with pytest.raises(KeyError, match="type_1_prey_4"):
        env.step({"type_1_prey_4": 0})  # slots 0..3 only


@pytest.mark.parametrize(
    ("agent", "action", "n"),
    [("type_1_predator_0", 9, 9), ("type_1_predator_0", -1, 9), ("type_2_prey_0", 25, 25)],
)
def test_action_outside_the_agents_discrete_space_is_rejected(agent, action, n):
    env = make_board(small_config(STILL), {"type_1_predator_0": (1, 1, 6.0), "type_2_prey_0": (5, 9, 3.0)})
    with pytest.raises(ValueError, match=rf"action {action} of '{agent}' is outside Discrete\({n}\)"):
        env.step({agent: action})


def test_largest_valid_actions_are_accepted():
    env = make_board(small_config(STILL), {"type_1_predator_0": (1, 1, 6.0), "type_2_prey_0": (1, 7, 3.0)})
    env.step({"type_1_predator_0": 8, "type_2_prey_0": 24})
    assert position(env, "type_1_predator_0") == (2, 2)
    assert position(env, "type_2_prey_0") == (3, 9)


def test_step_before_reset_is_an_error():
    with pytest.raises(RuntimeError, match="reset"):
        PredPreyGrassEnv().step({})


# ---------------------------------------------------------------------------
# Reset, determinism, spaces
# ---------------------------------------------------------------------------


def test_reset_activates_the_first_slots_on_distinct_cells_with_full_grass():
    """Default game, seed 0: slots 0..n-1 of each kind are active, every agent and patch on its own cell."""
    env = PredPreyGrassEnv()
    obs, infos = env.reset(seed=0)
    expected = (
        [f"type_1_predator_{i}" for i in range(12)]
        + [f"type_1_prey_{i}" for i in range(10)]
        + [f"type_2_prey_{i}" for i in range(10)]
    )
    assert env.agents == expected
    assert list(obs) == expected and list(infos) == expected
    state = env.state
    live = state.alive_slots()
    cells = set(zip(state.x[live].tolist(), state.y[live].tolist())) | set(
        zip(state.grass_x.tolist(), state.grass_y.tolist())
    )
    assert len(cells) == 32 + 100
    assert state.grass_energy.tolist() == [2.0] * 100
    assert sorted(set(state.energy[live].tolist())) == [3.0, 6.0]
    assert state.step == 0


def _play(seed: int, steps: int) -> list:
    env = PredPreyGrassEnv()
    trajectory = [env.reset(seed=seed)[0]]
    rng = np.random.default_rng(123)
    for _ in range(steps):
        if not env.agents:
            break
        trajectory.append(env.step(random_actions(env, rng)))
    return trajectory


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def test_same_seed_and_actions_give_the_same_episode():
    """reset(seed) seeds all randomness: two runs with seed 3 and the same 300 action dicts match exactly."""
    first, second = _play(3, 300), _play(3, 300)
    assert len(first) == len(second) > 100
    assert all(_same(a, b) for a, b in zip(first, second))


def test_a_different_seed_gives_a_different_episode():
    assert not _same(_play(3, 0)[0], _play(4, 0)[0])


def test_reset_with_the_same_seed_restarts_the_same_episode():
    env = PredPreyGrassEnv()
    first, _ = env.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        env.step(random_actions(env, rng))
    again, _ = env.reset(seed=5)
    assert _same(first, again)


def test_spaces_have_the_spec_shapes_and_are_the_same_object_every_call():
    env = PredPreyGrassEnv()
    assert len(env.possible_agents) == 50 + 0 + 40 + 40
    assert env.possible_agents[0] == "type_1_predator_0" and env.possible_agents[-1] == "type_2_prey_39"
    for agent in env.possible_agents:
        obs_space, act_space = env.observation_space(agent), env.action_space(agent)
        r_obs = 7 if "predator" in agent else 9
        r_move = 3 if agent.startswith("type_1") else 5
        assert obs_space == spaces.Box(0.0, 100.0, shape=(4, r_obs, r_obs), dtype=np.float32)
        assert act_space == spaces.Discrete(r_move**2)
        assert env.observation_space(agent) is obs_space
        assert env.action_space(agent) is act_space
    small = PredPreyGrassEnv(small_config())
    assert small.observation_space("type_2_predator_1").shape == (4, 7, 7)
    assert small.action_space("type_2_predator_1") == spaces.Discrete(25)
    assert policy_of("type_2_prey_12") == "type_2_prey"
    assert EnvConfig().policies == ("type_1_predator", "type_1_prey", "type_2_prey")
    assert set(small_config().policies) == set(KINDS)


# ---------------------------------------------------------------------------
# PettingZoo contract
# ---------------------------------------------------------------------------


class _SeedShiftedEnv(PredPreyGrassEnv):
    """`parallel_api_test` always resets with seed 0; this env adds `shift` so each test plays its own seed."""

    def __init__(self, shift: int, config=None):
        super().__init__(config)
        self.shift = shift

    def reset(self, seed=None, options=None):
        return super().reset(seed=None if seed is None else seed + self.shift, options=options)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("shift", [0, 1, 2, 3])
def test_pettingzoo_parallel_api_on_the_default_game_without_slot_reuse(shift):
    """PettingZoo's parallel API test passes on the default game with `reuse_slots=False`, 1000 cycles per episode."""
    parallel_api_test(_SeedShiftedEnv(shift, {"reuse_slots": False}), num_cycles=1000)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("quirk", [True, False])
def test_pettingzoo_parallel_api_through_truncation(quirk):
    """The API test also passes when episodes run into truncation, in both truncation modes."""
    config = {"reuse_slots": False, "max_steps": 30, "quirk_truncate_after_last_step": quirk}
    parallel_api_test(_SeedShiftedEnv(0, config), num_cycles=1000)


def test_with_slot_reuse_an_id_can_come_back_after_its_termination():
    """`reuse_slots=True` (the reference rule, default): an id reported terminated can later return as a newborn.

    1. Default game, seed 0, uniformly random actions.
    2. Some prey id is terminated and, later in the same episode, is back in `agents`.
    3. PettingZoo's API test therefore rejects the default game ("agent cannot be revived once dead").
    """
    env = PredPreyGrassEnv()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    finished: set[str] = set()
    revived: set[str] = set()
    while env.agents and not revived:
        _, _, terminated, _, _ = env.step(random_actions(env, rng))
        revived = finished & set(env.agents)
        finished |= {agent for agent, done in terminated.items() if done}
    assert revived, "no id came back within the episode"
    assert all("prey" in agent or "predator" in agent for agent in revived)
    with pytest.raises(AssertionError, match="agent cannot be revived once dead"):
        parallel_api_test(PredPreyGrassEnv(), num_cycles=1000)
