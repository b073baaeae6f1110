"""Sampling speed: env-steps/s per env-runner core, the fast env runner beside RLlib's stock runner and the raw game.

One process, one torch thread (what a remote env runner with one CPU gets), the game
of `configs/reference.yaml` (the default game) with the default model and fresh weights:

1. the raw game (`bench/env_speed.py`'s loop: random actions, no model);
2. `FastEnvRunner` at the shipped number of games per runner (reference.yaml's
   `resources.num_envs_per_env_runner`);
3. RLlib's stock `MultiAgentEnvRunner` with 1 and 4 games.

Each runner samples once to warm up, then `sample()` (one rollout per game) until
`--seconds` have passed; env-steps/s counts the time inside `sample()` only. Target:
the fast runner >= 1,000 env-steps/s (the stock runner was ~75-90 with one game, ~225
with four, on the development machine).

With `--end-to-end`, also one trial as Tune runs it (`PBTPPO`, reference game, default
model, `num_env_runners` 0, `train_batch_size_per_learner` 2000, minibatch 250, 2 epochs),
the fast runner at the shipped games per runner, then the stock runner with one game
(the set-up of the 61 env-steps/s), `--iterations` each after one warm-up iteration: env-steps/s over the
iterations and the share of their time spent sampling (the rest is learning). Target:
>= 2x the stock trial's 61 env-steps/s.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from env_speed import measure as game_speed
from pbt_overhead import machine

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "configs" / "reference.yaml"
TARGET_ENV_STEPS_PER_S = 1000
STOCK_TRIAL_ENV_STEPS_PER_S = 61
TRIAL = ["ppo.train_batch_size_per_learner=2000", "ppo.minibatch_size=250", "ppo.num_epochs=2", "resources.num_env_runners=0"]


def runner_speed(env_runner: str, games: int | None, seconds: float, seed: int) -> dict:
    """Env-steps/s inside `sample()` of one local env runner of `env_runner` kind with `games` games."""
    from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner

    from pbt_job.training.algorithm import build_ppo_config
    from pbt_job.training.config import load_config
    from pbt_job.training.fast_env_runner import FastEnvRunner

    overrides = [f"resources.env_runner={env_runner}", f"pbt.seed={seed}"]
    overrides += [] if games is None else [f"resources.num_envs_per_env_runner={games}"]
    job = load_config(REFERENCE, overrides)
    runner = (FastEnvRunner if env_runner == "fast" else MultiAgentEnvRunner)(config=build_ppo_config(job))
    runner.sample()
    env_steps, spent = 0, 0.0
    while spent < seconds:
        started = time.perf_counter()
        episodes = runner.sample()
        spent += time.perf_counter() - started
        env_steps += sum(episode.env_steps() for episode in episodes)
    runner.stop()
    return {"games": job.resources.num_envs_per_env_runner, "env_steps_per_s": round(env_steps / spent, 1),
            "env_steps": env_steps, "seconds": round(spent, 2)}


def trial_speed(env_runner: str, games: int | None, iterations: int, seed: int) -> dict:
    """One trial's env-steps/s over `iterations` (after a warm-up one), and its share of time in `sample()`."""
    from pbt_job.training.algorithm import PBTPPO, build_ppo_config
    from pbt_job.training.config import load_config

    overrides = [*TRIAL, f"resources.env_runner={env_runner}", f"pbt.seed={seed}"]
    overrides += [] if games is None else [f"resources.num_envs_per_env_runner={games}"]
    job = load_config(REFERENCE, overrides)
    algo = PBTPPO(config=build_ppo_config(job).to_dict())
    runner = algo.env_runner_group.local_env_runner
    sampling = [0.0]
    sample = runner.sample

    def timed_sample(**kwargs):
        started = time.perf_counter()
        try:
            return sample(**kwargs)
        finally:
            sampling[0] += time.perf_counter() - started

    runner.sample = timed_sample
    algo.train()
    sampling[0], env_steps = 0.0, 0
    started = time.perf_counter()
    for _ in range(iterations):
        env_steps += algo.train()["env_runners"]["num_env_steps_sampled"]
    spent = time.perf_counter() - started
    algo.stop()
    return {"games": job.resources.num_envs_per_env_runner, "env_steps_per_s": round(env_steps / spent, 1),
            "sampling_share": round(sampling[0] / spent, 3), "sampling_env_steps_per_s": round(env_steps / sampling[0], 1),
            "iterations": iterations, "seconds": round(spent, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="sampling time per runner")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--end-to-end", action="store_true", help="also one trial, fast and stock")
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations per trial")
    args = parser.parse_args()
    torch.set_num_threads(1)  # Ray gives a 1-CPU actor (a remote runner, a trial) OMP_NUM_THREADS=1
    game = game_speed(args.seconds, args.seed)
    fast = runner_speed("fast", None, args.seconds, args.seed)
    stock = {f"k{games}": runner_speed("stock", games, args.seconds, args.seed) for games in (1, 4)}
    figures = {
        "benchmark": "sampling",
        "game_env_steps_per_s": game["env_steps_per_s"],
        "fast": fast,
        "stock": stock,
        "fast_vs_stock_k1": round(fast["env_steps_per_s"] / stock["k1"]["env_steps_per_s"], 1),
        "fast_vs_stock_k4": round(fast["env_steps_per_s"] / stock["k4"]["env_steps_per_s"], 1),
        "fast_vs_game": round(fast["env_steps_per_s"] / game["env_steps_per_s"], 3),
        "target_env_steps_per_s": TARGET_ENV_STEPS_PER_S,
    }
    if args.end_to_end:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        trials = {kind: trial_speed(kind, games, args.iterations, args.seed) for kind, games in (("fast", None), ("stock", 1))}
        figures["trial"] = {
            **trials,
            "fast_vs_stock": round(trials["fast"]["env_steps_per_s"] / trials["stock"]["env_steps_per_s"], 2),
            "target_env_steps_per_s": 2 * STOCK_TRIAL_ENV_STEPS_PER_S,
        }
    figures["machine"] = machine()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
