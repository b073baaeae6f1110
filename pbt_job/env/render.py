"""Drawings of the board: text for `PredPreyGrassEnv.render()`, pictures for a replay (`replay.py`)."""

from __future__ import annotations

import numpy as np

from pbt_job.env.config import KINDS, EnvConfig
from pbt_job.env.state import EMPTY, PREDATOR, PREY, GameState

_PREDATOR_MARK = {1: "X", 2: "Y"}
_PREY_MARK = {1: "o", 2: "a"}


def render_ansi(state: GameState, cfg: EnvConfig) -> str:
    """One character per cell, rows along y: predator X/Y (type 1/2), else prey o/a, else grass `,` (`.` if eaten)."""
    rows = []
    for y in range(cfg.height):
        row = []
        for x in range(cfg.width):
            predator, prey, grass = state.occupant[PREDATOR, x, y], state.occupant[PREY, x, y], state.grass_at[x, y]
            if predator != EMPTY:
                row.append(_PREDATOR_MARK[int(state.layout.type_[predator])])
            elif prey != EMPTY:
                row.append(_PREY_MARK[int(state.layout.type_[prey])])
            elif grass != EMPTY:
                row.append("," if state.grass_energy[grass] > 0 else ".")
            else:
                row.append(" ")
        rows.append("".join(row))
    return "\n".join(rows) + f"\nstep {state.step}\n"


# Pictures: one palette for every frame, so a replay is a palette GIF without quantising.
SOIL = 0
GRASS_LEVELS = 8
"""Palette entries 1..8: grass from just eaten (dim) to full (bright green)."""
KIND_COLOUR = dict(zip(KINDS, [(230, 40, 40), (200, 0, 220), (40, 110, 255), (255, 220, 0)]))
"""Red and purple predators (type 1, 2), blue and yellow prey: apart from each other and from the greens."""
TEXT, STRIP = len(KIND_COLOUR) + GRASS_LEVELS + 1, len(KIND_COLOUR) + GRASS_LEVELS + 2
PALETTE = np.array(
    [(60, 45, 30)]
    + [(40, 60 + (180 * level) // (GRASS_LEVELS - 1), 30) for level in range(GRASS_LEVELS)]
    + list(KIND_COLOUR.values())
    + [(255, 255, 255), (20, 20, 20)],
    dtype=np.uint8,
)
"""RGB per palette index: soil, the grass levels, the kinds in `KIND_COLOUR` order, text, caption strip."""
KIND_INDEX = np.arange(len(KINDS), dtype=np.uint8) + 1 + GRASS_LEVELS
"""Palette index per kind, indexed like `SlotLayout.kind`."""


def board_indices(state: GameState, cfg: EnvConfig, cell_px: int) -> np.ndarray:
    """The board as palette indices, `cell_px` pixels a cell, rows along y (as `render_ansi`).

    Grass fills its cell, in a green as bright as its energy; an agent is a square of its
    kind's colour, a prey one pixel smaller on each side (cells of 4 px and more) so the
    grass it stands on shows; a predator is drawn over a prey (after a step they share a
    cell only at a catch, and the prey is then gone).

    Returns:
        uint8 array (height * cell_px, width * cell_px) of `PALETTE` indices.
    """
    cells = np.full((cfg.width, cfg.height), SOIL, dtype=np.uint8)
    level = np.rint(state.grass_energy / cfg.max_energy_grass * (GRASS_LEVELS - 1)).astype(np.uint8)
    cells[state.grass_x, state.grass_y] = 1 + np.clip(level, 0, GRASS_LEVELS - 1)
    image = np.kron(cells.T, np.ones((cell_px, cell_px), dtype=np.uint8))
    margin = 1 if cell_px >= 4 else 0
    for role, inset in ((PREY, margin), (PREDATOR, 0)):
        agents = np.zeros((cfg.width, cfg.height), dtype=np.uint8)
        slots = state.occupant[role]
        placed = slots != EMPTY
        agents[placed] = KIND_INDEX[state.layout.kind[slots[placed]]]
        tile = np.zeros((cell_px, cell_px), dtype=bool)
        tile[inset : cell_px - inset, inset : cell_px - inset] = True
        scaled = np.kron(agents.T, np.ones((cell_px, cell_px), dtype=np.uint8))
        drawn = (scaled != 0) & np.tile(tile, (cfg.height, cfg.width))
        image[drawn] = scaled[drawn]
    return image


def render_rgb(state: GameState, cfg: EnvConfig, cell_px: int) -> np.ndarray:
    """The board as an RGB picture (height * cell_px, width * cell_px, 3), uint8; see `board_indices`."""
    return PALETTE[board_indices(state, cfg, cell_px)]

