"""What happened in an episode, per agent kind: returns, reproductions, catches, starvation, survivors.

The game reports rewards, not events (its rewards are configurable, so they cannot be
counted back into events). The events are read from the state instead, one step at a
time, by the rules' own marks (`rules.py`):

* a reproduction: a parent, alive before and after the step, whose `last_reproduction`
  is the step just played (only a parent that really had a child restarts it; a newborn
  also carries the mark but was not alive before). Counted for the parent's kind; the
  child's type may have flipped.
* a catch: a prey that died with energy left (starvation is resolved first and takes
  exactly those at energy <= 0). Counted for the kind of the predator on its cell, who
  caught it, and as `caught` for the prey's kind.
* a starvation: any other death.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pbt_job.env.config import KINDS
from pbt_job.env.parallel_env import policy_of
from pbt_job.env.state import EMPTY, PREDATOR, PREY, GameState, SlotLayout


@dataclass
class KindTally:
    """One kind's numbers in one episode."""

    episode_return: float = 0.0
    """The sum of every reward its agents received (RLlib's per-module episode return)."""
    reproductions: int = 0
    catches: int = 0
    """Prey its predators caught (0 for prey kinds)."""
    caught: int = 0
    """Its prey that were caught (0 for predator kinds)."""
    starved: int = 0
    alive_at_start: int = 0
    alive_at_end: int = 0


@dataclass
class EpisodeTally:
    """Counts the events of one episode, fed the state around every step.

    Use: `tally = EpisodeTally.start(state)` after `reset`; per step
    `alive_before = state.alive.copy()`, the game's `step`, then
    `tally.count_step(state, alive_before, rewards)`; at the end `tally.finish(state)`.
    """

    layout: SlotLayout
    kinds: dict[str, KindTally] = field(default_factory=dict)

    @classmethod
    def start(cls, state: GameState) -> EpisodeTally:
        kinds = {kind: KindTally() for kind in KINDS}
        for kind, tally in kinds.items():
            tally.alive_at_start = state.count_alive_of_kind(kind)
        return cls(layout=state.layout, kinds=kinds)

    def count_step(self, state: GameState, alive_before: np.ndarray, rewards: dict[str, float]) -> None:
        """Add one step's rewards (keyed by agent id) and events; a step that left the state
        as it was (the late truncation of `quirk_truncate_after_last_step`) adds its rewards only."""
        layout = self.layout
        for agent, reward in rewards.items():
            self.kinds[policy_of(agent)].episode_return += reward
        played = state.step - 1
        parents = np.flatnonzero(alive_before & state.alive & (state.last_reproduction == played))
        for slot in parents.tolist():
            self._of(slot).reproductions += 1
        for slot in np.flatnonzero(alive_before & ~state.alive).tolist():
            if layout.role[slot] == PREY and state.energy[slot] > 0.0:
                self._of(slot).caught += 1
                hunter = state.occupant[PREDATOR, state.x[slot], state.y[slot]]
                assert hunter != EMPTY, f"prey slot {slot} died with energy left but no predator is on its cell"
                self._of(int(hunter)).catches += 1
            else:
                self._of(slot).starved += 1

    def finish(self, state: GameState) -> dict[str, Any]:
        """The episode's numbers: `length` (steps played) and, per kind with slots, its `KindTally` fields."""
        for kind, tally in self.kinds.items():
            tally.alive_at_end = state.count_alive_of_kind(kind)
        return {
            "length": state.step,
            "kinds": {kind: vars(tally).copy() for kind, tally in self.kinds.items() if self.layout.kind_count[kind]},
        }

    def _of(self, slot: int) -> KindTally:
        return self.kinds[KINDS[int(self.layout.kind[slot])]]

