"""Text drawing of the board, used only by `PredPreyGrassEnv.render()`."""

from __future__ import annotations

from pbt_job.env.config import EnvConfig
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
