"""The PBT metric: an episode return that is defined from the first iteration.

RLlib's `env_runners/episode_return_mean` averages only the episodes that ended in
the current iteration, and is NaN when none did. Episodes of this game last up
to 1000 steps, so early iterations often finish none; PBT drops NaN scores from
its ranking and would exploit at random. `pbt_score` is therefore:

* the mean return of the episodes that ended in the last `window` iterations
  (a sliding window, weighted by episode count), when there is at least one;
* otherwise the reward per env step of this iteration's samples times the
  game's `max_steps`: the return of an episode that lasted to truncation at
  the current reward rate (0 when nothing was sampled).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback

REWARD_SUM_KEY = "pbt_reward_sum"
ENV_STEPS_KEY = "pbt_env_steps"


class SampledRewardCallback(RLlibCallback):
    """Sums every sampled reward and env step (finished episodes or not) per iteration."""

    def on_sample_end(self, *, env_runner: Any = None, metrics_logger: Any = None, samples: Any = None, **kwargs: Any):
        rewards = sum(episode.get_return() for episode in samples)
        steps = sum(episode.env_steps() for episode in samples)
        metrics_logger.log_value(REWARD_SUM_KEY, rewards, reduce="sum")
        metrics_logger.log_value(ENV_STEPS_KEY, steps, reduce="sum")


class EpisodeReturnScore:
    """Sliding-window episode return with a per-step fallback (see module docstring).

    Args:
        max_steps: The game's episode length cap, which scales the fallback.
        window: Iterations whose finished episodes the score averages. Must be >= 1.
    """

    def __init__(self, max_steps: int, window: int = 10):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        self.max_steps = max_steps
        self._episodes: deque[tuple[float, int]] = deque(maxlen=window)

    def update(self, env_runners: dict[str, Any]) -> float:
        """Fold in one iteration's `result["env_runners"]` and return the score."""
        count = env_runners.get("num_episodes", 0)  # Ray 2.60 reports NaN, not 0, in some iterations
        count = int(count) if _finite(count) else 0
        mean = env_runners.get("episode_return_mean", math.nan)
        self._episodes.append((float(mean) * count, count) if count > 0 and _finite(mean) else (0.0, 0))
        episodes = sum(n for _, n in self._episodes)
        if episodes:
            return sum(total for total, _ in self._episodes) / episodes
        steps = env_runners.get(ENV_STEPS_KEY, 0) or 0
        rewards = env_runners.get(REWARD_SUM_KEY, 0.0) or 0.0
        return float(rewards) / steps * self.max_steps if steps and _finite(rewards) else 0.0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)

