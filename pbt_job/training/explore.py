"""PBT search space: Tune domains for the mutations and the constraints explore must keep.

Pure helpers on plain dicts (no running Ray needed), so tests can check them directly.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ray import tune

from pbt_job.training.config import INTEGER_SETTINGS, Mutation, PBTConfig

TUNE_KEYS = {"lambda": "lambda", "train_batch_size_per_learner": "_train_batch_size_per_learner"}
"""YAML name -> key in `AlgorithmConfig.to_dict()` (what Tune mutates); other names are equal."""


def tune_key(name: str) -> str:
    return TUNE_KEYS.get(name, name)


def yaml_name(key: str) -> str:
    return {v: k for k, v in TUNE_KEYS.items()}.get(key, key)


def tune_domain(name: str, mutation: Mutation) -> tune.search.sample.Domain:
    """The Tune domain PBT samples from (and the initial population is drawn from)."""
    if mutation.type == "choice":
        values = [int(v) for v in mutation.values] if name in INTEGER_SETTINGS else list(mutation.values)
        return tune.choice(values)
    if mutation.type == "uniform":
        return tune.uniform(mutation.low, mutation.high)
    if mutation.type == "loguniform":
        return tune.loguniform(mutation.low, mutation.high)
    return tune.randint(int(mutation.low), int(mutation.high) + 1)


def mutation_space(pbt: PBTConfig) -> dict[str, tune.search.sample.Domain]:
    return {tune_key(name): tune_domain(name, m) for name, m in pbt.mutations.items()}


def explore_fixups(config: dict[str, Any], *, max_train_batch_size: int, min_epochs: int, max_epochs: int) -> dict:
    """Restore the constraints a perturbation may break; `config` uses Tune keys.

    Keeps minibatch <= max_train_batch_size / 2, then
    2 x minibatch <= train batch <= max_train_batch_size, and
    min_epochs <= num_epochs <= max_epochs. Values are integers afterwards.
    """
    fixed = dict(config)
    train_key = tune_key("train_batch_size_per_learner")
    if "minibatch_size" in fixed:
        fixed["minibatch_size"] = max(1, min(int(fixed["minibatch_size"]), max_train_batch_size // 2))
    if train_key in fixed:
        floor = 2 * fixed.get("minibatch_size", 1)
        fixed[train_key] = min(max(int(fixed[train_key]), floor), max_train_batch_size)
    if "num_epochs" in fixed:
        fixed["num_epochs"] = min(max(int(round(fixed["num_epochs"])), min_epochs), max_epochs)
    return fixed


def explore_fn(pbt: PBTConfig):
    """`custom_explore_fn` for Tune's PBT, bound to the configured limits."""
    return partial(
        explore_fixups,
        max_train_batch_size=pbt.max_train_batch_size,
        min_epochs=pbt.min_epochs,
        max_epochs=pbt.max_epochs,
    )
