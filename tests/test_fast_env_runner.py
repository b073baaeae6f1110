"""The fast env runner samples what RLlib's stock runner samples, and trains as a remote runner.

The fast runner replaces the stock runner's per-agent connector pipelines with one
batched forward pass per policy; these tests hold it to the stock runner's output
life by life (same seeds, same weights, the deterministic policy), and run it inside
a remote env runner of a real PPO training.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import ray
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner

from conftest import REPO
from pbt_job.result_keys import SCORE_KEY
from pbt_job.training.algorithm import PBTPPO, build_ppo_config
from pbt_job.training.config import ConfigError, load_config
from pbt_job.training.fast_env_runner import FastEnvRunner, draw_actions
from pbt_job.training.rllib_env import RLlibPredPreyGrass

TINY = REPO / "tests" / "data" / "tiny.yaml"
GRAZING = REPO / "tests" / "data" / "grazing.yaml"


def runner(cls: type, games: int, seed: int = 0) -> MultiAgentEnvRunner:
    """A local env runner on the grazing board (prey breed into freed slots, so lives get suffixed ids)."""
    job = load_config(GRAZING, [f"resources.num_envs_per_env_runner={games}", f"pbt.seed={seed}"])
    return cls(config=build_ppo_config(job))


def lives(episodes: list) -> dict[tuple, dict]:
    """Per episode (keyed by its first observations) and life: what the learner reads."""
    found = {}
    for episode in episodes:
        start = tuple(sorted((agent, sa.get_observations(0).tobytes()) for agent, sa in episode.agent_episodes.items()
                             if sa.t_started == 0))
        for agent, sa in episode.agent_episodes.items():
            found[(hash(start), agent)] = {
                "observations": np.asarray(sa.get_observations()),
                "actions": np.asarray(sa.get_actions()),
                "rewards": np.asarray(sa.get_rewards()),
                "logits": np.asarray(sa.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS)),
                "terminated": sa.is_terminated,
                "truncated": sa.is_truncated,
                "module": sa.module_id,
            }
    return found


@pytest.mark.parametrize("games", [1, 3])
def test_fast_runner_samples_what_the_stock_runner_samples(games):
    """Same seeds and weights, deterministic policy: every life has the same observations,
    actions, rewards, logits and done flags on both runners, over several episodes per game
    (resets that continue the game's generator) and lives with suffixed ids."""
    stock, fast = runner(MultiAgentEnvRunner, games), runner(FastEnvRunner, games)
    fast.module.set_state(stock.module.get_state())
    expected = lives(stock.sample(num_episodes=2 * games, explore=False))
    got = lives(fast.sample(num_episodes=2 * games, explore=False))
    assert any("." in agent for _, agent in expected), "no life with a suffixed id was sampled"
    assert got.keys() == expected.keys()
    for key, life in expected.items():
        for field in ("observations", "actions", "rewards"):
            np.testing.assert_array_equal(got[key][field], life[field], err_msg=f"{field} of {key[1]}")
        np.testing.assert_allclose(got[key]["logits"], life["logits"], rtol=1e-5, atol=1e-6, err_msg=str(key[1]))
        for field in ("terminated", "truncated", "module"):
            assert got[key][field] == life[field], f"{field} of {key[1]}"


def test_fast_runner_records_the_log_probability_of_the_sampled_action():
    """Exploring, each step's `action_logp` is the log-softmax of its logits at the action taken."""
    fast = runner(FastEnvRunner, games=2)
    episodes = fast.sample(num_timesteps=40, explore=True)
    checked = 0
    for episode in episodes:
        for sa in episode.agent_episodes.values():
            logits = np.asarray(sa.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS))
            logp = np.asarray(sa.get_extra_model_outputs(Columns.ACTION_LOGP))
            log_softmax = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
            actions = np.asarray(sa.get_actions())
            np.testing.assert_allclose(logp, log_softmax[np.arange(len(actions)), actions], rtol=1e-4, atol=1e-5)
            checked += len(actions)
    assert checked > 0


def test_drawn_actions_follow_the_categorical_distribution():
    """20,000 draws from fixed logits: each action's frequency is within 0.01 of its probability
    (4 standard errors at most), zero-probability actions never come, and the log-probability is the action's."""
    torch.manual_seed(0)
    probabilities = torch.tensor([0.1, 0.0, 0.2, 0.7])
    logits = torch.log(probabilities).expand(20_000, 4) + 3.0
    actions, logp = draw_actions(logits)
    frequencies = torch.bincount(actions, minlength=4) / len(actions)
    assert torch.allclose(frequencies, probabilities, atol=0.01), frequencies
    assert torch.allclose(logp, torch.log(probabilities)[actions])


def test_env_runner_choice_is_validated():
    with pytest.raises(ConfigError, match="resources.env_runner"):
        load_config(TINY, ["resources.env_runner=fastest"])


@pytest.mark.slow
def test_fast_runner_trains_as_a_remote_env_runner(ray_start_2_cpus):
    """A real PPO training with one remote env runner of two games: the remote runner is the
    fast one, and the results carry RLlib's episode metrics per policy and `pbt_score`."""
    job = load_config(GRAZING, ["resources.num_env_runners=1", "resources.num_envs_per_env_runner=2",
                                "resources.num_cpus_per_env_runner=0.5", "ppo.num_epochs=2"])
    config = build_ppo_config(job).to_dict()
    member = ray.remote(num_cpus=job.resources.num_cpus_per_trial)(PBTPPO).remote(config={**config, "seed": 0})
    try:
        results = [ray.get(member.train.remote()) for _ in range(3)]
        classes = ray.get(member.__ray_call__.remote(
            lambda algo: algo.env_runner_group.foreach_env_runner(lambda r: type(r).__name__, local_env_runner=False)))
    finally:
        ray.get(member.stop.remote())
        ray.kill(member)
    assert classes == ["FastEnvRunner"]
    last = results[-1]
    runners = last["env_runners"]
    assert runners["num_episodes_lifetime"] > 0
    assert math.isfinite(runners["episode_return_mean"]) and runners["episode_return_mean"] > 0, runners
    assert set(runners["module_episode_returns_mean"]) == set(job.env.policies)
    assert set(runners["num_module_steps_sampled"]) == set(job.env.policies)
    assert math.isfinite(last[SCORE_KEY])


def test_the_adapter_plays_actions_in_slot_order_whatever_the_dict_order():
    """RLlib's stock runner orders the action dict by string hashing; the game moves agents in dict
    order, so the adapter must sort: the same seed and moves given in reverse give the same game."""
    config = load_config(GRAZING).env.model_dump(mode="json")
    forward, backward = RLlibPredPreyGrass(config), RLlibPredPreyGrass(config)
    obs, _ = forward.reset(seed=5)
    backward.reset(seed=5)
    rng = np.random.default_rng(0)
    living = list(obs)
    for _ in range(25):
        actions = {agent: int(rng.integers(forward.get_action_space(agent).n)) for agent in living}
        obs, rewards, terminateds, truncateds, _ = forward.step(actions)
        mirrored, mirrored_rewards, *_ = backward.step(dict(reversed(actions.items())))
        assert obs.keys() == mirrored.keys() and rewards == mirrored_rewards
        for agent, window in obs.items():
            np.testing.assert_array_equal(window, mirrored[agent], err_msg=agent)
        living = [agent for agent in obs if not (terminateds[agent] or truncateds[agent])]
        if not living:
            break
