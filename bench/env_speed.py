"""Speed of the predator-prey-grass game: agent-steps/s at the default configuration.

One process, uniformly random actions (drawn in bulk from one numpy generator), the
default (reference) game, resetting whenever an episode ends. Prints one JSON line.
The reference implementation runs 2,100-3,000 agent-steps/s on a 2-vCPU machine;
the target is >= 50,000 (20x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from pbt_job.env import PredPreyGrassEnv

REFERENCE_AGENT_STEPS_PER_S = (2100, 3000)
TARGET_AGENT_STEPS_PER_S = 50_000


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__}


def measure(seconds: float, seed: int) -> dict:
    env = PredPreyGrassEnv()
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    n_actions = {agent: env.action_space(agent).n for agent in env.possible_agents}
    env_steps = agent_steps = episodes = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        agents = env.agents
        draws = rng.random(len(agents))
        env.step({agent: int(draw * n_actions[agent]) for agent, draw in zip(agents, draws)})
        env_steps += 1
        agent_steps += len(agents)
        if not env.agents:
            episodes += 1
            env.reset()
    elapsed = time.perf_counter() - started
    return {
        "agent_steps_per_s": round(agent_steps / elapsed),
        "env_steps_per_s": round(env_steps / elapsed, 1),
        "mean_agents_alive": round(agent_steps / env_steps, 2),
        "episodes": episodes,
        "env_steps": env_steps,
        "seconds": round(elapsed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    figures = measure(args.seconds, args.seed)
    figures.update(
        benchmark="env_speed",
        reference_agent_steps_per_s=REFERENCE_AGENT_STEPS_PER_S,
        target_agent_steps_per_s=TARGET_AGENT_STEPS_PER_S,
        speedup_vs_reference_max=round(figures["agent_steps_per_s"] / REFERENCE_AGENT_STEPS_PER_S[1], 1),
        machine=machine(),
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
