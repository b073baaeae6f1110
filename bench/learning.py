"""Does the population learn, and does PBT help? Trained vs random vs initial policies, PBT vs no perturbation.

Measured in one process, one run after the other, on one `ray.init(num_cpus=2)`, both
through `pbt_job.training.run.train` (the job a user runs) and both evaluated with
`pbt_job.training.evaluate.evaluate` (what `pbt-job evaluate` runs):

1. `--config` (default `configs/quick.yaml`: 13 x 11 board, 3 trials on 2 cores) with
   its perturbation interval and mutations, every trial trained for `--budget` env steps
   (a number of iterations: each samples `ppo.train_batch_size_per_learner` env steps),
   all checkpoints kept (the `initial` set needs each trial's iteration-1 checkpoint).
2. The same population with a perturbation interval no trial reaches: the same
   `pbt.seed`, so the same initial hyperparameters and RLlib seeds, the same budget,
   no exploit.

Each run's best trial (`best/`) plays `--episodes` episodes per set (trained, initial:
the iteration-1 policies of its ancestry's root, random moves), episode i from seed i in
every set and both runs, so every comparison is paired: besides each set's mean and 95%
CI, the verdicts give the 95% CI of the per-episode differences (trained - random,
trained - initial, PBT - no PBT), Student's t as `evaluate` computes its intervals.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from pbt_overhead import NEVER, REPO, machine

DEFAULT_CONFIG = REPO / "configs" / "quick.yaml"
DEFAULT_BUDGET = 61_440
"""Env steps per trial: 120 quick.yaml iterations; both runs and their evaluation take ~30 min on a quiet 2-core machine
(~235 env steps/s for the population; PBT samples ~12% more than the budget: a recipient goes on from its donor's
iteration, which can be behind its own)."""
SMOKE_BUDGET = 2_048
SHOWN_COUNTS = ("catches", "reproductions", "caught", "starved")


def job_configs(config: Path, budget: int) -> tuple[Any, Any]:
    """The PBT job from `config`, stopped after the iterations that sample `budget` env steps, and its copy
    without perturbation."""
    import yaml

    from pbt_job.training.config import JobConfig

    data = yaml.safe_load(config.read_text())
    iterations = math.ceil(budget / data["ppo"]["train_batch_size_per_learner"])
    data.update(metrics_port=0, stop={"training_iteration": iterations})
    data["checkpoints"] = {**data.get("checkpoints", {}), "num_to_keep": None}
    pbt = JobConfig.model_validate(data)
    # `JobConfig` refuses an interval that no iteration reaches (a user meaning PBT would get none);
    # here that is the point, so the copy skips the check.
    plain = pbt.model_copy(update={"pbt": pbt.pbt.model_copy(update={"perturbation_interval": NEVER})})
    return pbt, plain


def train_and_evaluate(job: Any, folder: str, name: str, episodes: int, greedy: bool) -> dict[str, Any]:
    """One `train` of `job` into `folder/name`, then `evaluate` of its best trial."""
    from pbt_job.storage import parse_storage_uri
    from pbt_job.training.evaluate import evaluate
    from pbt_job.training.run import train

    started = time.perf_counter()
    with load_sampled() as load:
        outcome = train(job, parse_storage_uri(folder), name, resume="never")
    trained = time.perf_counter()
    numbers = evaluate(str(Path(folder, name)), episodes=episodes, greedy=greedy)
    summary = outcome.summary
    return {
        "iterations": job.stop.training_iteration,
        "env_steps_per_trial": sorted(t["env_steps_total"] for t in summary["trials"].values()),
        "env_steps_total": summary["env_steps_total"],
        "train_wall_s": round(trained - started, 1),
        "evaluate_wall_s": round(time.perf_counter() - trained, 1),
        "load_average_1m": load,
        "exploits": summary["exploits"], "skipped_exploits": summary["skipped_exploits"], "errors": outcome.errors,
        "best_trial": summary["best_trial"], "best_metric": summary["best_metric"],
        "best_hyperparameters": summary["best_hyperparameters"],
        "evaluation": numbers,
    }


@contextlib.contextmanager
def load_sampled(every_s: float = 10.0) -> Iterator[dict[str, float]]:
    """The 1-minute load average sampled while the block runs: filled in with mean and max when it ends."""
    samples, done = [], threading.Event()

    def sample() -> None:
        while not done.wait(every_s):
            samples.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    figures: dict[str, float] = {}
    try:
        yield figures
    finally:
        done.set()
        sampler.join()
        if samples:
            figures.update(mean=round(sum(samples) / len(samples), 2), max=round(max(samples), 2))


def per_policy(arm: dict[str, Any]) -> dict[str, Any]:
    """Per policy and set: mean return with its 95% CI, and the mean counts."""
    numbers = arm["evaluation"]
    table: dict[str, Any] = {}
    for policy in numbers["policies"]:
        table[policy] = {}
        for name, entry in numbers["sets"].items():
            if not entry["available"]:
                table[policy][name] = {"available": False, "why": entry["source"]}
                continue
            row = entry["per_policy"][policy]
            table[policy][name] = {"return": _rounded(row["episode_return"]),
                                   **{count: round(row[count]["mean"], 2) for count in SHOWN_COUNTS}}
    return table


def returns(arm: dict[str, Any], set_name: str, policy: str) -> list[float] | None:
    entry = arm["evaluation"]["sets"][set_name]
    return [e["kinds"][policy]["episode_return"] for e in entry["per_episode"]] if entry["available"] else None


def compared(better: list[float] | None, worse: list[float] | None) -> dict[str, Any] | None:
    """Paired per-episode difference `better - worse`: mean, 95% CI, and whether the CI lies above 0;
    also whether the two sets' own CIs are apart."""
    from pbt_job.training.evaluate import interval

    if better is None or worse is None:
        return None
    difference = interval([b - w for b, w in zip(better, worse)])
    own = interval(better)["ci95"], interval(worse)["ci95"]
    return {
        "difference": _rounded(difference),
        "paired_ci_above_zero": difference["ci95"] is not None and difference["ci95"][0] > 0,
        "paired_ci_below_zero": difference["ci95"] is not None and difference["ci95"][1] < 0,
        "own_cis_separated": None not in own and own[0][0] > own[1][1],
    }


def verdicts(pbt: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for policy in pbt["evaluation"]["policies"]:
        found[policy] = {
            **{f"{arm}_trained_vs_{baseline}": compared(returns(run, "trained", policy), returns(run, baseline, policy))
               for arm, run in (("pbt", pbt), ("no_pbt", plain)) for baseline in ("random", "initial")},
            "pbt_vs_no_pbt_trained": compared(returns(pbt, "trained", policy), returns(plain, "trained", policy)),
        }
    return found


def _rounded(value: dict[str, Any]) -> dict[str, Any]:
    ci = value["ci95"]
    return {"mean": round(value["mean"], 3), "ci95": None if ci is None else [round(ci[0], 3), round(ci[1], 3)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="env steps per trial")
    parser.add_argument("--episodes", type=int, default=30, help="evaluation episodes per set")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the job's YAML (its stop is replaced)")
    parser.add_argument("--greedy", action="store_true", help="evaluate with argmax actions instead of sampled")
    parser.add_argument("--out", help="keep the two run folders (and their evaluation/) here; default: a temp dir")
    parser.add_argument("--smoke", action="store_true", help=f"check the script end to end: --budget {SMOKE_BUDGET}, "
                                                              "--episodes 3")
    args = parser.parse_args()
    if args.smoke:
        args.budget, args.episodes = SMOKE_BUDGET, 3
    pbt_job, plain_job = job_configs(args.config, args.budget)

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        folder = args.out or stack.enter_context(tempfile.TemporaryDirectory())
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))  # Tune prints tables
        pbt = train_and_evaluate(pbt_job, folder, "pbt", args.episodes, args.greedy)
        plain = train_and_evaluate(plain_job, folder, "no_pbt", args.episodes, args.greedy)
    figures = {
        "benchmark": "learning",
        "settings": {**vars(args), "config": str(args.config),
                     "actions": pbt["evaluation"]["actions"], "population": pbt_job.pbt.population,
                     "perturbation_interval": pbt_job.pbt.perturbation_interval,
                     "env_steps_per_iteration": pbt_job.ppo.train_batch_size_per_learner},
        "total_wall_s": round(time.perf_counter() - started, 1),
        "runs": {name: {key: value for key, value in arm.items() if key != "evaluation"}
                 for name, arm in (("pbt", pbt), ("no_pbt", plain))},
        "returns": {"pbt": per_policy(pbt), "no_pbt": per_policy(plain)},
        "verdicts": verdicts(pbt, plain),
        "machine": machine(),
    }
    print(json.dumps(figures))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
