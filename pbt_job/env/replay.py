"""An episode as an animated GIF a person can watch: one frame per game state, a caption strip below.

Frame k shows the board after step k (frame 0: after `reset`), so an episode of T steps
has T + 1 frames. The caption says the step and, beside a swatch of each kind's colour,
how many of that kind are alive. Every frame uses `render.PALETTE`, so frames are palette
images from the start (no quantising, the same colours in every frame); GIF's LZW then
keeps a 1000-step episode on the 25 x 25 reference board at about 1.5 MB.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pbt_job.env.config import KINDS, EnvConfig
from pbt_job.env.render import KIND_INDEX, PALETTE, STRIP, TEXT, board_indices
from pbt_job.env.state import GameState

FRAME_MS = 50
"""20 steps a second: a 1000-step episode plays in 50 s."""
BOARD_PX = 400
"""The board's longer side is at most this many pixels (cells of 2 to 8 px)."""
MIN_WIDTH_PX = 200
"""Wide enough for the caption: a narrow board is centred on a wider strip."""
STRIP_PX = 28
"""Two caption lines."""


def cell_px(cfg: EnvConfig) -> int:
    """Pixels per cell: 8 on the 25 x 25 reference board, fewer on a large one, never under 2."""
    return max(2, min(8, BOARD_PX // max(cfg.width, cfg.height)))


class Replay:
    """Collects an episode's frames (`add` after reset and after every step) and writes them as a GIF."""

    def __init__(self, cfg: EnvConfig):
        self.cfg = cfg
        self.cell_px = cell_px(cfg)
        self.kinds = [kind for kind in KINDS if cfg.slots.get(kind)]
        self._font = ImageFont.load_default()
        self._frames: list[Image.Image] = []

    def add(self, state: GameState) -> None:
        """One frame of `state` as it is now."""
        board = board_indices(state, self.cfg, self.cell_px)
        height, width = board.shape
        canvas = np.full((height + STRIP_PX, max(width, MIN_WIDTH_PX)), STRIP, dtype=np.uint8)
        left = (canvas.shape[1] - width) // 2
        canvas[:height, left : left + width] = board
        frame = Image.fromarray(canvas, mode="P")
        self._caption(ImageDraw.Draw(frame), state, height)
        self._frames.append(frame)

    def __len__(self) -> int:
        return len(self._frames)

    def gif_bytes(self) -> bytes:
        """The frames as one looping GIF."""
        if not self._frames:
            raise ValueError("a replay needs at least one frame (add the state after reset)")
        palette = PALETTE.flatten().tolist()
        for frame in self._frames:
            frame.putpalette(palette)
        out = io.BytesIO()
        first, *rest = self._frames
        first.save(out, format="GIF", save_all=True, append_images=rest, duration=FRAME_MS, loop=0, optimize=True)
        return out.getvalue()

    def _caption(self, draw: ImageDraw.ImageDraw, state: GameState, top: int) -> None:
        """`step 123 / 1000` above one swatch and living count per kind."""
        draw.text((4, top + 2), f"step {state.step} / {self.cfg.max_steps}", fill=TEXT, font=self._font)
        x, y = 4, top + 15
        for kind in self.kinds:
            draw.rectangle((x, y + 2, x + 7, y + 9), fill=int(KIND_INDEX[KINDS.index(kind)]))
            draw.text((x + 10, y), str(state.count_alive_of_kind(kind)), fill=TEXT, font=self._font)
            x += 46
