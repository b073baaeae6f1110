"""Names across the Tune boundary: YAML setting names vs Tune config keys, metric paths in results.

Shared by training (which writes results and configs) and `pbt-job report` (which
reads them back from a run folder). No Ray import, so that readers of a run folder
start in a second.
"""

from __future__ import annotations

import sys
from typing import Any

SCORE_KEY = "pbt_score"
"""Result key of the default PBT metric (`pbt.metric`), see `pbt_job.training.score`."""
ENV_STEPS_PER_S_KEY = "env_steps_per_s"
AGENT_STEPS_PER_S_KEY = "agent_steps_per_s"
EPISODE_KEYS = ("env_runners/episode_return_mean", "env_runners/episode_len_mean")
"""RLlib's per-iteration episode means; absent from an iteration in which no episode ended,
so pbt-job's results carry them as NaN then (PBT ranks a NaN score last)."""
MODULE_RETURN_PREFIX = "env_runners/module_episode_returns_mean/"
"""+ a policy name: that policy's mean episode return (NaN likewise)."""


def metric_names(policies: tuple[str, ...]) -> list[str]:
    """The result keys every result carries from the first iteration: what `pbt.metric` may name."""
    return [SCORE_KEY, ENV_STEPS_PER_S_KEY, AGENT_STEPS_PER_S_KEY, *EPISODE_KEYS,
            *(MODULE_RETURN_PREFIX + policy for policy in policies)]

TUNE_KEYS = {"lambda": "lambda", "train_batch_size_per_learner": "_train_batch_size_per_learner"}
"""YAML name -> key in `AlgorithmConfig.to_dict()` (what Tune mutates, and what `result.json`'s
`config` holds); other names are equal.

Quirk: `_train_batch_size_per_learner` is a private attribute of RLlib's `AlgorithmConfig`
(the public `train_batch_size_per_learner` is a property over it), and `to_dict()` emits the
private name, which `update_from_dict` reads back. A private RLlib name, kept here rather
than in `pbt_job/training/ray_compat.py` because `pbt-job report` reads it from `result.json`
without importing Ray; `tests/test_ray_compat.py` checks it."""


def tune_key(name: str) -> str:
    return TUNE_KEYS.get(name, name)


def yaml_name(key: str) -> str:
    return {v: k for k, v in TUNE_KEYS.items()}.get(key, key)


def metric_value(result: dict[str, Any], dotted: str) -> float | None:
    """`result["a"]["b"]` for the metric name `a/b` (Tune's flattened key), if it is a number."""
    node: Any = result
    for part in dotted.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if not isinstance(node, (int, float)) or (isinstance(node, int) and abs(node) > sys.float_info.max):
        return None  # not a number, or an integer no float holds (a file's 10**400)
    return float(node)
