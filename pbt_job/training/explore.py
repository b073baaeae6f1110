"""PBT search space: Tune domains for the mutations and the constraints explore must keep.

Pure helpers on plain dicts (no running Ray needed), so tests can check them directly.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ray import tune

from pbt_job.result_keys import tune_key
from pbt_job.training.config import INTEGER_SETTINGS, Mutation, PBTConfig

def tune_domain(name: str, mutation: Mutation) -> tune.search.sample.Domain:
    """The Tune domain the initial population is drawn from."""
    if mutation.type == "choice":
        return tune.choice(_choices(name, mutation))
    if mutation.type == "uniform":
        return tune.uniform(mutation.low, mutation.high)
    if mutation.type == "loguniform":
        return tune.loguniform(mutation.low, mutation.high)
    return tune.randint(int(mutation.low), int(mutation.high) + 1)


def _choices(name: str, mutation: Mutation) -> list[float]:
    return [int(v) for v in mutation.values] if name in INTEGER_SETTINGS else list(mutation.values)


def initial_space(pbt: PBTConfig) -> dict[str, tune.search.sample.Domain]:
    """Tune keys -> domains for drawing the population's starting points."""
    return {tune_key(name): tune_domain(name, m) for name, m in pbt.mutations.items()}


def pbt_mutations(pbt: PBTConfig) -> dict[str, Any]:
    """Tune keys -> `hyperparam_mutations`.

    Choices are given as plain lists: Tune then explores by moving to a
    neighbouring value (a `tune.choice` domain would be multiplied by 0.8/1.2 and
    leave the set). Ranges stay domains: resampled, or scaled then clamped by
    `explore_fixups`.
    """
    return {
        tune_key(name): _choices(name, m) if m.type == "choice" else tune_domain(name, m)
        for name, m in pbt.mutations.items()
    }


def pb2_bounds(pbt: PBTConfig) -> dict[str, list[float]]:
    """Tune keys -> `[low, high]` for PB2, which searches continuous boxes (choices: their span)."""
    return {tune_key(name): list(m.bounds()) for name, m in pbt.mutations.items()}


def explore_fixups(config: dict[str, Any], pbt: PBTConfig) -> dict[str, Any]:
    """Restore the constraints a perturbation may break; only mutated settings change.

    `config` uses Tune keys.

    * Range mutations are clamped into [low, high] (Tune's 0.8/1.2 scaling can leave them);
      under PB2, which proposes any value in a choice's span, choices snap to the nearest value.
    * When a batch size is mutated: minibatch <= max_train_batch_size / 2, then
      2 x minibatch <= train batch <= max_train_batch_size.
    * When num_epochs is mutated: min_epochs <= num_epochs <= max_epochs.
    Mutated integer settings are integers afterwards.
    """
    fixed = dict(config)
    mutated = {tune_key(name) for name in pbt.mutations}
    for name, mutation in pbt.mutations.items():
        key = tune_key(name)
        if key not in fixed:
            continue
        if mutation.type == "choice":
            fixed[key] = min(mutation.values, key=lambda value: abs(value - fixed[key]))
        else:
            fixed[key] = min(max(fixed[key], mutation.low), mutation.high)
        if name in INTEGER_SETTINGS:
            fixed[key] = int(round(fixed[key]))
    train_key = tune_key("train_batch_size_per_learner")
    if {"minibatch_size", train_key} & mutated and {"minibatch_size", train_key} <= fixed.keys():
        fixed["minibatch_size"] = max(1, min(fixed["minibatch_size"], pbt.max_train_batch_size // 2))
        fixed[train_key] = min(max(fixed[train_key], 2 * fixed["minibatch_size"]), pbt.max_train_batch_size)
    if "num_epochs" in mutated and "num_epochs" in fixed:
        fixed["num_epochs"] = min(max(fixed["num_epochs"], pbt.min_epochs), pbt.max_epochs)
    return fixed


def explore_fn(pbt: PBTConfig):
    """`custom_explore_fn` for Tune's PBT, bound to the job's PBT settings."""
    return partial(explore_fixups, pbt=pbt)
