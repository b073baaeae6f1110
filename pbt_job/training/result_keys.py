"""Names across the Tune boundary: YAML setting names vs Tune config keys, metric paths in results.

No Ray import, so that readers of a run folder (`pbt-job report`) start in a second.
"""

from __future__ import annotations

from typing import Any

TUNE_KEYS = {"lambda": "lambda", "train_batch_size_per_learner": "_train_batch_size_per_learner"}
"""YAML name -> key in `AlgorithmConfig.to_dict()` (what Tune mutates); other names are equal."""


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
    return float(node) if isinstance(node, (int, float)) else None
