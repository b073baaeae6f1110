"""The one seam between pbt-job and Ray's private internals.

Everything pbt-job needs from Ray Tune, Ray Train and RLlib that no public API
offers lives here, one item per function or class, each with what it touches, why
no public API does it, and the upstream issue. The rest of `pbt_job` calls these
names only. `tests/test_ray_compat.py` checks every item against the installed Ray
(the name exists, with the expected signature or attribute), so an upgrade fails
there, naming the item, and not deep inside a training run.

One item lives outside, because `pbt-job report` reads it without importing Ray:
RLlib's private config key `_train_batch_size_per_learner` (`pbt_job/result_keys.py`,
`TUNE_KEYS`), checked by `test_private_train_batch_key` like the items here.

At import the installed Ray must be the version these items were verified with
(`VERIFIED_RAY_VERSION`); set `PBT_JOB_ACCEPT_RAY_VERSION=<installed version>` to
accept the risk of another one.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import ray
from ray.train._internal import checkpoint_manager as checkpoint_manager_module
from ray.train._internal.session import _FutureTrainingResult, _TrainingResult
from ray.train._internal.storage import _delete_fs_path, _exists_at_fs_path
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.tune import Checkpoint
from ray.tune.execution.tune_controller import TuneController
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.result import TRIAL_INFO

from pbt_job.errors import BadInput

VERIFIED_RAY_VERSION = "2.60.0"
ACCEPT_VERSION_ENV = "PBT_JOB_ACCEPT_RAY_VERSION"


class RayVersionError(BadInput):
    """The installed Ray is not the version pbt-job's use of its internals was verified with."""


def check_ray_version(installed: str, accepted: str | None) -> None:
    """Refuse a Ray other than `VERIFIED_RAY_VERSION` unless `accepted` names the installed one.

    Raises:
        RayVersionError: one line naming both versions and the variable that accepts the risk.
    """
    if installed != VERIFIED_RAY_VERSION and accepted != installed:
        raise RayVersionError(
            f"ray {installed} is installed, but pbt-job's use of Ray internals was verified with ray "
            f"{VERIFIED_RAY_VERSION}: install ray=={VERIFIED_RAY_VERSION}, or set {ACCEPT_VERSION_ENV}={installed} "
            "to accept the risk (run tests/test_ray_compat.py first)"
        )


check_ray_version(ray.__version__, os.environ.get(ACCEPT_VERSION_ENV))


# --- Ray Train storage helpers -------------------------------------------------------------


def exists_at_fs_path(fs: Any, path: str) -> bool:
    """`ray.train._internal.storage._exists_at_fs_path`: a file or folder exists on a pyarrow filesystem.

    pyarrow's `get_file_info` answers "not found" for an S3 prefix without a folder
    marker; Ray's helper also lists the prefix, which is what a checkpoint folder is.
    """
    return _exists_at_fs_path(fs, path)


def delete_fs_path(fs: Any, path: str) -> None:
    """`ray.train._internal.storage._delete_fs_path`: delete a folder (or file) on a pyarrow filesystem.

    Deletes an S3 "folder" with or without a marker object, as Tune does for its own
    checkpoints.
    """
    _delete_fs_path(fs, path)


def checkpoint_exists(checkpoint: Any) -> bool:
    """A Tune `Checkpoint` whose folder still exists on its storage."""
    return isinstance(checkpoint, Checkpoint) and exists_at_fs_path(checkpoint.filesystem, checkpoint.path)


def is_pending_checkpoint(checkpoint: Any) -> bool:
    """`ray.train._internal.session._FutureTrainingResult`: a checkpoint Tune has asked for but not received.

    PBT's trial state holds one while the donor's save is in flight; it resolves to a
    real checkpoint before the recipient restores (Tune waits on it).
    """
    return isinstance(checkpoint, _FutureTrainingResult)


# --- Ray Tune's PopulationBasedTraining ----------------------------------------------------


class PBTHooks:
    """Public hooks over `PopulationBasedTraining`'s private exploit steps (mix in before it).

    Tune's PBT has no extension point around an exploit; pbt-job needs one to pin the
    donor's checkpoint, to skip donors without one and to record the lineage. This
    class overrides the two private methods and calls:

    * `usable_donors(trial, upper_quantile)`: the donors a lower-quantile trial may
      clone (before `_checkpoint_or_exploit` picks one at random);
    * `after_perturbation_point(trial)`: after every `_checkpoint_or_exploit`;
    * `exploit(tune_controller, trial, donor, clone)`: instead of `_exploit`; `clone()`
      runs Tune's own exploit (pause, new config, restore from the donor);
    * `before_restore(trial)` and `before_snapshot()`: while `restores_and_snapshots_announced`
      runs, as the controller schedules a trial's restore and saves the experiment state.
    """

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile) -> None:
        if trial in lower_quantile:
            upper_quantile = self.usable_donors(trial, upper_quantile)
        super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)
        self.after_perturbation_point(trial)

    def _exploit(self, tune_controller, trial, trial_to_clone) -> None:
        self.exploit(tune_controller, trial, trial_to_clone, lambda: super(PBTHooks, self)._exploit(tune_controller, trial, trial_to_clone))

    def usable_donors(self, trial, upper_quantile: list) -> list:
        return upper_quantile

    def after_perturbation_point(self, trial) -> None:
        pass

    def exploit(self, tune_controller, trial, donor, clone: Callable[[], None]) -> None:
        clone()

    def before_restore(self, trial) -> None:
        pass

    def before_snapshot(self) -> None:
        pass


def pbt_trial_state(scheduler: Any, trial: Any) -> Any:
    """`PopulationBasedTraining._trial_state[trial]`: the scheduler's per-trial record.

    Its fields `last_score`, `last_checkpoint`, `last_result`, `last_perturbation_time`,
    `last_train_time` are what an exploit reads and what a resume must restore
    (`Tuner.restore` starts the scheduler afresh: ray-project/ray#30838).
    """
    return scheduler._trial_state[trial]


def pbt_mutated_keys(scheduler: Any) -> list[str]:
    """`PopulationBasedTraining._hyperparam_mutations` (PB2: its bounds): the config keys PBT changes."""
    return list(scheduler._hyperparam_mutations)


def pbt_score_sign(scheduler: Any) -> float:
    """`PopulationBasedTraining._metric_op`: +1 for mode max, -1 for min (scores are stored times it)."""
    return scheduler._metric_op


def set_restore_checkpoint(trial: Any, checkpoint: Checkpoint) -> None:
    """Write `trial.run_metadata.checkpoint_manager._latest_checkpoint_result`: what the trial restores from.

    Tune's PBT points a recipient at the donor's checkpoint by this same private write
    (there is no public "restore from" on a trial); pbt-job points it at its pinned
    copy instead, keeping the donor's metrics. Tune's write leaves the run metadata's
    cached JSON as it was, so experiment snapshots kept naming the checkpoint from before
    the exploit until the next result; the cache is dropped here.
    """
    manager = trial.run_metadata.checkpoint_manager
    metrics = manager.latest_checkpoint_result.metrics
    manager._latest_checkpoint_result = _TrainingResult(checkpoint=checkpoint, metrics=metrics)
    trial.run_metadata.invalidate_cache()


def restored_checkpoint_path(checkpoint_result: Any) -> str | None:
    """The storage path of the checkpoint Tune passes `Trainable.restore` (a `_TrainingResult`); None
    for anything else (a path or `Checkpoint` given by hand)."""
    return checkpoint_result.checkpoint.path if isinstance(checkpoint_result, _TrainingResult) else None


def relocated(checkpoint_result: Any, local_dir: str) -> Any:
    """The `_TrainingResult` Tune passed `Trainable.restore`, with its checkpoint's files read from
    `local_dir` instead (its metrics, which restore the trial's counters, kept)."""
    return _TrainingResult(checkpoint=Checkpoint(local_dir), metrics=checkpoint_result.metrics)


def stage_for_restart(tune_controller: Any, trial: Any) -> None:
    """Stage a trial PBT is about to pause for an exploit: `TuneController._staged_trials`, `_actor_cache`.

    With `reuse_actors=True`, `TuneController._maybe_cache_trial_actor` keeps a paused
    trial's actor only while some trial is staged; once the searcher has created the
    whole population none is ("Not caching actor ... as the search is over"), so an
    exploited trial lost its actor and waited for a new one (6-14 s, and the start's
    CPU load stalled the others). Staging the recipient first, as the controller
    itself does for a trial it chooses to run, makes the pause cache the actor and
    the restart reuse it (`_maybe_reuse_cached_actor`, which unstages it). Tune offers
    no public call for this; reuse across PBT pauses is ray-project/ray#38136, #44506.
    """
    tune_controller._staged_trials.add(trial)
    tune_controller._actor_cache.increase_max(trial.placement_group_factory)


class _Deletions:
    """Folders to delete once no stored experiment snapshot names them.

    `queued`: deleted after the last snapshot was saved (the snapshot in flight, or
    the next one, no longer names them). `unnamed`: queued before a snapshot whose
    upload has finished, so safe to delete.
    """

    queued: list[tuple[Any, str]] = []
    unnamed: list[tuple[Any, str]] = []


@contextlib.contextmanager
def checkpoint_deletions_deferred() -> Iterator[None]:
    """While the block runs, Tune's retention (`num_to_keep`) queues the checkpoints it deletes.

    `_CheckpointManager.register_checkpoint` deletes a trial's oldest checkpoint the
    moment a new one registers, while the last saved experiment snapshot (what a resume
    reads) may still name the deleted one as the trial's latest: a driver killed in between
    leaves a run whose resume fails with "does not exist on storage anymore". Tune has no
    hook between registration and deletion, so the module-level `_delete_fs_path` it calls
    is swapped for the queue; `delete_after_snapshot` empties it. Leaving the block
    normally (`Tuner.fit` has saved its final snapshot and waited for it) deletes what is
    left; leaving it on an error keeps those checkpoints, since the snapshot may still name them.
    """
    original = checkpoint_manager_module._delete_fs_path
    checkpoint_manager_module._delete_fs_path = defer_deletion
    try:
        yield
        _delete(_Deletions.unnamed + _Deletions.queued)
    finally:
        checkpoint_manager_module._delete_fs_path = original
        _Deletions.queued, _Deletions.unnamed = [], []


def defer_deletion(fs: Any, fs_path: str) -> None:
    """Queue a folder for `delete_after_snapshot` (the signature of Ray's `_delete_fs_path`)."""
    if all(path != fs_path for _, path in _Deletions.queued + _Deletions.unnamed):
        _Deletions.queued.append((fs, fs_path))


def delete_after_snapshot(tune_controller: Any) -> None:
    """Save an experiment snapshot without waiting for its upload, then delete the folders queued
    before the previous one, which is stored by then.

    Schedulers receive the controller but no public way to make the snapshot current.
    `TuneController.checkpoint(force=True)` first waits for the upload in flight (the
    previous snapshot's), so a deletion waits one snapshot longer but the controller
    does not wait for an upload: every trial's results keep flowing.
    """
    if _Deletions.queued or _Deletions.unnamed:
        # Schedulers get a proxy that warns on this call ("restricted") and then makes it.
        getattr(tune_controller, "_tune_controller", tune_controller).checkpoint(force=True, wait=False)
        _delete(_Deletions.unnamed)
        _Deletions.queued, _Deletions.unnamed = [], _Deletions.queued


def _delete(folders: list[tuple[Any, str]]) -> None:
    for fs, path in folders:
        with contextlib.suppress(FileNotFoundError):  # deleted by hand meanwhile: nothing to do
            delete_fs_path(fs, path)


@contextlib.contextmanager
def failures_while_pending_recovered() -> Iterator[None]:
    """While the block runs, a trial that fails while PENDING is recovered like a RUNNING one.

    With reused actors, a trial restarting after an exploit is PENDING while Tune resets
    its cached actor, and that actor may die with its node. Tune mishandles this twice:
    - `TuneController._process_trial_failure` recovers (restarts from the latest
      checkpoint, up to `max_failures`) only a RUNNING trial; a PENDING one is stopped
      for good, though it had retries left. The block makes it RUNNING first.
    - The trial stays in `_resetting_trials` (only a successful reset removes it), and
      `_maybe_reuse_cached_actor` treats such a trial as started: it waited forever for
      a free CPU it never took. The block removes it from that set.
    A second future of the same dead actor then fails the trial again, though it is
    already queued to restart and holds no actor: that failure is ignored.
    """
    original = TuneController._process_trial_failure

    def process_trial_failure(controller: Any, trial: Any, exception: Exception) -> None:
        if trial.status == trial.PENDING and trial not in controller._trial_to_actor:
            return
        controller._resetting_trials.discard(trial)
        retries_left = trial.max_failures < 0 or trial.run_metadata.num_failures < trial.max_failures
        if trial.status == trial.PENDING and retries_left:
            controller._set_trial_status(trial, trial.RUNNING)
        original(controller, trial, exception)

    TuneController._process_trial_failure = process_trial_failure
    try:
        yield
    finally:
        TuneController._process_trial_failure = original


@contextlib.contextmanager
def restores_and_snapshots_announced() -> Iterator[None]:
    """While the block runs, the controller calls its scheduler's `before_restore(trial)` (see
    `PBTHooks`) as it schedules a trial's restore (`TuneController._schedule_trial_restore`), and
    `before_snapshot()` as it saves the experiment state (`TuneController.save_to_dir`).

    Tune gives schedulers no hook at either point. pbt-job copies an exploit's donor checkpoint
    while the recipient's actor resets (the copy was a third of an exploit's cost on S3), and the
    copy must be complete before the recipient restores from it and before a snapshot, which is
    what a resume reads, names it.
    """
    restore, save = TuneController._schedule_trial_restore, TuneController.save_to_dir

    def schedule_trial_restore(controller: Any, trial: Any) -> bool:
        announce = getattr(controller._scheduler_alg, "before_restore", None)
        if announce is not None:
            announce(trial)
        return restore(controller, trial)

    def save_to_dir(controller: Any) -> Any:
        announce = getattr(controller._scheduler_alg, "before_snapshot", None)
        if announce is not None:
            announce()
        return save(controller)

    TuneController._schedule_trial_restore, TuneController.save_to_dir = schedule_trial_restore, save_to_dir
    try:
        yield
    finally:
        TuneController._schedule_trial_restore, TuneController.save_to_dir = restore, save


class _KeepLocalLog:
    """Overrides `LoggerCallback._restore_from_remote`: a restart keeps the driver's own log.

    Tune's JSON and CSV loggers copy `result.json` / `progress.csv` from storage over
    the driver's local copy every time a trial with a checkpoint starts. Storage lags
    the local file by up to one experiment snapshot, so each exploit (a restart) lost
    the trial's latest result lines. The local file, when there is one, is the newer:
    only a driver without one (a resume elsewhere) takes the stored copy.
    """

    def _restore_from_remote(self, file_name: str, trial: Any) -> None:
        if not Path(trial.local_path, file_name).exists():
            super()._restore_from_remote(file_name, trial)


class ResultLog(_KeepLocalLog, JsonLoggerCallback):
    """Tune's `result.json` logger, without losing lines at restarts (see `_KeepLocalLog`)."""


class ProgressLog(_KeepLocalLog, CSVLoggerCallback):
    """Tune's `progress.csv` logger, without losing lines at restarts (see `_KeepLocalLog`)."""


# --- Ray core -------------------------------------------------------------------------------


def cluster_may_grow() -> bool:
    """False when this process started its Ray (`ray._private.worker._global_node.head`): a local
    Ray has no autoscaler, so what it lacks now it lacks for good. A cluster the driver connected
    to (a RayJob, `RAY_ADDRESS`) may autoscale. Ray has no public "was I started here" nor
    "is there an autoscaler".
    """
    node = ray._private.worker._global_node
    return node is None or not node.head


# --- Ray Tune's Trainable -----------------------------------------------------------------


def trial_index(config: Any) -> int | None:
    """The trial's creation index, from `config["__trial_info__"].trial_id` (`_TrialInfo`), before `Trainable.__init__`.

    Tune passes a `_TrialInfo` in the config it constructs a trainable with, and
    `BasicVariantGenerator` names trials `<run prefix>_<index:05d>` (0-based, in creation
    order; the same ids after a resume). A trial's RLlib seed must be set before
    `Trainable.__init__` runs `setup`, and the public `Trainable.trial_id` exists only
    after it; Tune has no public trial index. No upstream issue.

    Returns:
        The index, or None without trial info (a trainable built outside Tune) or for an
        id of another form (a search algorithm that names trials otherwise).
    """
    info = config.get(TRIAL_INFO) if isinstance(config, dict) else None
    suffix = str(getattr(info, "trial_id", "")).rpartition("_")[2]
    return int(suffix) if len(suffix) == 5 and suffix.isdigit() else None


# --- RLlib Learner -------------------------------------------------------------------------


def reset_optimizer_lr(learner: Any, optimizer: Any, lr: Any) -> float:
    """Make `optimizer` train with `lr` now: `Learner._optimizer_lr_schedules`, `_set_optimizer_lr`, `_get_optimizer_lr`.

    Loading a checkpoint restores the donor's param_groups' lr, and RLlib resets it
    from its scheduler only after the next update, so a recipient's first iteration
    would train with the donor's lr (ray-project/ray#62173; #54755, #53831). The
    Learner offers no public call to replace an optimizer's lr schedule.

    Returns:
        The lr the optimizer now holds.
    """
    from ray.rllib.utils.schedules.scheduler import Scheduler

    schedule = Scheduler(fixed_value_or_schedule=lr, framework="torch", device=learner.device)
    learner._optimizer_lr_schedules[optimizer] = schedule
    learner._set_optimizer_lr(optimizer, schedule.get_current_value())
    return float(learner._get_optimizer_lr(optimizer))


def learner_connector(learner: Any) -> Any:
    """`Learner._learner_connector`: the learner's connector pipeline (GAE is its last piece).

    PPO builds `GeneralAdvantageEstimation(gamma, lambda_)` once, from the config of
    the learner's start; a trial that changes gamma or lambda in place must change
    the piece, and the Learner exposes its pipeline under no public name.
    """
    return learner._learner_connector


# --- RLlib EnvRunner -----------------------------------------------------------------------


def forget_synced_weights(env_runner: Any) -> None:
    """Set `EnvRunner._weights_seq_no` to 0, so that the next weight sync applies whatever version it brings.

    An EnvRunner applies synced weights only when their sequence number is newer
    than its own (`MultiAgentEnvRunner.set_state`). Loading a checkpoint sets the
    learner's number back to the checkpoint's, so the runners of a reused trial,
    ahead of it, kept sampling with the recipient's old weights while the learner
    trained the donor's. A new actor's runners start at 0; RLlib has no public reset.
    """
    env_runner._weights_seq_no = 0


FAST_ENV_RUNNER_INTERNALS = {
    "_sample": "the sampling loop `FastEnvRunner` replaces; the public `sample()` around it keeps timers, "
    "weight pulls and `on_sample_end`",
    "_reset_envs": "resets the games and starts their episodes; replaced to skip the env-to-module pipeline",
    "_reset_envs_and_episodes": "the stock reset entry `_sample` calls (new episode list, shared data)",
    "_needs_initial_reset": "set by `make_env` (a reused trial's new games): the next sample resets",
    "_seed": "the runner's seed; the first reset of game i gets seed + i, as in the stock vector env",
    "_new_episode": "a new `MultiAgentEpisode` with the runner's spaces and mapping, and `on_episode_created`",
    "_make_on_episode_callback": "the `on_episode_*` callbacks with the stock arguments",
    "_prune_zero_len_sa_episodes": "drops lives without steps before an episode (chunk) is returned",
    "_ongoing_episodes": "the episode per game, continued across `sample()` calls",
    "_done_episodes_for_metrics": "finished episodes `get_metrics` turns into episode metrics",
    "_ongoing_episodes_for_metrics": "earlier chunks of ongoing episodes, for their episode metrics",
    "_weights_seq_no": "the weights' version, recorded per step as the stock runner does",
    "_device": "where the RLModule lives",
    "_log_env_steps": "the Prometheus env-step counter",
    "_metrics_num_env_steps_sampled": "the counter `_log_env_steps` increments",
}
"""`MultiAgentEnvRunner` internals `fast_env_runner.FastEnvRunner` (a subclass) overrides or reads, and why.

RLlib offers custom env runners (`env_runners(env_runner_cls=...)`) but no public hook
for the sampling loop alone; rewriting the runner whole would copy its episodes,
metrics, state and checkpoint code."""


def add_env_step_unchecked(episode: MultiAgentEpisode, **step: Any) -> None:
    """`MultiAgentEpisode.add_env_step` without the `validate()` it runs at its end.

    `validate` walks every life of the episode on every step, which was a quarter of
    the fast env runner's sampling time; the runner validates each chunk once when it
    returns it instead. RLlib has no switch for it, and the episode has `__slots__`,
    so the step runs with the episode's class swapped for one whose `validate` is empty.
    """
    episode.__class__ = _UncheckedEpisode
    try:
        episode.add_env_step(**step)
    finally:
        episode.__class__ = MultiAgentEpisode


class _UncheckedEpisode(MultiAgentEpisode):
    __slots__ = ()

    def validate(self) -> None:
        pass


def add_plain_env_step(
    episode: MultiAgentEpisode,
    agents: list[str],
    observations: list[Any],
    actions: list[Any],
    rewards: list[float],
    terminateds: list[bool],
    truncateds: list[bool],
    extra_model_outputs: list[dict[str, Any] | None],
) -> None:
    """What `add_env_step_unchecked` records, for a step of the kind every step but the last of this game is.

    The episode is an ongoing one (lists, not numpy), the step must not end it, and each of
    `agents` (aligned with the other lists) either acted and gets its next observation (its
    action and extra model outputs given) or enters with its first observation (action and
    extra outputs None); an agent absent from `agents` takes no part in the step. Then RLlib's
    general step, with its dicts, sets and per-agent branches, reduces to appending each
    agent's data to its buffers, which this does directly (a tenth of the cost); the state it
    leaves is `add_env_step`'s, as `tests/test_ray_compat.py` checks field by field. Touches the
    buffers' `data` lists, the episode's private
    `_len_lookback_buffers`, `_hanging_rewards_begin`, `_del_hanging`, `_start_time`,
    `_last_step_time` and the single-agent episodes' `_last_added_observation`,
    `_last_added_infos`, `_start_time`, `_last_step_time`.
    """
    now = time.perf_counter()
    episode.env_t += 1
    episode.is_terminated = episode.is_truncated = False
    mapping, agent_episodes, agent_t_started = episode.env_t_to_agent_t, episode.agent_episodes, episode.agent_t_started
    stepped = set(agents)
    for agent, agent_t in mapping.items():
        if agent not in stepped:
            agent_t.data.append(MultiAgentEpisode.SKIP_ENV_TS_TAG)
    for agent, observation, action, reward, terminated, truncated, extra in zip(
        agents, observations, actions, rewards, terminateds, truncateds, extra_model_outputs
    ):
        if action is None:
            _enter(episode, agent, observation, reward)
            continue
        sa_episode = agent_episodes[agent]
        infos: dict = {}
        sa_episode.observations.data.append(observation)
        sa_episode.actions.data.append(action)
        sa_episode.rewards.data.append(reward)
        sa_episode.infos.data.append(infos)
        sa_episode.t += 1
        buffers = sa_episode.extra_model_outputs
        for key, value in extra.items():
            if key in buffers:
                buffers[key].data.append(value)
            else:
                buffers[key] = InfiniteLookbackBuffer([value])
        sa_episode.is_terminated, sa_episode.is_truncated = terminated, truncated
        sa_episode._last_added_observation, sa_episode._last_added_infos = observation, infos
        sa_episode._last_step_time = now
        if sa_episode._start_time is None:
            sa_episode._start_time = now
        mapping[agent].data.append(sa_episode.t - sa_episode.t_started + agent_t_started[agent])
        if terminated or truncated:
            episode._del_hanging(agent)
    episode._last_step_time = now
    if episode._start_time is None:
        episode._start_time = now


def _enter(episode: MultiAgentEpisode, agent: str, observation: Any, reward: float) -> None:
    """`add_env_step`'s branch for an agent's first observation in the middle of an episode."""
    sa_episode = SingleAgentEpisode(
        agent_id=agent,
        module_id=episode.module_for(agent),
        multi_agent_episode_id=episode.id_,
        observation_space=episode.observation_space.get(agent),
        action_space=episode.action_space.get(agent),
    )
    agent_t = episode.env_t_to_agent_t[agent]
    agent_t.extend([MultiAgentEpisode.SKIP_ENV_TS_TAG] * episode.env_t + [0])
    agent_t.lookback = episode._len_lookback_buffers
    sa_episode.add_env_reset(observation=observation, infos={})
    episode._hanging_rewards_begin[agent] += reward
    episode.agent_episodes[agent] = sa_episode
