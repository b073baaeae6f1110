"""The game's state as numpy arrays, and the observation windows cut from it.

One row per agent slot (every id in `possible_agents`), one grid per role holding
the slot index of the agent on each cell (or -1), and one grid holding the index
of the grass patch on each cell (or -1). Grids are indexed `[x, y]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pbt_job.env.config import KINDS, EnvConfig

PREDATOR, PREY = 0, 1
EMPTY = -1


def kind_role(kind: str) -> int:
    return PREDATOR if kind.endswith("predator") else PREY


def kind_type(kind: str) -> int:
    return int(kind.split("_")[1])


def kind_of(type_: int, role: int) -> str:
    return f"type_{type_}_{'predator' if role == PREDATOR else 'prey'}"


@dataclass
class SlotLayout:
    """Which slot indices belong to which kind; fixed for a configuration."""

    agent_ids: list[str]
    kind_offset: dict[str, int]
    kind_count: dict[str, int]
    kind: np.ndarray  # int8, index into KINDS
    role: np.ndarray  # int8, PREDATOR or PREY
    type_: np.ndarray  # int8, 1 or 2
    move_range: np.ndarray  # int64, side of the square move range

    @classmethod
    def from_config(cls, cfg: EnvConfig) -> SlotLayout:
        ids, offsets, counts, kinds, roles, types, ranges = [], {}, {}, [], [], [], []
        for k, kind in enumerate(KINDS):
            offsets[kind] = len(ids)
            counts[kind] = cfg.slots.get(kind)
            ids += [f"{kind}_{i}" for i in range(counts[kind])]
            kinds += [k] * counts[kind]
            roles += [kind_role(kind)] * counts[kind]
            types += [kind_type(kind)] * counts[kind]
            move = cfg.move_range_type_1 if kind_type(kind) == 1 else cfg.move_range_type_2
            ranges += [move] * counts[kind]
        return cls(
            agent_ids=ids,
            kind_offset=offsets,
            kind_count=counts,
            kind=np.array(kinds, dtype=np.int8),
            role=np.array(roles, dtype=np.int8),
            type_=np.array(types, dtype=np.int8),
            move_range=np.array(ranges, dtype=np.int64),
        )


@dataclass
class GameState:
    """Everything that changes during an episode."""

    layout: SlotLayout
    alive: np.ndarray  # bool per slot
    x: np.ndarray  # int64 per slot
    y: np.ndarray  # int64 per slot
    energy: np.ndarray  # float64 per slot
    age: np.ndarray  # int64 per slot
    last_reproduction: np.ndarray  # int64 per slot: step of the last child (or birth)
    closed: np.ndarray  # bool per slot: may not take a newborn before the next reset
    occupant: np.ndarray  # int64 (2, width, height): slot per role and cell, or EMPTY
    grass_x: np.ndarray  # int64 per patch
    grass_y: np.ndarray  # int64 per patch
    grass_energy: np.ndarray  # float64 per patch
    grass_at: np.ndarray  # int64 (width, height): patch per cell, or EMPTY
    step: int = 0

    @classmethod
    def empty(cls, cfg: EnvConfig, layout: SlotLayout) -> GameState:
        """A board with no agents and no grass; `place` and `add_grass` fill it."""
        n = len(layout.agent_ids)
        return cls(
            layout=layout,
            alive=np.zeros(n, dtype=bool),
            x=np.zeros(n, dtype=np.int64),
            y=np.zeros(n, dtype=np.int64),
            energy=np.zeros(n, dtype=np.float64),
            age=np.zeros(n, dtype=np.int64),
            last_reproduction=np.full(n, -cfg.reproduction_cooldown_steps, dtype=np.int64),
            closed=np.zeros(n, dtype=bool),
            occupant=np.full((2, cfg.width, cfg.height), EMPTY, dtype=np.int64),
            grass_x=np.zeros(0, dtype=np.int64),
            grass_y=np.zeros(0, dtype=np.int64),
            grass_energy=np.zeros(0, dtype=np.float64),
            grass_at=np.full((cfg.width, cfg.height), EMPTY, dtype=np.int64),
        )

    def place(self, slot: int, x: int, y: int, energy: float) -> None:
        """Make `slot` alive at (x, y); the cell must be free for its role."""
        role = self.layout.role[slot]
        assert self.occupant[role, x, y] == EMPTY, f"cell ({x}, {y}) already holds a {role=} agent"
        self.alive[slot] = True
        self.x[slot], self.y[slot] = x, y
        self.energy[slot] = energy
        self.age[slot] = 0
        self.occupant[role, x, y] = slot

    def remove(self, slot: int) -> None:
        self.alive[slot] = False
        self.occupant[self.layout.role[slot], self.x[slot], self.y[slot]] = EMPTY

    def add_grass(self, xs: np.ndarray, ys: np.ndarray, energy: float) -> None:
        self.grass_x, self.grass_y = xs.astype(np.int64), ys.astype(np.int64)
        self.grass_energy = np.full(len(xs), energy, dtype=np.float64)
        self.grass_at[:] = EMPTY
        self.grass_at[self.grass_x, self.grass_y] = np.arange(len(xs))

    def lowest_free_slot(self, kind: str, unavailable: np.ndarray | None = None) -> int | None:
        """The lowest slot of `kind` that is not alive and not `unavailable` (default: `closed`)."""
        unavailable = self.closed if unavailable is None else unavailable
        start = self.layout.kind_offset[kind]
        span = slice(start, start + self.layout.kind_count[kind])
        free = np.flatnonzero(~self.alive[span] & ~unavailable[span])
        return int(start + free[0]) if len(free) else None

    def alive_slots(self) -> np.ndarray:
        return np.flatnonzero(self.alive)

    def count_alive(self, role: int) -> int:
        return int(np.count_nonzero(self.alive & (self.layout.role == role)))

    def count_alive_of_kind(self, kind: str) -> int:
        start = self.layout.kind_offset[kind]
        return int(np.count_nonzero(self.alive[start : start + self.layout.kind_count[kind]]))


class ObservationWindows:
    """Cuts every agent's observation window from one padded grid.

    Channel 0 marks cells outside the grid, channels 1-3 hold predator, prey and
    grass energy. Window cell `[c, i, j]` of an agent at (x, y) shows grid cell
    (x - h + i, y - h + j) with h = (R - 1) // 2.
    """

    def __init__(self, cfg: EnvConfig):
        self.ranges = {PREDATOR: cfg.obs_range_predator, PREY: cfg.obs_range_prey}
        self.pad = max(self.ranges.values()) // 2
        p = self.pad
        self.grid = np.zeros((4, cfg.width + 2 * p, cfg.height + 2 * p), dtype=np.float32)
        self.grid[0] = 1.0
        self.grid[0, p : p + cfg.width, p : p + cfg.height] = 0.0
        self.interior = self.grid[1:, p : p + cfg.width, p : p + cfg.height]
        self.views = {
            role: np.lib.stride_tricks.sliding_window_view(self.grid, (r, r), axis=(1, 2))
            for role, r in self.ranges.items()
        }

    def cut(self, state: GameState, slots: np.ndarray) -> dict[int, np.ndarray]:
        """Return `{role: array (n_role, 4, R, R)}` for `slots`, each role's rows in slot order."""
        self.interior.fill(0.0)
        live = state.alive_slots()
        roles = state.layout.role[live]
        for role in (PREDATOR, PREY):
            mine = live[roles == role]
            self.interior[role, state.x[mine], state.y[mine]] = state.energy[mine]
        self.interior[2, state.grass_x, state.grass_y] = state.grass_energy
        windows = {}
        slot_roles = state.layout.role[slots]
        for role, view in self.views.items():
            mine = slots[slot_roles == role]
            offset = self.pad - self.ranges[role] // 2
            cut = view[:, state.x[mine] + offset, state.y[mine] + offset]
            windows[role] = np.ascontiguousarray(cut.transpose(1, 0, 2, 3))  # channels after rows
        return windows
