"""Contracts of every Ray internal pbt-job uses (`pbt_job/training/ray_compat.py`).

One test per item, named after it: on a Ray upgrade that moves or changes an
internal, the failure names the item here instead of surfacing mid-run.
"""

from __future__ import annotations

import inspect

import pyarrow.fs
import pytest
from ray.rllib.connectors.learner.general_advantage_estimation import GeneralAdvantageEstimation
from ray import tune
from ray.train._internal import checkpoint_manager, session, storage
from ray.tune.execution.tune_controller import TuneController
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2
from ray.tune.schedulers.pbt import _PBTTrialState
from ray.tune.search.sample import Domain

from conftest import REPO
from pbt_job.training import ray_compat
from pbt_job.training.algorithm import PBTPPO, build_ppo_config
from pbt_job.training.config import load_config
from pbt_job.training.explore import pb2_bounds, pbt_mutations
from pbt_job.training.run import param_space


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_version_check_refuses_another_ray_unless_accepted():
    ray_compat.check_ray_version(ray_compat.VERIFIED_RAY_VERSION, None)
    ray_compat.check_ray_version("2.61.0", "2.61.0")
    with pytest.raises(ray_compat.RayVersionError) as refused:
        ray_compat.check_ray_version("2.61.0", None)
    message = str(refused.value)
    assert "ray 2.61.0 is installed" in message and ray_compat.VERIFIED_RAY_VERSION in message
    assert f"{ray_compat.ACCEPT_VERSION_ENV}=2.61.0" in message and "\n" not in message
    with pytest.raises(ray_compat.RayVersionError):
        ray_compat.check_ray_version("2.61.0", "2.62.0")  # accepting one version accepts only that one


def test_exists_at_fs_path_and_delete_fs_path(tmp_path):
    assert parameters(storage._exists_at_fs_path) == ["fs", "fs_path"]
    assert parameters(storage._delete_fs_path) == ["fs", "fs_path"]
    fs = pyarrow.fs.LocalFileSystem()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "a").write_text("x")
    assert ray_compat.exists_at_fs_path(fs, str(tmp_path / "ckpt"))
    ray_compat.delete_fs_path(fs, str(tmp_path / "ckpt"))
    assert not ray_compat.exists_at_fs_path(fs, str(tmp_path / "ckpt"))


def test_future_and_training_result():
    assert parameters(session._TrainingResult) == ["checkpoint", "metrics"]
    assert inspect.isclass(session._FutureTrainingResult)
    assert ray_compat.is_pending_checkpoint(session._FutureTrainingResult.__new__(session._FutureTrainingResult))
    assert not ray_compat.is_pending_checkpoint(None)


@pytest.mark.parametrize("scheduler", [PopulationBasedTraining, PB2])
def test_pbt_private_exploit_steps(scheduler):
    """`PBTHooks` overrides these two with these exact parameters."""
    assert parameters(scheduler._checkpoint_or_exploit) == ["self", "trial", "tune_controller", "upper_quantile", "lower_quantile"]
    assert parameters(scheduler._exploit) == ["self", "tune_controller", "trial", "trial_to_clone"]


def test_pbt_trial_state_mutations_and_metric_sign():
    job = load_config(REPO / "configs" / "quick.yaml")
    pbt = PopulationBasedTraining(metric="m", mode="min", hyperparam_mutations=pbt_mutations(job.pbt))
    pb2 = PB2(metric="m", mode="max", hyperparam_bounds=pb2_bounds(job.pbt))
    assert ray_compat.pbt_mutated_keys(pbt) == list(pbt_mutations(job.pbt))
    assert ray_compat.pbt_mutated_keys(pb2) == list(pb2_bounds(job.pbt))
    assert ray_compat.pbt_score_sign(pbt) == -1 and ray_compat.pbt_score_sign(pb2) == 1
    state = _PBTTrialState(trial=type("Trial", (), {"experiment_tag": "0"})())
    for field in ("last_score", "last_checkpoint", "last_result", "last_perturbation_time", "last_train_time"):
        assert hasattr(state, field), field
    pbt._trial_state["trial"] = state
    assert ray_compat.pbt_trial_state(pbt, "trial") is state


def test_restore_checkpoint_of_a_trial():
    """The write lands in the trial's checkpoint manager and in the JSON the next snapshot saves."""
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.tune import Checkpoint
    from ray.tune.trainable.metadata import _TrainingRunMetadata
    from ray.tune.utils.serialization import TuneFunctionDecoder

    run_metadata = _TrainingRunMetadata()
    run_metadata.checkpoint_manager = _CheckpointManager(checkpoint_config=None)
    run_metadata.checkpoint_manager.register_checkpoint(session._TrainingResult(Checkpoint("/old"), {"m": 1}))
    run_metadata.get_json_state()  # cached, as after a snapshot
    trial = type("Trial", (), {"run_metadata": run_metadata})()
    ray_compat.set_restore_checkpoint(trial, Checkpoint("/pinned"))
    for manager in run_metadata.checkpoint_manager, TuneFunctionDecoder(allow_cloudpickle=True).decode(
            run_metadata.get_json_state())["checkpoint_manager"]:
        assert manager.latest_checkpoint_result.checkpoint.path == "/pinned"
        assert manager.latest_checkpoint_result.metrics == {"m": 1}


def test_logger_restore_from_remote():
    from ray.tune.logger import LoggerCallback

    assert parameters(LoggerCallback._restore_from_remote) == ["self", "file_name", "trial"]
    for log in (ray_compat.ResultLog, ray_compat.ProgressLog):
        assert log._restore_from_remote is ray_compat._KeepLocalLog._restore_from_remote


def test_stage_for_restart():
    """The controller attributes `stage_for_restart` writes, as the controller itself uses them."""
    source = inspect.getsource(TuneController._maybe_cache_trial_actor)
    assert "self._staged_trials" in source and "self._actor_cache.cache_object" in source
    assert "self._actor_cache.increase_max" in inspect.getsource(TuneController._maybe_add_actors)


def test_env_runner_weights_seq_no():
    """A sync applies weights only when newer than the runner's `_weights_seq_no`, which `forget_synced_weights` resets."""
    from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner

    source = inspect.getsource(MultiAgentEnvRunner.set_state)
    assert "self._weights_seq_no < weights_seq_no" in source
    runner = type("Runner", (), {"_weights_seq_no": 7})()
    ray_compat.forget_synced_weights(runner)
    assert runner._weights_seq_no == 0


def test_fast_env_runner_internals():
    """Every `MultiAgentEnvRunner` internal the fast runner uses exists on a built stock runner, and the
    two it overrides are still what the stock `sample()` and reset call, with the arguments it passes."""
    from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner

    job = load_config(REPO / "tests" / "data" / "tiny.yaml", ["resources.env_runner=stock"])
    runner = MultiAgentEnvRunner(config=build_ppo_config(job))
    missing = [name for name in ray_compat.FAST_ENV_RUNNER_INTERNALS if not hasattr(runner, name)]
    assert not missing, f"MultiAgentEnvRunner lacks {missing}"
    assert "self._sample(" in inspect.getsource(MultiAgentEnvRunner.sample)
    assert parameters(MultiAgentEnvRunner._sample) == ["self", "num_timesteps", "num_episodes", "explore", "random_actions", "force_reset"]
    assert "self._reset_envs(self._ongoing_episodes, self._shared_data, explore)" in inspect.getsource(
        MultiAgentEnvRunner._reset_envs_and_episodes)
    assert parameters(MultiAgentEnvRunner._reset_envs) == ["self", "episodes", "shared_data", "explore"]


def test_add_env_step_unchecked():
    """The episode's class is swapped for the step only: the step is recorded, `validate` skipped, the class restored."""
    from ray.rllib.env.multi_agent_episode import MultiAgentEpisode

    assert "__dict__" not in dir(MultiAgentEpisode) and "self.validate()" in inspect.getsource(MultiAgentEpisode.add_env_step)
    episode = MultiAgentEpisode()
    episode.add_env_reset(observations={"a": 0})
    ray_compat.add_env_step_unchecked(episode, observations={"a": 1}, actions={"a": 0}, rewards={"a": 2.0})
    assert type(episode) is MultiAgentEpisode
    assert episode.env_t == 1 and episode.get_return() == 2.0
    episode.validate()


def test_add_plain_env_step():
    """Steps of every kind `add_plain_env_step` takes (agents acting, one entering mid-episode, one
    dying), before and after a cut: the episode's state is field by field what `add_env_step` leaves."""
    import numpy as np
    from ray.rllib.env.multi_agent_episode import MultiAgentEpisode

    def obs(value: float) -> np.ndarray:
        return np.full((2, 2), value, np.float32)

    def extra(value: float) -> dict:
        return {"action_dist_inputs": np.full(3, value, np.float32), "action_logp": np.float32(-value)}

    steps = [  # per agent: observation, action, reward, terminated; `c` enters in the first step, `a` and `c` die in the second
        {"a": (obs(1), np.int64(0), 0.5, False), "b": (obs(2), np.int64(1), 0.0, False), "c": (obs(3), None, 0.25, False)},
        {"a": (obs(4), np.int64(2), -1.0, True), "b": (obs(5), np.int64(0), 1.0, False), "c": (obs(6), np.int64(1), 0.0, True)},
        {"b": (obs(7), np.int64(1), 0.0, False), "d": (obs(8), None, 2.0, False)},
    ]

    def play(episode: MultiAgentEpisode, plain: bool, step: dict) -> None:
        agents = list(step)
        observations, actions, rewards, terminateds = (list(column) for column in zip(*step.values()))
        extras = [None if action is None else extra(reward) for action, reward in zip(actions, rewards)]
        if plain:
            ray_compat.add_plain_env_step(episode, agents, observations, actions, rewards, terminateds,
                                          [False] * len(agents), extras)
            return
        acted = [agent for agent, action in zip(agents, actions) if action is not None]
        episode.add_env_step(
            observations=dict(zip(agents, observations)), actions={a: step[a][1] for a in acted},
            rewards=dict(zip(agents, rewards)), infos={agent: {} for agent in agents},
            terminateds=dict(zip(agents, terminateds)), truncateds=dict.fromkeys(agents, False),
            extra_model_outputs={a: extras[agents.index(a)] for a in acted})

    def state(episode: MultiAgentEpisode) -> dict:
        found = episode.get_state()
        for key in ("_start_time", "_last_step_time", "agent_to_module_mapping_fn"):
            found.pop(key)
        found["env_t_to_agent_t"] = {a: (list(b.data), b.lookback) for a, b in sorted(episode.env_t_to_agent_t.items())}
        found["agent_episodes"] = {
            agent: {k: v for k, v in sa.get_state().items() if k not in ("id_", "_start_time", "_last_step_time")}
            | {"last_added": sa._last_added_observation, "last_infos": sa._last_added_infos}
            for agent, sa in sorted(episode.agent_episodes.items())
        }
        for key in ("agent_t_started", "_hanging_rewards_begin", "_hanging_rewards_end", "_agent_to_module_mapping"):
            found[key] = dict(sorted(found[key].items()))
        return found

    episodes = {}
    for plain in (False, True):
        episode = MultiAgentEpisode(id_="same", agent_to_module_mapping_fn=lambda agent, episode: f"module_{agent}")
        episode.add_env_reset(observations={"a": obs(0), "b": obs(0)}, infos={"a": {}, "b": {}})
        play(episode, plain, steps[0])
        play(episode, plain, steps[1])
        continuation = episode.cut(len_lookback_buffer=1)
        play(continuation, plain, steps[2])
        episodes[plain] = (episode, continuation)
        assert episode.agent_episodes["c"].is_terminated and episode._start_time is not None
    for stock, plain in zip(*episodes.values()):
        np.testing.assert_equal(state(plain), state(stock))


def test_failures_while_pending_recovered():
    """Tune recovers only a RUNNING trial; the block makes a PENDING one with retries left RUNNING
    first. Only a successful reset leaves `_resetting_trials`, and a trial in it is never given
    an actor again; a dead actor's other futures still reach `_process_trial_failure`."""
    source = inspect.getsource(TuneController._process_trial_failure)
    assert "if trial.status == Trial.RUNNING and trial.should_recover():" in source
    assert parameters(TuneController._set_trial_status) == ["self", "trial", "status"]
    reuse = inspect.getsource(TuneController._maybe_reuse_cached_actor)
    assert "if trial in self._resetting_trials:\n            return True" in reuse
    assert "self._trial_to_actor[trial] = cached_actor" in reuse
    assert "self._resetting_trials.remove(trial)" in inspect.getsource(TuneController._on_trial_reset)
    assert "self._resetting_trials" not in inspect.getsource(TuneController._try_recover)
    on_error = inspect.getsource(TuneController._schedule_trial_task)
    assert "# If the actor failed, it has already been cleaned up." in on_error
    original = TuneController._process_trial_failure
    with ray_compat.failures_while_pending_recovered():
        assert TuneController._process_trial_failure is not original
    assert TuneController._process_trial_failure is original


def test_restores_and_snapshots_announced():
    """The controller restores a started trial through `_schedule_trial_restore` and saves every
    snapshot through `save_to_dir`; inside the block the scheduler hears of each first."""
    assert parameters(TuneController._schedule_trial_restore) == ["self", "trial"]
    assert "self._schedule_trial_restore(trial)" in inspect.getsource(TuneController._actor_started)
    assert "save_fn=self.save_to_dir" in inspect.getsource(TuneController.checkpoint)
    heard = []

    class Scheduler:
        def before_restore(self, trial):
            heard.append(("restore", trial))

        def before_snapshot(self):
            heard.append(("snapshot",))
            raise RuntimeError("heard before the save")

    controller = TuneController.__new__(TuneController)
    controller._scheduler_alg = Scheduler()
    trial = type("Trial", (), {"latest_checkpoint_result": None})()
    with ray_compat.restores_and_snapshots_announced():
        assert controller._schedule_trial_restore(trial) is False  # no checkpoint: nothing to restore
        with pytest.raises(RuntimeError, match="heard before the save"):
            controller.save_to_dir()
    assert heard == [("restore", trial), ("snapshot",)]
    assert "announce" not in inspect.getsource(TuneController._schedule_trial_restore)


def test_forced_snapshot_waits_for_the_upload_in_flight():
    """`delete_after_snapshot` deletes what the previous snapshot no longer names once a forced
    `TuneController.checkpoint` returns: it waits for the upload in flight before saving."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    assert parameters(TuneController.checkpoint) == ["self", "force", "wait"]
    source = inspect.getsource(_ExperimentCheckpointManager.sync_up_experiment_state)
    waits = source.index("wait_for_sync()", source.index("if force:"))
    assert waits < source.index("self._storage.syncer.sync_up(")
    from ray.tune.execution.tune_controller import TrialRunnerWrapper

    assert "self._tune_controller = tune_controller" in inspect.getsource(TrialRunnerWrapper.__init__)


def test_checkpoint_deletions_deferred(tmp_path):
    """Tune's checkpoint manager deletes through the module-level `_delete_fs_path` the block
    swaps: inside it a retention deletion is queued, leaving it normally deletes the queue,
    leaving it on an error keeps the folders; Ray's function is put back either way."""
    from ray.train._internal.checkpoint_manager import _CheckpointManager

    assert "_delete_fs_path(fs=checkpoint.filesystem, fs_path=checkpoint.path)" in inspect.getsource(
        _CheckpointManager.register_checkpoint)
    original = checkpoint_manager._delete_fs_path

    def register_three(folder: str) -> list:
        manager = _CheckpointManager(tune.CheckpointConfig(num_to_keep=1))
        paths = []
        for index in range(3):
            path = tmp_path / folder / f"checkpoint_{index}"
            path.mkdir(parents=True)
            manager.register_checkpoint(session._TrainingResult(tune.Checkpoint(str(path)), {}))
            paths.append(path)
        return paths

    with ray_compat.checkpoint_deletions_deferred():
        kept = register_three("ok")
        assert all(path.exists() for path in kept)
    assert [path.exists() for path in kept] == [False, False, True]
    with pytest.raises(RuntimeError), ray_compat.checkpoint_deletions_deferred():
        kept = register_three("error")
        raise RuntimeError("the run failed")
    assert all(path.exists() for path in kept)
    assert checkpoint_manager._delete_fs_path is original

    fs = pyarrow.fs.LocalFileSystem()
    with ray_compat.checkpoint_deletions_deferred():
        for path in kept * 2:  # queued twice, deleted once
            ray_compat.defer_deletion(fs, str(path))
        kept[0].rename(tmp_path / "moved")  # gone meanwhile: nothing to delete
    assert [path.exists() for path in kept] == [False, False, False]


@pytest.mark.slow
def test_learner_lr_schedule_and_connector(ray_start_2_cpus):
    algo = PBTPPO(config={key: value.sample() if isinstance(value, Domain) else value for key, value in param_space(
        load_config(REPO / "tests" / "data" / "tiny.yaml")).items()})
    try:

        def probe(learner):
            module_id = next(iter(learner.module.keys()))
            optimizer = learner.get_optimizers_for_module(module_id)[0][1]
            lr = ray_compat.reset_optimizer_lr(learner, optimizer, 3e-4)
            pieces = [type(piece) for piece in ray_compat.learner_connector(learner)]
            return lr, optimizer.param_groups[0]["lr"], pieces

        lr, in_optimizer, pieces = next(iter(algo.learner_group.foreach_learner(probe))).get()
        assert lr == pytest.approx(3e-4) and in_optimizer == pytest.approx(3e-4)
        assert issubclass(pieces[-1], GeneralAdvantageEstimation)  # GridPPOLearner's NoGradGAE
    finally:
        algo.stop()


def test_train_refuses_an_unverified_ray_with_one_line_and_exit_2(tmp_path):
    """What a user sees after upgrading Ray beside pbt-job: exit 2, one line, nothing trained."""
    import subprocess
    import sys

    fake_upgrade = (
        "import sys, ray; ray.__version__ = '9.9.9'; from pbt_job.cli import main; "
        f"sys.exit(main(['train', '--config', '{REPO / 'tests' / 'data' / 'tiny.yaml'}', '--storage', '{tmp_path}']))"
    )
    done = subprocess.run([sys.executable, "-c", fake_upgrade], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("pbt-job: error:")]
    assert len(errors) == 1 and "ray 9.9.9 is installed" in errors[0] and ray_compat.ACCEPT_VERSION_ENV in errors[0]
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("tiny/*")), "nothing is written"


def test_private_train_batch_key():
    """`pbt_job.result_keys.TUNE_KEYS`: `AlgorithmConfig.to_dict()` names the batch size by its
    private attribute, and `update_from_dict` (what a Tune config becomes) reads that name back."""
    from ray.rllib.algorithms.ppo import PPOConfig

    from pbt_job.result_keys import tune_key

    key = tune_key("train_batch_size_per_learner")
    assert key == "_train_batch_size_per_learner"
    assert PPOConfig().training(train_batch_size_per_learner=333).to_dict()[key] == 333
    assert PPOConfig().update_from_dict({key: 77}).train_batch_size_per_learner == 77


def test_trial_index_from_trial_info(tmp_path):
    """Tune constructs a trainable with `_TrialInfo` under `TRIAL_INFO`, popped by `Trainable.__init__`;
    `BasicVariantGenerator` names its trials in creation order, `<prefix>_00000`, `<prefix>_00001`, ..."""
    from ray.tune.experiment.trial import _TrialInfo
    from ray.tune.result import TRIAL_INFO
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.trainable import Trainable

    assert "config.pop(TRIAL_INFO" in inspect.getsource(Trainable.__init__)
    sampler = BasicVariantGenerator()
    sampler.add_configurations({"x": {"run": PBTPPO, "config": {"a": 1}, "num_samples": 3, "storage_path": str(tmp_path)}})
    trials = [sampler.next_trial() for _ in range(3)]
    assert [ray_compat.trial_index({TRIAL_INFO: _TrialInfo(trial)}) for trial in trials] == [0, 1, 2]
    assert ray_compat.trial_index({"a": 1}) is None
    assert ray_compat.trial_index({TRIAL_INFO: type("Info", (), {"trial_id": "custom-name"})()}) is None
