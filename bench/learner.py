"""Learner speed: one trial's PPO update, `GridPPOLearner` beside RLlib's stock learner and the bare arithmetic.

One process, one torch thread (a trial's CPU), the trial of `sampling.py --end-to-end`
(reference game, default model, `train_batch_size_per_learner` 2000, minibatch 250,
2 epochs): the fast env runner samples a train batch and drops it (the trial's warm-up
iteration: the populations grow in the first hundreds of steps, and with them the batch),
then samples the measured one (2,000 env steps, ~50,000-60,000 agent steps over three
policies); each learner updates from copies of the same episodes `--repeats` times, in turns:

1. RLlib's `PPOTorchLearner` with its own NaN checks (`torch_skip_nan_gradients` off) and
   GAE's value pass in one call per policy (the set-up before `GridPPOLearner`);
2. `GridPPOLearner` (`pbt_job/training/learner.py`), as the trial runs it;
3. the floor: the same number of minibatch updates as bare torch (forward of the three
   modules on 250 observations each, a loss of the same inputs, backward, Adam), plus one
   value forward over the whole batch under `no_grad` (what GAE needs), no RLlib.

Figures are wall and CPU seconds per update (median over the repeats) and the wall
time's env-steps/s equivalent (2,000 / seconds). The trial reaches 2x the issue's 61
env-steps/s (122) only if the learner takes at most ~14 s per iteration beside ~2 s of
sampling at 1,000 env-steps/s; the floor says how close RLlib's update can get. The batch
differs from run to run (the sampled games are not reproducible yet: 50,000-57,000 agent
steps, 160-250 minibatch updates): compare the figures of one run.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import numpy as np
import torch

from pbt_job.training import model
from pbt_overhead import machine
from sampling import REFERENCE, TRIAL

TRIAL_TARGET_ENV_STEPS_PER_S = 122
ONE_PASS = 1 << 40
"""A `VALUE_CHUNK` no batch reaches: GAE's value pass as RLlib makes it, one call per policy."""


def clocks() -> tuple[float, float]:
    """Wall and process CPU seconds: on a machine others load, the CPU time of this one-thread
    process is the steadier figure (wall time counts the waits for a core)."""
    return time.perf_counter(), time.process_time()


def since(started: tuple[float, float]) -> tuple[float, float]:
    return tuple(now - then for now, then in zip(clocks(), started))


def sample_train_batch(config, env_steps: int, dropped: int) -> tuple[list, dict]:
    """Episodes of at least `env_steps` env steps from one fast env runner (as `synchronous_parallel_sample`
    gathers them) after `dropped` such batches, and the runner's spaces per module."""
    from pbt_job.training.fast_env_runner import FastEnvRunner

    runner = FastEnvRunner(config=config)
    for _ in range(dropped + 1):
        episodes: list = []
        while sum(episode.env_steps() for episode in episodes) < env_steps:
            episodes += runner.sample()
    spaces = runner.get_spaces()
    runner.stop()
    return episodes, spaces


def update(learner, episodes: list, config, value_chunk: int) -> tuple[tuple[float, float], dict]:
    """Seconds of one `Learner.update` from a copy of `episodes` (its connector extends them in place),
    the model's value pass in chunks of `value_chunk` observations."""
    episodes = copy.deepcopy(episodes)
    shipped, model.VALUE_CHUNK = model.VALUE_CHUNK, value_chunk
    started = clocks()
    try:
        results = learner.update(episodes=episodes, timesteps={}, num_epochs=config.num_epochs,
                                 minibatch_size=config.minibatch_size, shuffle_batch_per_epoch=True)
    finally:
        model.VALUE_CHUNK = shipped
    return since(started), results


def bare_update(modules: dict, observations: dict, minibatches: int, minibatch_size: int) -> tuple[float, float]:
    """Seconds of the floor: one no-grad value pass over every observation (chunked as `compute_values`
    does), then `minibatches` forward/backward/Adam steps of all modules on consecutive slices of a
    shuffled copy of each module's observations (RLlib's minibatches are such slices)."""
    optimizers = [torch.optim.Adam(module.parameters()) for module in modules.values()]
    generator = torch.Generator().manual_seed(0)
    started = clocks()
    with torch.no_grad():
        for module_id, module in modules.items():
            module.compute_values({"obs": observations[module_id]})
    shuffled = {module_id: obs[torch.randperm(len(obs), generator=generator)] for module_id, obs in observations.items()}
    for step in range(minibatches):
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for module_id, module in modules.items():
            obs = shuffled[module_id]
            start = step * minibatch_size % (len(obs) - minibatch_size)
            out = module._forward_train({"obs": obs[start:start + minibatch_size]})
            values = module.compute_values({}, embeddings=out["embeddings"])
            loss = loss + out["action_dist_inputs"].logsumexp(-1).mean() + values.square().mean()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
    return since(started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed updates per learner")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropped", type=int, default=1, help="train batches sampled and dropped before the measured one")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner

    from pbt_job.training.algorithm import build_ppo_config
    from pbt_job.training.config import load_config

    job = load_config(REFERENCE, [*TRIAL, "resources.env_runner=fast", f"pbt.seed={args.seed}"])
    grid_config = build_ppo_config(job)
    stock_config = build_ppo_config(job).learners(learner_class=PPOTorchLearner).framework(torch_skip_nan_gradients=False)
    episodes, spaces = sample_train_batch(grid_config, grid_config.train_batch_size_per_learner, args.dropped)
    learners = {name: config.build_learner(spaces=spaces) for name, config in (("stock", stock_config), ("grid", grid_config))}
    learners["grid"].module.set_state(learners["stock"].module.get_state())
    stock = learners["stock"]
    observations = {module_id: torch.as_tensor(np.concatenate([
        np.asarray(episode.get_observations(slice(0, len(episode))))
        for multi in episodes for episode in multi.agent_episodes.values() if episode.module_id == module_id]))
        for module_id in stock.module.keys()}
    modules = {module_id: copy.deepcopy(stock.module[module_id]) for module_id in stock.module.keys()}
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in (*learners, "floor")}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name, learner in learners.items():
            np.random.seed(args.seed + repeat)
            spent, results = update(learner, episodes, grid_config, ONE_PASS if name == "stock" else model.VALUE_CHUNK)
            seconds[name].append(spent)
        trained = [results[module_id]["num_module_steps_trained"].peek() for module_id in stock.module.keys()]
        minibatches = round(max(trained) / grid_config.minibatch_size)
        seconds["floor"].append(bare_update(modules, observations, minibatches, grid_config.minibatch_size))
    env_steps = sum(episode.env_steps() for episode in episodes)
    wall = {name: statistics.median(spent[0] for spent in values[1:]) for name, values in seconds.items()}
    cpu = {name: statistics.median(spent[1] for spent in values[1:]) for name, values in seconds.items()}
    print(json.dumps({
        "benchmark": "learner",
        "env_steps": env_steps,
        "agent_steps": sum(episode.agent_steps() for episode in episodes),
        "minibatch_updates": minibatches,
        "seconds_per_update": {name: round(value, 2) for name, value in wall.items()},
        "cpu_seconds_per_update": {name: round(value, 2) for name, value in cpu.items()},
        "env_steps_per_s_equivalent": {name: round(env_steps / value, 1) for name, value in wall.items()},
        "grid_vs_stock": round(wall["stock"] / wall["grid"], 3),
        "grid_vs_floor": round(wall["grid"] / wall["floor"], 3),
        "cpu_grid_vs_stock": round(cpu["stock"] / cpu["grid"], 3),
        "cpu_grid_vs_floor": round(cpu["grid"] / cpu["floor"], 3),
        "trial_target_env_steps_per_s": TRIAL_TARGET_ENV_STEPS_PER_S,
        "machine": machine(),
    }))


if __name__ == "__main__":
    main()
