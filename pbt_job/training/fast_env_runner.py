"""An RLlib env runner that samples the game with one forward pass per policy and step.

RLlib's `MultiAgentEnvRunner` sends every step through its env-to-module and
module-to-env connector pipelines, which split the observations per agent, batch
them per module, and split the actions per agent again, and it logs four metric
values per agent and step. On this game that bookkeeping cost ~25x the game itself.

`FastEnvRunner` keeps the stock runner's games (`num_envs_per_env_runner` of them),
episodes, callbacks, metrics, state and checkpoints, and replaces only the sampling
loop: at each step it stacks the living agents' observations of all its games per
policy, runs each RLModule's `action_logits` once (what `forward_exploration` and
`forward_inference` compute, under `torch.inference_mode` with one torch thread), draws
the actions from the Categorical over the logits (argmax when not exploring), and
records what PPO's learner reads
(`action_dist_inputs`, and `action_logp` when exploring). Sample counts are logged
once per `sample()` call instead of per agent step. The episodes it returns are
RLlib's own `MultiAgentEpisode`s, one single-agent episode per life, so RLlib's
Learner, GAE and episode metrics take them unchanged.

Unlike the stock runner, a game whose episode ended is reset at once rather than
on the next vector step; the episodes are the same (the same seeds: the first
reset of game `i` gets the runner's seed + `i`, later resets continue its generator).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode
from ray.rllib.utils.metrics import (
    NUM_AGENT_STEPS_SAMPLED,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_EPISODES,
    NUM_EPISODES_LIFETIME,
    NUM_MODULE_STEPS_SAMPLED,
    NUM_MODULE_STEPS_SAMPLED_LIFETIME,
    WEIGHTS_SEQ_NO,
)

from pbt_job.training.model import torch_threads
from pbt_job.training.ray_compat import add_env_step_unchecked
from pbt_job.training.rllib_env import RLlibPredPreyGrass, policy_mapping_fn

def draw_actions(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One action per row from the Categorical over `logits`, and its log-probability.

    An inverse-CDF draw (one uniform per row from torch's generator, which RLlib seeds):
    `torch.multinomial`, which RLlib's Categorical uses, cost ~1 ms per call on these
    small batches.
    """
    log_probs = torch.log_softmax(logits, -1)
    below = log_probs.exp().cumsum(-1) < torch.rand(len(logits), 1, device=logits.device)
    chosen = below.sum(-1, keepdim=True).clamp_(max=logits.shape[-1] - 1)
    return chosen.squeeze(-1), log_probs.gather(-1, chosen).squeeze(-1)


class FastEnvRunner(MultiAgentEnvRunner):
    """`MultiAgentEnvRunner` with a batched sampling loop for `RLlibPredPreyGrass` (see module docstring)."""

    def _sample(
        self,
        *,
        num_timesteps: int | None = None,
        num_episodes: int | None = None,
        explore: bool,
        random_actions: bool = False,
        force_reset: bool = False,
    ) -> list[MultiAgentEpisode]:
        if random_actions:
            raise ValueError("FastEnvRunner samples with the RLModule only; use resources.env_runner: stock for random actions")
        if force_reset or num_episodes is not None or self._needs_initial_reset:
            self._reset_envs_and_episodes(explore)
        if num_episodes is not None:
            self._needs_initial_reset = True
        games = self._games()
        done: list[MultiAgentEpisode] = []
        tally = _SampleTally()
        with torch_threads(1), torch.inference_mode():
            while (tally.episodes < num_episodes) if num_timesteps is None else (tally.env_steps < num_timesteps):
                self._step_games(games, explore, done, tally)
        tally.log(self)
        self._done_episodes_for_metrics.extend(done)
        if num_timesteps is None:
            return done
        return done + self._cut_ongoing_episodes()

    def _reset_envs(self, episodes: list, shared_data: dict, explore: bool) -> None:
        """Reset every game and start its episode, without the env-to-module pipeline this loop does not use."""
        self._ongoing_episodes_for_metrics.clear()
        self._policy_of: dict[str, str] = {}
        seed = self._seed if self._needs_initial_reset else None
        self._acting = []
        for index, game in enumerate(self._games()):
            self._new_episode(index, episodes)
            observations, infos = game.reset(seed=None if seed is None else seed + index)
            episodes[index].add_env_reset(observations=observations, infos=infos)
            self._acting.append(observations)
            self._make_on_episode_callback("on_episode_start", index, episodes)

    def _games(self) -> list[RLlibPredPreyGrass]:
        return [env.unwrapped for env in self.env.envs]

    def _step_games(self, games: list[RLlibPredPreyGrass], explore: bool, done: list, tally: _SampleTally) -> None:
        """One step of every game: one forward pass per policy over all their living agents."""
        episodes = self._ongoing_episodes
        actions, outputs = self._act(self._acting, explore)
        for index, game in enumerate(games):
            observations, rewards, terminateds, truncateds, infos = game.step(actions[index])
            episode = episodes[index]
            add_env_step_unchecked(
                episode,
                observations=observations,
                actions=actions[index],
                rewards=rewards,
                infos=infos,
                terminateds=terminateds,
                truncateds=truncateds,
                extra_model_outputs=outputs[index],
            )
            tally.count_step(observations)
            self._acting[index] = {
                agent: obs for agent, obs in observations.items() if not (terminateds[agent] or truncateds[agent])
            }
            self._make_on_episode_callback("on_episode_step", index, episodes)
            if episode.is_done:
                tally.episodes += 1
                self._make_on_episode_callback("on_episode_end", index, episodes)
                episode.validate()
                self._prune_zero_len_sa_episodes(episode)
                done.append(episode.to_numpy() if self.episodes_to_numpy else episode)
                self._new_episode(index, episodes)
                observations, infos = game.reset()
                episodes[index].add_env_reset(observations=observations, infos=infos)
                self._acting[index] = observations
                self._make_on_episode_callback("on_episode_start", index, episodes)

    def _act(self, acting: list[dict[str, np.ndarray]], explore: bool) -> tuple[list[dict], list[dict]]:
        """Actions and extra model outputs per game and agent, from one forward pass per policy.

        Args:
            acting: Per game, the observations of the agents that act next (alive, not done).
        """
        rows: dict[str, list[tuple[int, str, np.ndarray]]] = {}
        policy_of = self._policy_of
        for index, observations in enumerate(acting):
            for agent, obs in observations.items():
                policy = policy_of.get(agent)
                if policy is None:
                    policy = policy_of[agent] = policy_mapping_fn(agent)
                rows.setdefault(policy, []).append((index, agent, obs))
        actions: list[dict] = [{} for _ in acting]
        outputs: list[dict] = [{} for _ in acting]
        seq_no = self._weights_seq_no
        for module_id, members in rows.items():
            obs = np.stack([obs for _, _, obs in members])
            chosen, logits, logp = self._forward(module_id, obs, explore)
            for row, (index, agent, _) in enumerate(members):
                actions[index][agent] = chosen[row]
                extra = {Columns.ACTION_DIST_INPUTS: logits[row], WEIGHTS_SEQ_NO: seq_no}
                if logp is not None:
                    extra[Columns.ACTION_LOGP] = logp[row]
                outputs[index][agent] = extra
        return actions, outputs

    def _forward(self, module_id: str, obs: np.ndarray, explore: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Actions, logits and (when exploring) log-probabilities for a batch of one policy's observations."""
        logits = self.module[module_id].action_logits(torch.from_numpy(obs).to(self._device))
        if not explore:
            return logits.argmax(-1).cpu().numpy(), logits.cpu().numpy(), None
        chosen, logp = draw_actions(logits)
        return chosen.cpu().numpy(), logits.cpu().numpy(), logp.cpu().numpy()

    def _cut_ongoing_episodes(self) -> list[MultiAgentEpisode]:
        """The stock runner's chunk end: return the ongoing episodes' chunks and continue in their cuts."""
        chunks = []
        continuations = [episode.cut(len_lookback_buffer=self.config.episode_lookback_horizon) for episode in self._ongoing_episodes]
        for episode in self._ongoing_episodes:
            if episode.env_t == 0:
                continue
            episode.validate()
            self._ongoing_episodes_for_metrics[episode.id_].append(episode)
            self._prune_zero_len_sa_episodes(episode)
            chunks.append(episode.to_numpy() if self.episodes_to_numpy else episode)
        self._ongoing_episodes = continuations
        return chunks


class _SampleTally:
    """Env, agent and module steps and finished episodes of one `sample()` call, logged once at its end."""

    def __init__(self) -> None:
        self.env_steps = 0
        self.episodes = 0
        self.agent_steps: Counter[str] = Counter()

    def count_step(self, observations: dict[str, Any]) -> None:
        self.env_steps += 1
        self.agent_steps.update(observations.keys())

    def log(self, runner: FastEnvRunner) -> None:
        metrics = runner.metrics
        if self.env_steps:
            runner._log_env_steps(metric=runner._metrics_num_env_steps_sampled, num_steps=self.env_steps)
        metrics.log_value(NUM_ENV_STEPS_SAMPLED, self.env_steps, reduce="sum")
        metrics.log_value(NUM_ENV_STEPS_SAMPLED_LIFETIME, self.env_steps, reduce="lifetime_sum", with_throughput=True)
        if self.episodes:
            metrics.log_value(NUM_EPISODES, self.episodes, reduce="sum")
            metrics.log_value(NUM_EPISODES_LIFETIME, self.episodes, reduce="lifetime_sum")
        modules: Counter[str] = Counter()
        for agent, steps in self.agent_steps.items():
            metrics.log_value((NUM_AGENT_STEPS_SAMPLED, agent), steps, reduce="sum")
            metrics.log_value((NUM_AGENT_STEPS_SAMPLED_LIFETIME, agent), steps, reduce="lifetime_sum")
            modules[policy_mapping_fn(agent)] += steps
        for module_id, steps in modules.items():
            metrics.log_value((NUM_MODULE_STEPS_SAMPLED, module_id), steps, reduce="sum")
            metrics.log_value((NUM_MODULE_STEPS_SAMPLED_LIFETIME, module_id), steps, reduce="lifetime_sum")
