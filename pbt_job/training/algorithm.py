"""RLlib PPO set up for the game, and `PBTPPO`: PPO as a safe, reusable member of a PBT population.

`PBTPPO` differs from PPO in these ways, each for a PBT reason:

* Exploits happen in place (`reset_config`, for Tune's `reuse_actors=True`): the
  recipient's live actor takes the explored hyperparameters, remote env runners
  included, and Tune then loads the donor's checkpoint into it. No new Ray actor
  is started (6-14 s each on 2 cores, and the restart's CPU load stalled the other
  trials). RLlib has no `reset_config` (ray-project/ray#38136, #44506); only the
  keys in `IN_PLACE_KEYS` may differ, anything else fails the reuse with its name.
* After loading a checkpoint it re-applies its own config's learning rate, entropy
  and KL coefficients to every learner. Loading the donor's checkpoint restores the
  donor's optimizer state, param_groups' lr included, and RLlib only resets the lr
  after the next full update: the recipient's first iteration would train with the
  donor's lr (ray-project/ray#62173; related #54755, #53831).
* Each trial gets its own RLlib seed, `pbt.seed` + its index (0-based, in creation
  order), set before `setup`; Tune's config keeps `pbt.seed` for every trial, so
  configs stay comparable for a reuse. A reused actor that starts a new trial without
  a checkpoint (a population larger than the cluster runs at once) first returns to
  the state it had after `setup`: that trial starts from the initial weights of the
  actor's first trial, whose seed it reports (`rllib_seed`).
* Each result carries `pbt_score` (see `score.py`), defined from the first iteration.
* Each result carries env and agent steps per second, and the duration and size
  of the checkpoints saved since the previous result (Tune saves between results;
  the driver's exporter learns of them with the next result).
* The first result after a restore carries `restored_hyperparameters`: the lr,
  entropy and clip coefficients the learners will really use, and a digest of the
  loaded weights, so tests can check the recipient trains the donor's weights with
  its own explored values.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPO, PPOConfig
from ray.rllib.connectors.learner.general_advantage_estimation import GeneralAdvantageEstimation
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.tune.utils import flatten_dict

from pbt_job.result_keys import (
    AGENT_STEPS_PER_S_KEY,
    ENV_STEPS_PER_S_KEY,
    EPISODE_KEYS,
    MODULE_RETURN_PREFIX,
    SCORE_KEY,
    tune_key,
)
from pbt_job.storage import retry_storage
from pbt_job.training.config import MUTABLE, JobConfig
from pbt_job.training.fast_env_runner import FastEnvRunner
from pbt_job.training import node_checkpoints
from pbt_job.training.learner import GridPPOLearner
from pbt_job.training.model import module_spec
from pbt_job.training.ray_compat import (
    forget_synced_weights,
    learner_connector,
    relocated,
    reset_optimizer_lr,
    restored_checkpoint_path,
    trial_index,
)
from pbt_job.training.rllib_env import RLlibPredPreyGrass, policy_mapping_fn
from pbt_job.training.score import EpisodeReturnScore, SampledRewardCallback

logger = logging.getLogger(__name__)

RESTORED_KEY = "restored_hyperparameters"
ENDED_AT_KEY = "iteration_ended_at"
"""Epoch seconds (float) when the iteration ended: Tune's `timestamp` is whole seconds."""
SEED_KEY = "rllib_seed"
"""The RLlib seed the trial's weights were initialised with."""
CHECKPOINTS_KEY = "checkpoints_saved"
"""Per checkpoint saved since the previous result: `[seconds to save and persist, bytes]`."""


def build_ppo_config(job: JobConfig) -> PPOConfig:
    """The trial's base `PPOConfig`; PBT overrides the mutated keys per trial."""
    ppo, res = job.ppo, job.resources
    policies = job.env.policies
    spec = module_spec(ppo.conv_channels, ppo.hidden_sizes)
    return (
        PPOConfig()
        # Discrete moves need no unsquashing; the connector would also look up each
        # per-life agent id in the env's fixed space dict and fail.
        .environment(
            RLlibPredPreyGrass,
            env_config=job.env.model_dump(mode="json"),
            normalize_actions=False,
            clip_actions=False,
        )
        .env_runners(
            num_env_runners=res.num_env_runners,
            num_envs_per_env_runner=res.num_envs_per_env_runner,
            num_cpus_per_env_runner=res.num_cpus_per_env_runner,
            rollout_fragment_length=res.rollout_fragment_length,
            env_runner_cls=FastEnvRunner if res.env_runner == "fast" else None,
        )
        # Without remote learners the learner lives in the trial's main process, and RLlib
        # would reserve a whole CPU for it whatever `num_cpus_for_main_process` says.
        .learners(
            num_learners=res.num_learners,
            num_gpus_per_learner=res.num_gpus_per_learner,
            num_cpus_per_learner=res.num_cpus_per_trial if res.num_learners == 0 else "auto",
            learner_class=GridPPOLearner,
        )
        # GridPPOLearner checks the gradients for NaN/inf itself, once per update.
        .framework(torch_skip_nan_gradients=True)
        .resources(num_cpus_for_main_process=res.num_cpus_per_trial)
        .training(
            lr=ppo.lr,
            gamma=ppo.gamma,
            lambda_=ppo.lambda_,
            clip_param=ppo.clip_param,
            vf_loss_coeff=ppo.vf_loss_coeff,
            vf_clip_param=ppo.vf_clip_param,
            entropy_coeff=ppo.entropy_coeff,
            kl_coeff=ppo.kl_coeff,
            kl_target=ppo.kl_target,
            num_epochs=ppo.num_epochs,
            minibatch_size=ppo.minibatch_size,
            train_batch_size_per_learner=ppo.train_batch_size_per_learner,
        )
        .multi_agent(policies=set(policies), policy_mapping_fn=policy_mapping_fn)
        .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={p: spec for p in policies}))
        .callbacks(SampledRewardCallback)
        .debugging(seed=job.pbt.seed)
    )


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's parameters (names sorted, float32 bytes): equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().to(torch.float32).numpy().tobytes())
    return digest.hexdigest()


IN_PLACE_KEYS = frozenset(tune_key(name) for name in MUTABLE)
"""Config keys (Tune's names) a live trial can change: what PBT may mutate."""


def apply_learner_config(learner: Any, config: AlgorithmConfig | None = None) -> dict[str, dict[str, Any]]:
    """Make a learner train with `config` (default: its own) now; runs on each learner.

    Called after every state load (whose optimizer state carries the donor's lr) and
    on an in-place config change. The lr schedule, entropy and KL coefficients are
    rebuilt from the config, and GAE's gamma and lambda set; num_epochs, minibatch
    and batch sizes are read from the algorithm's config at each iteration.

    Returns:
        Per module: the optimizer lr, entropy coefficient and clip parameter now in
        force, and the digest of the loaded weights.
    """
    if config is not None:
        learner.config = config.copy(copy_frozen=False)
        for piece in learner_connector(learner) or []:
            if isinstance(piece, GeneralAdvantageEstimation):
                piece.gamma, piece.lambda_ = learner.config.gamma, learner.config.lambda_
    applied = {}
    for module_id in list(learner.module.keys()):
        module_config = learner.config.get_config_for_module(module_id)
        lr = None
        for _, optimizer in learner.get_optimizers_for_module(module_id):
            lr = reset_optimizer_lr(learner, optimizer, module_config.lr)
        for schedules in ("entropy_coeff_schedulers_per_module", "curr_kl_coeffs_per_module"):
            getattr(learner, schedules).pop(module_id, None)  # rebuilt from the config on next access
        entropy = learner.entropy_coeff_schedulers_per_module[module_id].get_current_value()
        applied[module_id] = {
            "lr": lr,
            "entropy_coeff": float(entropy),
            "clip_param": float(module_config.clip_param),
            "weights_sha256": weights_digest(learner.module[module_id]),
        }
    return applied


def _apply_env_runner_config(env_runner: Any, config: AlgorithmConfig) -> None:
    """New config (batch sizes set the rollout length), new games (episodes begun under the old
    weights end here), and the next weights, whatever their version, in force."""
    env_runner.config = config.copy(copy_frozen=False)
    forget_synced_weights(env_runner)
    if env_runner.env is not None:  # the local runner of a trial with remote runners has no games
        env_runner.make_env()


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A Tune config as a reuse compares it: flattened (PB2's explore flattens and unflattens
    the config, which drops empty mappings), without Tune's own `__...__` keys."""
    return flatten_dict({key: value for key, value in config.items() if not key.startswith("__")})


def _carry_episode_keys(result: dict[str, Any], policies: Any) -> None:
    """NaN for the episode means RLlib leaves out when no episode ended, so that any key of
    `metric_names` is in every result (Tune fails a trial whose result lacks its metric)."""
    for key in (*EPISODE_KEYS, *(MODULE_RETURN_PREFIX + policy for policy in policies)):
        *parents, leaf = key.split("/")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
        node.setdefault(leaf, float("nan"))


class PBTPPO(PPO):
    """PPO whose exploits happen in place, whose restores keep the trial's own hyperparameters
    and whose results carry `pbt_score`."""

    def __init__(self, config: Any = None, **kwargs: Any):
        # Tune's config dict as given: what a reuse compares (the AlgorithmConfig built from
        # it gains values resolved at setup, such as `simple_optimizer`).
        self._tune_config = _comparable(config) if isinstance(config, dict) else {}
        index = trial_index(config)
        if index is not None and config.get("seed") is not None:
            config = {**config, "seed": int(config["seed"]) + index}
        super().__init__(config=config, **kwargs)

    def setup(self, config: Any) -> None:
        super().setup(config)
        self._score = EpisodeReturnScore(max_steps=int(self.config.env_config.get("max_steps", 1000)))
        self._hyperparameters_after_restore: dict[str, Any] | None = None
        self._checkpoints_saved: list[list[float]] = []
        self._kept_checkpoints = node_checkpoints.KeptCheckpoints()
        self._last_checkpoint_bytes = 0
        self._config_in_force: AlgorithmConfig = self.config  # Trainable.reset replaces self.config with the dict
        self._state_after_setup = self.get_state()
        self._starts_without_checkpoint = False

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Take `new_config` in place. Tune calls this on a reused actor, then `restore` when
        the trial has a checkpoint (an exploit, or a paused trial resuming), else `train`.

        Raises:
            ValueError: a key outside `IN_PLACE_KEYS` differs (named in the message, which
                Tune records as the trial's error; its retry starts a new actor).
        """
        comparable, before = _comparable(new_config), self._tune_config
        fixed = sorted(
            key for key in before.keys() | comparable.keys()
            if key not in IN_PLACE_KEYS and before.get(key) != comparable.get(key)
        )
        self.config = self._config_in_force
        if fixed:
            raise ValueError(f"cannot change {', '.join(fixed)} in a live trial (only {', '.join(sorted(IN_PLACE_KEYS))})")
        config = self._config_in_force.copy(copy_frozen=False)
        config.update_from_dict({key: new_config[key] for key in IN_PLACE_KEYS if key in new_config})
        config.freeze()
        self.config = self._config_in_force = config
        self._tune_config = comparable
        for call in self.learner_group.foreach_learner(apply_learner_config, config=config):
            call.get()  # raises what the learner raised
        self.env_runner_group.foreach_env_runner(partial(_apply_env_runner_config, config=config))
        self._score = EpisodeReturnScore(max_steps=self._score.max_steps)
        self._starts_without_checkpoint = True
        logger.debug("[reuse] in force: %s", {key: new_config.get(key) for key in sorted(IN_PLACE_KEYS)})
        return True

    def save_checkpoint(self, checkpoint_dir: str) -> Any:
        saved = super().save_checkpoint(checkpoint_dir)
        self._last_checkpoint_bytes = sum(f.stat().st_size for f in Path(checkpoint_dir).rglob("*") if f.is_file())
        return saved

    def save(self, checkpoint_dir: str | None = None) -> Any:
        """Save and persist a checkpoint; during a storage outage the upload is retried (see
        `retry_storage`). An upload to remote storage stays on the node's disk (`node_checkpoints`)."""
        started = time.perf_counter()
        local_dir = checkpoint_dir or tempfile.mkdtemp(prefix="pbt-job-checkpoint-")
        try:
            saved = retry_storage(lambda: super(PBTPPO, self).save(local_dir), "persisting a checkpoint")
            if checkpoint_dir is None and not isinstance(saved.checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
                self._kept_checkpoints.keep(local_dir, saved.checkpoint.path)
        finally:
            if checkpoint_dir is None:
                shutil.rmtree(local_dir, ignore_errors=True)
        self._checkpoints_saved.append([time.perf_counter() - started, self._last_checkpoint_bytes])
        return saved

    def restore(self, checkpoint_path: Any) -> None:
        """Load a checkpoint: an exploit's pin from the node's copy of the checkpoint it was copied from
        when the donor ran on this node (`node_checkpoints`), else downloaded; during a storage outage
        the download is retried (see `retry_storage`): an exploit's recipient restores from its pin
        right after the decision, and a failed restore fails the trial, which Tune answers by writing
        to the unreachable storage."""
        path = restored_checkpoint_path(checkpoint_path)
        source = node_checkpoints.source_on_this_node(path) if path else None
        if source is not None:
            try:
                super().restore(relocated(checkpoint_path, str(source)))
                return
            except Exception as err:  # rotated out by its process meanwhile: download the pin
                logger.info("[restore] this node's copy %s of %s failed (%s); downloading it", source, path, err)
        retry_storage(lambda: super(PBTPPO, self).restore(checkpoint_path), "restoring a checkpoint")

    def cleanup(self) -> None:
        self._kept_checkpoints.clear()
        super().cleanup()

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        super().load_checkpoint(checkpoint_dir)
        self._starts_without_checkpoint = False
        self._reapply_config(f"loading {checkpoint_dir}")

    def _reapply_config(self, after: str) -> None:
        applied = [call.get() for call in self.learner_group.foreach_learner(apply_learner_config)]
        self._hyperparameters_after_restore = applied[0]
        logger.debug("[restore] hyperparameters re-applied after %s: %s", after, self._hyperparameters_after_restore)

    def step(self) -> dict[str, Any]:
        if self._starts_without_checkpoint:
            self._starts_without_checkpoint = False
            self.set_state(self._state_after_setup)
            self._reapply_config("a new trial took over this actor")
        started = time.perf_counter()
        result = super().step()
        seconds = time.perf_counter() - started
        env_runners = result.setdefault("env_runners", {})
        result[SCORE_KEY] = self._score.update(env_runners)
        _carry_episode_keys(result, self.config.policies)
        result[ENV_STEPS_PER_S_KEY] = env_runners.get("num_env_steps_sampled", 0) / seconds
        result[AGENT_STEPS_PER_S_KEY] = sum((env_runners.get("num_module_steps_sampled") or {}).values()) / seconds
        result[CHECKPOINTS_KEY], self._checkpoints_saved = self._checkpoints_saved, []
        result[ENDED_AT_KEY] = time.time()
        result[SEED_KEY] = self._config_in_force.seed
        if self._hyperparameters_after_restore is not None:
            result[RESTORED_KEY] = self._hyperparameters_after_restore
            self._hyperparameters_after_restore = None
        return result
