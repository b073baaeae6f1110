"""An RLlib env runner that samples the game with one forward pass per policy and step.

RLlib's `MultiAgentEnvRunner` sends every step through its env-to-module and
module-to-env connector pipelines, which split the observations per agent, batch
them per module, and split the actions per agent again, and it logs four metric
values per agent and step. On this game that bookkeeping cost ~25x the game itself.

`FastEnvRunner` keeps the stock runner's games (`num_envs_per_env_runner` of them),
episodes, callbacks, metrics, state and checkpoints, and replaces only the sampling
loop, which keeps each game's agents as slot arrays: at each step it stacks the acting
agents' observation windows of all its games per policy (the game cuts them per role in
one gather, and a policy's rows are a block of its role's), runs each policy's
`action_logits` once (what `forward_exploration` and `forward_inference` compute; on CPU
through `PrepackedLogits`, under `torch.inference_mode` with one torch thread), draws the
actions from the Categorical over the logits (argmax when not exploring), and steps each
game with arrays (`RLlibPredPreyGrass.step_slots`). It records what PPO's learner reads
(`action_dist_inputs`, and `action_logp` when exploring) with `add_plain_env_step`, which
appends to the episode's buffers what RLlib's `add_env_step` would, without its per-step
dicts and branches (an episode's last step, with its `__all__` flags, goes through
`add_env_step` itself). Sample counts are logged once per `sample()` call instead of per
agent step. The episodes it returns are RLlib's own `MultiAgentEpisode`s, one
single-agent episode per life, so RLlib's Learner, GAE and episode metrics take them
unchanged.

Unlike the stock runner, a game whose episode ended is reset at once rather than
on the next vector step; the episodes are the same (the same seeds: the first
reset of game `i` gets the runner's seed + `i`, later resets continue its generator).
"""

from __future__ import annotations

from collections import Counter

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

from pbt_job.env import KINDS
from pbt_job.env.parallel_env import SlotStep
from pbt_job.env.state import PREDATOR, PREY, SlotLayout, kind_role
from pbt_job.training.model import inference_logits, torch_threads
from pbt_job.training.ray_compat import add_env_step_unchecked, add_plain_env_step
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
            self._logits = {module_id: inference_logits(self.module[module_id], self._device) for module_id in self.module.keys()}
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
        seed = self._seed if self._needs_initial_reset else None
        games = self._games()
        self._acting: list[_Acting | None] = [None] * len(games)
        for index, game in enumerate(games):
            self._start_episode(index, game, episodes, seed=None if seed is None else seed + index)

    def _start_episode(self, index: int, game: RLlibPredPreyGrass, episodes: list, seed: int | None = None) -> None:
        """Reset game `index` into a new episode and note who acts first."""
        self._new_episode(index, episodes)
        observations, infos = game.reset(seed=seed)
        episodes[index].add_env_reset(observations=observations, infos=infos)
        living = game.game.state.alive_slots()
        self._acting[index] = _Acting(living, game.game.observe_slots(living))
        self._make_on_episode_callback("on_episode_start", index, episodes)

    def _games(self) -> list[RLlibPredPreyGrass]:
        return [env.unwrapped for env in self.env.envs]

    def _step_games(self, games: list[RLlibPredPreyGrass], explore: bool, done: list, tally: _SampleTally) -> None:
        """One step of every game: one forward pass per policy over all their living agents."""
        episodes = self._ongoing_episodes
        layout = games[0].game.layout
        moves, outputs = self._act(layout, explore)
        seq_no = self._weights_seq_no
        for index, game in enumerate(games):
            acting = self._acting[index]
            played, lives, terminated, truncated = game.step_slots(acting.slots, moves[index])
            logits, logp = outputs[index]
            if logp is None:
                extras = [{Columns.ACTION_DIST_INPUTS: row, WEIGHTS_SEQ_NO: seq_no} for row in logits]
            else:
                extras = [{Columns.ACTION_DIST_INPUTS: row, WEIGHTS_SEQ_NO: seq_no, Columns.ACTION_LOGP: p}
                          for row, p in zip(logits, logp)]
            columns = _step_columns(layout, acting, played, moves[index], extras)
            episode = episodes[index]
            if terminated or truncated:
                add_env_step_unchecked(episode, **_as_dicts(lives, columns, terminated, truncated))
            else:
                add_plain_env_step(episode, lives, *columns)
            tally.count_step(lives)
            self._acting[index] = _Acting.after(played, layout)
            self._make_on_episode_callback("on_episode_step", index, episodes)
            if episode.is_done:
                tally.episodes += 1
                self._make_on_episode_callback("on_episode_end", index, episodes)
                episode.validate()
                self._prune_zero_len_sa_episodes(episode)
                done.append(episode.to_numpy() if self.episodes_to_numpy else episode)
                self._start_episode(index, game, episodes)

    def _act(self, layout: SlotLayout, explore: bool) -> tuple[list[np.ndarray], list[tuple[list, list | None]]]:
        """Per game, the moves of its acting slots and their logits and log-probabilities (None when not
        exploring), in slot order, from one forward pass per policy over all games."""
        blocks = [acting.blocks(layout) for acting in self._acting]
        per_kind = {}
        for kind in KINDS:
            rows = [block[kind] for block in blocks if kind in block]
            if rows:
                per_kind[kind] = self._forward(kind, np.concatenate(rows) if len(rows) > 1 else rows[0], explore)
        moves, outputs = [], []
        start = dict.fromkeys(per_kind, 0)
        for block in blocks:
            chosen, logits, logp = [], [], []
            for kind, rows in block.items():
                begin, start[kind] = start[kind], start[kind] + len(rows)
                kind_chosen, kind_logits, kind_logp = per_kind[kind]
                chosen.append(kind_chosen[begin : start[kind]])
                logits.extend(kind_logits[begin : start[kind]])
                if kind_logp is not None:
                    logp.extend(kind_logp[begin : start[kind]])
            moves.append(np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64))
            outputs.append((logits, logp if explore else None))
        return moves, outputs

    def _forward(self, module_id: str, obs: np.ndarray, explore: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Actions, logits and (when exploring) log-probabilities for a batch of one policy's observations."""
        logits = self._logits[module_id](torch.from_numpy(obs).to(self._device))
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


class _Acting:
    """The agents of one game that act next: their slots (ascending) and observation windows per role
    (each role's rows in slot order, as the game cuts them)."""

    def __init__(self, slots: np.ndarray, windows: dict[int, np.ndarray]):
        self.slots, self.windows = slots, windows

    def blocks(self, layout: SlotLayout) -> dict[str, np.ndarray]:
        """The windows per policy (agent kind), in slot order: a kind's slots are consecutive, so its rows
        are a contiguous block of its role's windows."""
        counts = np.bincount(layout.kind[self.slots], minlength=len(KINDS)).tolist()
        start = {PREDATOR: 0, PREY: 0}
        blocks = {}
        for kind, count in zip(KINDS, counts):
            if count:
                role = kind_role(kind)
                blocks[kind] = self.windows[role][start[role] : start[role] + count]
                start[role] += count
        return blocks

    @staticmethod
    def after(played: SlotStep, layout: SlotLayout) -> _Acting:
        """Who acts after the step `played`: its agents that are not done."""
        done = played.terminated | played.truncated
        if done.any():
            played = played.only(~done, layout.role[played.slots])
        return _Acting(played.slots, played.windows)


def _step_columns(layout: SlotLayout, acting: _Acting, played: SlotStep, moves: np.ndarray, extras: list[dict]) -> tuple[list, ...]:
    """A step's observations, actions, rewards, terminated and truncated flags and extra model outputs, one entry
    per reported slot (`add_plain_env_step`'s columns); a newborn has no action and no extra outputs."""
    rows = {role: iter(windows) for role, windows in played.windows.items()}
    observations = [next(rows[role]) for role in layout.role[played.slots].tolist()]
    if len(acting.slots) == len(played.slots):
        actions, outputs = list(moves), extras
    else:
        actions, outputs = [None] * len(played.slots), [None] * len(played.slots)
        for position, action, extra in zip(np.searchsorted(played.slots, acting.slots).tolist(), moves, extras):
            actions[position], outputs[position] = action, extra
    return observations, actions, played.rewards.tolist(), played.terminated.tolist(), played.truncated.tolist(), outputs


def _as_dicts(lives: list[str], columns: tuple[list, ...], terminated: bool, truncated: bool) -> dict[str, dict]:
    """`_step_columns` as the dicts of `MultiAgentEpisode.add_env_step`, with the episode's `__all__` flags."""
    observations, actions, rewards, terminateds, truncateds, extras = columns
    return {
        "observations": dict(zip(lives, observations)),
        "actions": {life: action for life, action in zip(lives, actions) if action is not None},
        "rewards": dict(zip(lives, rewards)),
        "infos": {life: {} for life in lives},
        "terminateds": {**dict(zip(lives, terminateds)), "__all__": terminated},
        "truncateds": {**dict(zip(lives, truncateds)), "__all__": truncated},
        "extra_model_outputs": {life: extra for life, extra in zip(lives, extras) if extra is not None},
    }


class _SampleTally:
    """Env, agent and module steps and finished episodes of one `sample()` call, logged once at its end."""

    def __init__(self) -> None:
        self.env_steps = 0
        self.episodes = 0
        self.agent_steps: Counter[str] = Counter()

    def count_step(self, lives: list[str]) -> None:
        self.env_steps += 1
        self.agent_steps.update(lives)

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
