"""One pbt-job run: the Tuner (new or restored), its seeds, and the run's summary.

`train` is what `pbt-job train` calls once it has proven the storage writable
(`check_storage`, before Ray loads). It decides between a new run and a resume by
`--resume`, refuses a resume whose configuration differs from the stored one, and
ends by writing `summary.json` and the best trial's per-policy weights to `best/`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import pyarrow.fs
import ray
from ray import tune
from ray.tune.search import BasicVariantGenerator

from pbt_job import interruption
from pbt_job.errors import BadInput
from pbt_job.result_keys import metric_value, yaml_name
from pbt_job.run_folder import BEST_DIR, JOB_CONFIG_FILE, SUMMARY_FILE, RunFiles
from pbt_job.storage import StorageLocation, StorageOutage, filesystem, is_outage
from pbt_job.training.algorithm import PBTPPO, build_ppo_config
from pbt_job.training.config import JobConfig, config_to_dict, resume_changes
from pbt_job.training.explore import explore_fn, initial_space, pb2_bounds, pbt_mutations
from pbt_job.training.live_metrics import LiveMetrics
from pbt_job.training.ray_compat import (
    ProgressLog,
    ResultLog,
    checkpoint_deletions_deferred,
    cluster_may_grow,
    failures_while_pending_recovered,
    restores_and_snapshots_announced,
)
from pbt_job.training.rayjob_events import RayJobEventLog
from pbt_job.training.scheduler import LineagePB2, LineagePBT

logger = logging.getLogger(__name__)

ResumeMode = Literal["auto", "never", "must"]
MAX_TRIAL_FAILURES = 3
MODULES_IN_CHECKPOINT = "learner_group/learner/rl_module"


class ResumeError(BadInput):
    """`--resume` contradicts what is in the run folder."""


@dataclass
class TrainOutcome:
    summary: dict[str, Any]
    run_uri: str
    resumed: bool
    errors: int
    interrupted: bool


class RunRecorder(tune.Callback):
    """Keeps per-trial ledgers (iteration, own env steps, config, metric) in `pbt_state.jsonl`."""

    def __init__(self, run_files: RunFiles, metric: str, mutated: list[str]):
        self.run_files = run_files
        self.metric = metric
        self.mutated = mutated
        self._seen_this_session: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_seen_this_session": set()}

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info: Any) -> None:
        ledger = self.run_files.ledger(trial.trial_id)
        ledger.iteration = int(result.get("training_iteration", 0))
        if trial.trial_id not in self._seen_this_session:
            self._seen_this_session.add(trial.trial_id)
            ledger.session_starts.append(ledger.iteration - int(result.get("iterations_since_restore", 1)))
        ledger.env_steps_total += int(result.get("env_runners", {}).get("num_env_steps_sampled", 0) or 0)
        ledger.config = {yaml_name(k): trial.config.get(k) for k in self.mutated}
        ledger.metric = metric_value(result, self.metric)
        self.run_files.save_ledgers_soon()


class PendingDemandLog(tune.Callback):
    """On a cluster that may grow (an autoscaler adds nodes for pending trials), log once a minute
    what the waiting trials ask for and what is free, instead of waiting silently."""

    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s
        self._logged_at = -math.inf
        self._active = False

    def setup(self, **info: Any) -> None:
        self._active, self._logged_at = cluster_may_grow(), time.monotonic()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._active or time.monotonic() - self._logged_at < self.every_s:
            return
        pending = [t for t in trials if t.status == t.PENDING]
        if pending:
            self._logged_at = time.monotonic()
            need = pending[0].placement_group_factory.required_resources
            logger.warning(
                "[resources] %d trial(s) waiting, each for %s; free now %s of %s",
                len(pending), _amounts(need), _amounts(ray.available_resources(), need), _amounts(ray.cluster_resources(), need),
            )


def _amounts(resources: dict[str, float], names: Any = None) -> str:
    return ", ".join(f"{resources.get(name, 0.0):g} {name}" for name in sorted(names or resources))


def param_space(job: JobConfig) -> dict[str, Any]:
    """The PPO config as Tune's param space, mutated keys drawn from their domains."""
    space = build_ppo_config(job).to_dict()
    space.update(initial_space(job.pbt))
    return space


def initial_sampler(job: JobConfig) -> BasicVariantGenerator:
    """Tune's default search algorithm, seeded: one `pbt.seed` draws the same initial configs, trial by trial."""
    return BasicVariantGenerator(random_state=job.pbt.seed)


def build_scheduler(job: JobConfig, run_files: RunFiles) -> LineagePBT | LineagePB2:
    """`pbt.scheduler`: PBT explores by perturbing, PB2 with a GP bandit over each mutation's bounds."""
    pbt = job.pbt
    common = dict(
        run_files=run_files,
        seed=pbt.seed,
        time_attr="training_iteration",
        metric=pbt.metric,
        mode=pbt.mode,
        perturbation_interval=pbt.perturbation_interval,
        quantile_fraction=pbt.quantile_fraction,
        custom_explore_fn=explore_fn(pbt),
        synch=pbt.synch,
        log_config=False,  # lineage.jsonl records every exploit; Tune's pbt_global.txt would repeat it
    )
    if pbt.scheduler == "pb2":
        return LineagePB2(hyperparam_bounds=pb2_bounds(pbt), **common)
    return LineagePBT(resample_probability=pbt.resample_probability, hyperparam_mutations=pbt_mutations(pbt), **common)


def _tune_storage(location: StorageLocation) -> tuple[str, pyarrow.fs.FileSystem | None]:
    return location.path, (filesystem(location) if location.is_s3 else None)


def train(
    job: JobConfig,
    location: StorageLocation,
    name: str,
    resume: ResumeMode = "auto",
    progress_reporter: Any = None,
) -> TrainOutcome:
    """Train the population, or continue the run stored under `location/name`.

    The caller has checked `location` (`pbt_job.storage.check_storage`; `pbt-job train`
    does so before Ray loads). A resume continues with the stored configuration
    (`job_config.json`); `job` must equal it but for `RESUME_APPLIED` keys. A new run
    reports with `progress_reporter`; a resumed one with the reporter Tune stored in
    `tuner.pkl` (the same columns, the configuration being the same).

    Raises:
        ResumeError: `resume` forbids what the run folder holds, or `job` differs from
            the stored configuration in a key a resume cannot change.
    """
    storage_path, storage_fs = _tune_storage(location)
    run_path = location.join(name)
    exists = tune.Tuner.can_restore(run_path, storage_filesystem=storage_fs)
    if exists and resume == "never":
        raise ResumeError(
            f"{location.display(name)} already holds a run; pass --resume auto to continue it or --name NEW for a new one"
        )
    if not exists and resume == "must":
        raise ResumeError(f"--resume must: {location.display(name)} holds no run to resume")

    run_files = RunFiles(partial(filesystem, location), run_path)
    if exists:
        _check_resume_config(run_files, job, location.display(name))
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    if not cluster_may_grow():
        _check_one_trial_fits(job, ray.cluster_resources())
    mutated = list(initial_space(job.pbt))
    if exists:
        logger.info("[resume] continuing %s", location.display(name))
        tuner = tune.Tuner.restore(run_path, trainable=PBTPPO, storage_filesystem=storage_fs, resume_errored=True)
    else:
        run_files.write_json(JOB_CONFIG_FILE, config_to_dict(job))
        tuner = tune.Tuner(
            PBTPPO,
            param_space=param_space(job),
            tune_config=tune.TuneConfig(
                scheduler=build_scheduler(job, run_files),
                search_alg=initial_sampler(job),
                num_samples=job.pbt.population,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                stop=job.stop.model_dump(exclude_none=True),
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=job.checkpoints.num_to_keep,
                    checkpoint_frequency=job.checkpoints.frequency,
                    checkpoint_at_end=job.checkpoints.at_end,
                ),
                failure_config=tune.FailureConfig(max_failures=MAX_TRIAL_FAILURES),
                callbacks=[
                    RunRecorder(run_files, job.pbt.metric, mutated),
                    LiveMetrics(run_files, job.pbt.mode, mutated),
                    RayJobEventLog(run_files, job.pbt.mode),
                    ResultLog(),
                    ProgressLog(),
                    PendingDemandLog(),
                ],
                progress_reporter=progress_reporter,
                verbose=1,
            ),
        )
    try:
        with (
            checkpoint_deletions_deferred(),
            failures_while_pending_recovered(),
            restores_and_snapshots_announced(),
            interruption.passed_to_tune(),
        ):
            results = tuner.fit()
    except Exception as err:
        outage = _storage_outage_behind(err)
        if outage is None:
            raise
        raise outage from err
    interrupted = interruption.received() is not None
    summary = write_summary(run_files, results, job.pbt.metric, job.pbt.mode, mutated, interrupted)
    return TrainOutcome(summary=summary, run_uri=location.display(name), resumed=exists, errors=len(results.errors),
                        interrupted=interrupted)


class ResourcesError(BadInput):
    """A trial needs more of a resource than the whole (fixed-size) Ray cluster has."""


def _check_one_trial_fits(job: JobConfig, cluster: dict[str, float]) -> None:
    """On a cluster that cannot grow, a trial needing more than it has would stay pending forever."""
    need = PBTPPO.default_resource_request(build_ppo_config(job)).required_resources
    short = [name for name, amount in need.items() if amount > cluster.get(name, 0.0) + 1e-9]
    if short:
        raise ResourcesError(
            f"resources: one trial needs {_amounts(need, short)} but this Ray cluster has {_amounts(cluster, short)} "
            "in all; lower resources.num_cpus_per_trial, num_env_runners x num_cpus_per_env_runner, num_learners "
            "or num_gpus_per_learner, or run on a larger cluster"
        )


def _check_resume_config(run_files: RunFiles, job: JobConfig, where: str) -> None:
    """Refuse a resume whose configuration differs from the stored one; apply and log the keys it may change.

    Tune restores the run's pickled scheduler, search space, stop criteria and
    checkpoint settings (`Tuner.restore` takes no new ones), so a changed population,
    mutation, metric or stop would half apply: refused, naming the keys.
    """
    stored = run_files.read_json(JOB_CONFIG_FILE)
    if stored is None:
        logger.warning("[resume] %s has no readable %s: the configuration cannot be compared", where, JOB_CONFIG_FILE)
        return
    new = config_to_dict(job)
    refused, applied = resume_changes(stored, new)
    if refused:
        raise ResumeError(
            f"{where} was started with another configuration; a resume cannot change {', '.join(refused)} "
            f"(Tune restores the run as stored): resume with the stored values ({where}/{JOB_CONFIG_FILE}) "
            "or start a new run with --name NEW"
        )
    if applied:
        for key in applied:
            logger.info("[resume] %s: %s -> %s (applied)", key, stored.get(key), new.get(key))
        run_files.write_json(JOB_CONFIG_FILE, {**stored, **{key: new[key] for key in applied}})


def _storage_outage_behind(err: BaseException) -> StorageOutage | None:
    """The storage outage behind a failed `fit`, or None: Tune wraps a callback's `StorageOutage`
    in its own `TuneError`, and its own reads and writes raise plain `OSError`s, of which only
    outages (`is_outage`) count; a permission error or too many open files fails as itself."""
    while err is not None:
        if isinstance(err, StorageOutage):
            return err
        if is_outage(err):
            return StorageOutage.stopped("Tune was saving or reading the experiment state", err)
        err = err.__cause__ or err.__context__
    return None


def write_summary(
    run_files: RunFiles, results: Any, metric: str, mode: str, mutated: list[str], interrupted: bool
) -> dict[str, Any]:
    """`summary.json` and `best/<policy>/` from the final results (so far, for an interrupted run)."""
    wall_time_s = run_files.wall_time()
    ledgers = run_files.ledgers()
    scored = [r for r in results  # a trial stopped mid-restore reports no result of its own ("default")
              if r.metrics and r.metrics.get("trial_id") in ledgers and metric_value(r.metrics, metric) is not None]
    pick = max if mode == "max" else min
    best = pick(scored, key=lambda r: metric_value(r.metrics, metric)) if scored else None
    env_steps = sum(ledger.env_steps_total for ledger in ledgers.values())
    summary: dict[str, Any] = {
        "status": "interrupted" if interrupted else "finished",
        "metric": metric,
        "mode": mode,
        "best_trial": best.metrics.get("trial_id") if best else None,
        "best_metric": metric_value(best.metrics, metric) if best else None,
        "best_hyperparameters": {yaml_name(k): best.config.get(k) for k in mutated} if best else {},
        "exploits": len(run_files.lineage()),
        "skipped_exploits": len(run_files.skips()),
        "env_steps_total": env_steps,
        "wall_time_s": round(wall_time_s, 3),
        "env_steps_per_s": round(env_steps / wall_time_s, 3) if wall_time_s > 0 else None,
        "trials": {
            trial_id: {"iteration": l.iteration, "metric": l.metric, "env_steps_total": l.env_steps_total, "hyperparameters": l.config}
            for trial_id, l in ledgers.items()
        },
        "errors": len(results.errors),
    }
    if best is not None and best.checkpoint is not None:
        summary["best_checkpoint"] = best.checkpoint.path
        _export_best_weights(run_files, best.checkpoint)
    run_files.write_json(SUMMARY_FILE, summary)
    run_files.save_ledgers()
    return summary


def _export_best_weights(run_files: RunFiles, checkpoint: Any) -> None:
    """Copy each policy's RLModule (loadable with `RLModule.from_checkpoint`) to `best/<policy>/`."""
    fs, dest = run_files.fs, run_files.path(BEST_DIR)
    if fs.get_file_info(dest).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(dest)
    pyarrow.fs.copy_files(
        f"{checkpoint.path}/{MODULES_IN_CHECKPOINT}",
        dest,
        source_filesystem=checkpoint.filesystem,
        destination_filesystem=fs,
        use_threads=False,
    )
