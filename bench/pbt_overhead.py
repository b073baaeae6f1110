"""PBT overhead and exploit cost of pbt-job, on this machine, in one process run.

1. PBT overhead: the same population, iterations, batch sizes and checkpoint
   settings run once with no scheduler (Tune's default FIFO) and once under
   pbt-job's `train` (LineagePBT); both on local storage in a temp dir, both in
   one `ray.init(num_cpus=2)`, FIFO first. Figure: env steps/s of the whole
   `Tuner.fit`, and overhead = 1 - pbt_sps / fifo_sps.
2. Exploit cost through an S3 server (moto, no auth): a donor saves its
   checkpoint and uploads it, a recipient downloads it and loads it, 5 times,
   at the reference game's default model size.

Prints exactly one JSON line on stdout; everything else (Ray, Tune, logs) goes
to stderr. Instrumentation only wraps driver-side calls with timers (no
behaviour changes; nothing in pbt_job is modified).

    .venv/bin/python bench/pbt_overhead.py > /tmp/pbt_overhead.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import inspect
import math
import json
import logging
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REFERENCE_CONFIG = REPO / "configs" / "reference.yaml"

# Reference figures (constants): plain Ray Tune PBT measured by the issue author, and the targets.
REFERENCE = {
    "issue_author_plain_tune_pbt_env_steps_per_s": 262.0,
    "issue_author_fifo_env_steps_per_s": 343.0,
    "issue_author_overhead": round(1 - 262.0 / 343.0, 4),  # 0.236 ("24 %")
    "target_overhead_max": 0.05,
    "target_exploit_s_max": 2.0,
}

from ray import tune  # noqa: E402

from pbt_job.training.algorithm import PBTPPO  # noqa: E402
from pbt_job.training.run import RunRecorder  # noqa: E402

logger = logging.getLogger("bench.pbt_overhead")

# Driver-side timeline, filled by the callbacks below (module level: Tune may copy callbacks).
TIMELINE: dict[str, list[dict[str, Any]]] = {"fifo": [], "pbt": []}
TIMERS: dict[str, list[float]] = {}
MODE = {"name": "fifo"}


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    import ray
    import torch

    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
                break

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.rstrip()
        except (OSError, subprocess.CalledProcessError):
            return None

    dirty = git("status", "--porcelain", "--untracked-files=no")
    diff = git("diff", "HEAD", "--", "pbt_job")
    return {
        "cpu_model": cpu_model,
        "nproc": len(os.sched_getaffinity(0)),
        "os_cpu_count": os.cpu_count(),
        "ram_total_bytes": mem_total,
        "ram_total_gib": round(mem_total / 2**30, 2) if mem_total else None,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_tracked_files_dirty": bool(dirty) if dirty is not None else None,
        "git_modified_files": [line[3:] for line in dirty.splitlines()] if dirty else [],
        "git_pbt_job_uncommitted_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
    }


# --------------------------------------------------------------------------- instrumentation


def timed(owner: Any, name: str, key: str) -> None:
    """Wrap `owner.name` with a wall-clock timer recorded under TIMERS[key] (behaviour unchanged)."""
    static = isinstance(inspect.getattr_static(owner, name), staticmethod)
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMERS.setdefault(f"{MODE['name']}:{key}", []).append(time.perf_counter() - started)

    setattr(owner, name, staticmethod(wrapper) if static else wrapper)


def install_timers() -> None:
    from ray import tune
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.schedulers import PopulationBasedTraining

    from pbt_job.training.run_files import RunFiles
    from pbt_job.training.scheduler import LineagePBT

    timed(tune.Tuner, "fit", "tuner_fit")
    timed(LineagePBT, "_pin", "pin_copy")
    timed(LineagePBT, "_delete_pins", "delete_pins")  # includes the forced experiment-state save
    timed(LineagePBT, "_exploit", "exploit_driver")  # Tune's _exploit + pin copy + lineage write
    timed(PopulationBasedTraining, "_checkpoint_or_exploit", "checkpoint_or_exploit")  # may block on donor save
    timed(LineagePBT, "on_trial_result", "scheduler_on_trial_result")
    timed(RunFiles, "save_ledgers", "save_ledgers")
    timed(RunFiles, "record", "lineage_record")
    timed(TuneController, "checkpoint", "experiment_checkpoint")


class TimelineMixin:
    """Appends driver-side trial events to TIMELINE[MODE] (start, restore, save, checkpoint, result)."""

    def _event(self, kind: str, trial: Any, **extra: Any) -> None:
        TIMELINE[MODE["name"]].append({"t": time.time(), "kind": kind, "trial": trial.trial_id, **extra})

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event("start", trial)
        super().on_trial_start(iteration, trials, trial, **info)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event("restore", trial)
        super().on_trial_restore(iteration, trials, trial, **info)

    def on_trial_save(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event("save", trial)
        super().on_trial_save(iteration, trials, trial, **info)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self._event("checkpoint", trial, path=getattr(checkpoint, "path", None))
        super().on_checkpoint(iteration, trials, trial, checkpoint, **info)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event("error", trial)
        super().on_trial_error(iteration, trials, trial, **info)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event("recover", trial)
        super().on_trial_recover(iteration, trials, trial, **info)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._event(
            "result",
            trial,
            training_iteration=int(result.get("training_iteration", 0)),
            iterations_since_restore=int(result.get("iterations_since_restore", 0)),
            time_this_iter_s=float(result.get("time_this_iter_s", 0.0)),
            env_steps=int((result.get("env_runners") or {}).get("num_env_steps_sampled", 0) or 0),
            step_env_steps_per_s=result.get("env_steps_per_s"),
        )
        super().on_trial_result(iteration, trials, trial, result, **info)


class _NaNSafeScore:
    """Workaround for a pbt_job bug (bench only): RLlib 2.60 reports `env_runners/num_episodes` as
    NaN in an iteration that finished no episode once one has finished before, and
    `EpisodeReturnScore.update` does `int(NaN or 0)` -> ValueError, failing the trial. NaN -> 0."""

    def __init__(self, score: Any):
        self._inner = score
        self.nan_count = 0

    def update(self, env_runners: dict[str, Any]) -> float:
        count = env_runners.get("num_episodes")
        if isinstance(count, float) and math.isnan(count):
            self.nan_count += 1
            env_runners = {**env_runners, "num_episodes": 0}
        return self._inner.update(env_runners)


class GuardedPBTPPO(PBTPPO):
    """PBTPPO with only the NaN workaround above; used by both modes unless --no-nan-guard."""

    def setup(self, config: Any) -> None:
        super().setup(config)
        self._score = _NaNSafeScore(self._score)

    def step(self) -> dict[str, Any]:
        result = super().step()
        result["bench_nan_num_episodes_guarded"] = self._score.nan_count
        return result


class FifoTimeline(TimelineMixin, tune.Callback):
    """The FIFO run's only callback."""


class RecorderTimeline(TimelineMixin, RunRecorder):
    """pbt-job's RunRecorder (what train() installs) plus the timeline."""


def timeline_summary(mode: str, wall_s: float, population: int) -> dict[str, Any]:
    """Per mode: busy (inside Algorithm.step) vs. idle trial-seconds, actor starts, restores, checkpoints."""
    events = TIMELINE[mode]
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_trial.setdefault(event["trial"], []).append(event)
    busy = sum(e["time_this_iter_s"] for e in events if e["kind"] == "result")
    step_sps = [e["step_env_steps_per_s"] for e in events if e["kind"] == "result" and e.get("step_env_steps_per_s")]
    # Non-training time of a trial between two consecutive results (checkpoint saves, actor
    # restart + restore, driver blocking), and from its actor start to its first result.
    gaps, first_result_delays = [], []
    for trial_events in by_trial.values():
        first_start = next((e["t"] for e in trial_events if e["kind"] == "start"), None)
        last_result = None
        for event in trial_events:
            if event["kind"] != "result":
                continue
            if last_result is not None:
                gaps.append(event["t"] - last_result - event["time_this_iter_s"])
            elif first_start is not None:
                first_result_delays.append(event["t"] - first_start - event["time_this_iter_s"])
            last_result = event["t"]
    restarted = [e for e in events if e["kind"] == "result" and e["iterations_since_restore"] == 1 and e["training_iteration"] > 1]
    return {
        "results": sum(1 for e in events if e["kind"] == "result"),
        "actor_starts": sum(1 for e in events if e["kind"] == "start"),
        "restores": sum(1 for e in events if e["kind"] == "restore"),
        "results_right_after_restore": len(restarted),
        "checkpoints_registered": sum(1 for e in events if e["kind"] == "checkpoint"),
        "trial_failures_recovered": sum(1 for e in events if e["kind"] == "recover"),
        "trial_errors": sum(1 for e in events if e["kind"] == "error"),
        "trial_seconds_available": round(population * wall_s, 3),
        "trial_seconds_in_step": round(busy, 3),
        "share_of_trial_time_in_step": round(busy / (population * wall_s), 4) if wall_s > 0 else None,
        "idle_between_results_s": round(sum(gaps), 3),
        "idle_before_first_result_s": round(sum(first_result_delays), 3),
        "max_gap_between_results_s": round(max(gaps), 3) if gaps else None,
        "mean_in_step_env_steps_per_s": round(statistics.mean(step_sps), 2) if step_sps else None,
    }


# --------------------------------------------------------------------------- part 1: PBT vs FIFO


def bench_job(args: argparse.Namespace):
    """The reference game and model, resized so both modes finish in minutes on 2 cores."""
    import yaml

    from pbt_job.training.config import JobConfig

    data = yaml.safe_load(REFERENCE_CONFIG.read_text())
    data["name"] = "bench"
    data["ppo"] = {
        "train_batch_size_per_learner": args.train_batch,
        "minibatch_size": args.minibatch,
        "num_epochs": args.epochs,
    }
    data["resources"] = {"num_env_runners": 0, "num_cpus_per_trial": 1.0}
    data["pbt"]["population"] = args.population
    data["pbt"]["perturbation_interval"] = args.interval
    data["pbt"]["mutations"] = {  # batch sizes and epochs stay fixed: equal work per iteration in both modes
        "lr": {"type": "choice", "values": [1.0e-3, 5.0e-4, 1.0e-4]},
        "clip_param": {"type": "uniform", "low": 0.1, "high": 0.3},
        "entropy_coeff": {"type": "choice", "values": [0.0, 1.0e-3, 5.0e-3]},
    }
    data["stop"] = {"training_iteration": args.iterations}
    data["checkpoints"] = {"frequency": 1, "num_to_keep": 2, "at_end": True}
    data["metrics_port"] = 0
    return JobConfig.model_validate(data)


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)


def steps_from_result_files(run_dir: Path) -> dict[str, int]:
    """Per trial folder: sum of env_runners/num_env_steps_sampled over every row of result.json."""
    steps = {}
    for result_file in sorted(run_dir.glob("*/result.json")):
        total = 0
        for line in result_file.read_text().splitlines():
            if line.strip():
                total += int((json.loads(line).get("env_runners") or {}).get("num_env_steps_sampled", 0) or 0)
        steps[result_file.parent.name] = total
    return steps


def timer_stats(mode: str) -> dict[str, Any]:
    out = {}
    for key, values in sorted(TIMERS.items()):
        prefix, _, name = key.partition(":")
        if prefix == mode and name != "tuner_fit":
            out[name] = {"calls": len(values), "total_s": round(sum(values), 3), "max_s": round(max(values), 3)}
    return out


def run_fifo(job, storage: Path, trainable: type) -> dict[str, Any]:
    from pbt_job.training.run import MAX_TRIAL_FAILURES, param_space

    MODE["name"] = "fifo"
    seed_everything(job.pbt.seed)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(job),
        tune_config=tune.TuneConfig(num_samples=job.pbt.population),
        run_config=tune.RunConfig(
            name="fifo",
            storage_path=str(storage),
            stop=job.stop.model_dump(exclude_none=True),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=job.checkpoints.num_to_keep,
                checkpoint_frequency=job.checkpoints.frequency,
                checkpoint_at_end=job.checkpoints.at_end,
            ),
            failure_config=tune.FailureConfig(max_failures=MAX_TRIAL_FAILURES),
            callbacks=[FifoTimeline()],
            verbose=1,
        ),
    )
    logger.info("[bench] FIFO: %d trials x %d iterations", job.pbt.population, job.stop.training_iteration)
    started = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - started
    fit_wall = TIMERS["fifo:tuner_fit"][-1]
    per_trial = steps_from_result_files(storage / "fifo")
    steps = sum(per_trial.values())
    return {
        "env_steps": steps,
        "env_steps_per_trial": per_trial,
        "iterations_per_trial": {r.metrics.get("trial_id"): r.metrics.get("training_iteration") for r in results},
        "wall_s": round(fit_wall, 3),
        "wall_s_including_tuner_build": round(wall, 3),
        "env_steps_per_s": round(steps / fit_wall, 3),
        "errors": len(results.errors),
        "timeline": timeline_summary("fifo", fit_wall, job.pbt.population),
        "driver_timers": timer_stats("fifo"),
    }


def run_pbt(job, storage: Path, trainable: type) -> dict[str, Any]:
    from pbt_job.storage import parse_storage_uri
    from pbt_job.training import run as run_module
    from pbt_job.training.run_files import parse_lineage

    MODE["name"] = "pbt"
    seed_everything(job.pbt.seed)
    # Same callback as train() builds, plus the driver-side timeline (looked up at call time).
    original_recorder, original_trainable = run_module.RunRecorder, run_module.PBTPPO
    run_module.RunRecorder, run_module.PBTPPO = RecorderTimeline, trainable
    logger.info("[bench] PBT: %d trials x %d iterations, perturbation interval %d",
                job.pbt.population, job.stop.training_iteration, job.pbt.perturbation_interval)
    try:
        started = time.perf_counter()
        outcome = run_module.train(job, parse_storage_uri(str(storage)), "pbt", resume="never")
        train_wall = time.perf_counter() - started
    finally:
        run_module.RunRecorder, run_module.PBTPPO = original_recorder, original_trainable
    fit_wall = TIMERS["pbt:tuner_fit"][-1]
    run_dir = storage / "pbt"
    per_trial = steps_from_result_files(run_dir)
    steps = sum(per_trial.values())
    ledgers = json.loads((run_dir / "pbt_state.jsonl").read_text())
    ledger_steps = sum(int(t.get("env_steps_total", 0)) for t in ledgers["trials"].values())
    lineage_file = run_dir / "lineage.jsonl"
    events = parse_lineage(lineage_file.read_text()) if lineage_file.exists() else []
    exploits = [e for e in events if e.get("event", "exploit") == "exploit"]
    pins_left = sorted(str(p.relative_to(run_dir)) for p in run_dir.glob("*/pinned/*"))
    return {
        "env_steps": steps,
        "env_steps_per_trial": per_trial,
        "env_steps_from_pbt_state_ledgers": ledger_steps,
        "iterations_per_trial": {tid: t.get("iteration") for tid, t in ledgers["trials"].items()},
        "wall_s": round(fit_wall, 3),
        "wall_s_train_call": round(train_wall, 3),
        "env_steps_per_s": round(steps / fit_wall, 3),
        "env_steps_per_s_train_call": round(steps / train_wall, 3),
        "summary_json_env_steps_per_s": outcome.summary.get("env_steps_per_s"),
        "exploits": len(exploits),
        "skipped_exploits": sum(1 for e in events if e.get("event") == "skip"),
        "exploit_iterations": [e.get("iteration") for e in exploits],
        "pins_left_at_end": pins_left,
        "errors": outcome.errors,
        "timeline": timeline_summary("pbt", fit_wall, job.pbt.population),
        "driver_timers": timer_stats("pbt"),
    }


# --------------------------------------------------------------------------- part 2: exploit via S3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dir_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def stats(values: list[float]) -> dict[str, float]:
    return {"mean_s": round(statistics.mean(values), 4), "min_s": round(min(values), 4), "max_s": round(max(values), 4)}


def bench_exploit(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import boto3
    import pyarrow.fs
    from moto.server import ThreadedMotoServer

    from pbt_job.storage import filesystem, parse_storage_uri
    from pbt_job.training.algorithm import PBTPPO, build_ppo_config
    from pbt_job.training.config import load_config
    from pbt_job.training.model import default_conv_channels, default_hidden_sizes

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    bucket = "pbt-bench"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    location = parse_storage_uri(f"s3://{bucket}/x")
    s3 = filesystem(location)
    local = pyarrow.fs.LocalFileSystem()
    try:
        # Default env 25 x 25, default model (what sets the checkpoint size), default ppo settings but
        # the warm-up iteration's batch (it only has to create the optimizer state).
        warmup = [f"ppo.train_batch_size_per_learner={args.exploit_train_batch}",
                  f"ppo.minibatch_size={min(args.exploit_train_batch, 256)}", "ppo.num_epochs=1"]
        job = load_config(REFERENCE_CONFIG, warmup if args.exploit_train_batch else [])
        logger.info("[bench] exploit: building donor and recipient PBTPPO (reference game, default model)")
        started = time.perf_counter()
        donor = PBTPPO(config=build_ppo_config(job))
        build_s = time.perf_counter() - started
        recipient = PBTPPO(config=build_ppo_config(job))
        started = time.perf_counter()
        donor.train()  # optimizer state exists after one update
        train_s = time.perf_counter() - started
        logger.info("[bench] exploit: donor built in %.1f s, one train() in %.1f s", build_s, train_s)
        save, restore, total = [], [], []
        size = files = None
        for i in range(args.exploits):
            src = tmp / f"donor_{i}"
            dst = tmp / f"recipient_{i}"
            remote = location.join(f"exploit_{i:02d}")
            t0 = time.perf_counter()
            donor.save_to_path(str(src))
            pyarrow.fs.copy_files(str(src), remote, source_filesystem=local, destination_filesystem=s3, use_threads=False)
            t1 = time.perf_counter()
            pyarrow.fs.copy_files(remote, str(dst), source_filesystem=s3, destination_filesystem=local, use_threads=False)
            recipient.load_checkpoint(str(dst))
            t2 = time.perf_counter()
            save.append(t1 - t0)
            restore.append(t2 - t1)
            total.append(t2 - t0)
            size, files = dir_size(src)
            logger.info("[bench] exploit %d: save+upload %.3f s, download+load %.3f s", i, t1 - t0, t2 - t1)
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(dst, ignore_errors=True)
        policies = job.env.policies
        donor.stop()
        recipient.stop()
        return {
            "n": args.exploits,
            "storage": "moto ThreadedMotoServer on 127.0.0.1 (no auth), pyarrow S3FileSystem via pbt_job.storage.filesystem",
            "copy_files_use_threads": False,
            "model": {
                "policies": list(policies),
                "conv_channels_predator_obs7": default_conv_channels(job.env.obs_range_predator),
                "conv_channels_prey_obs9": default_conv_channels(job.env.obs_range_prey),
                "hidden_sizes": default_hidden_sizes(9),
            },
            "warmup_overrides": warmup if args.exploit_train_batch else [],
            "checkpoint_bytes": size,
            "checkpoint_files": files,
            "donor_build_s": round(build_s, 3),
            "donor_first_train_s": round(train_s, 3),
            "save_upload": stats(save),
            "download_restore": stats(restore),
            "total": stats(total),
        }
    finally:
        server.stop()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6, help="training iterations per trial (default 6)")
    parser.add_argument("--population", type=int, default=2, help="trials (default 2)")
    parser.add_argument("--interval", type=int, default=2, help="PBT perturbation interval (default 2)")
    parser.add_argument("--train-batch", type=int, default=128, help="train_batch_size_per_learner (default 128)")
    parser.add_argument("--minibatch", type=int, default=128, help="minibatch_size (default 128)")
    parser.add_argument("--epochs", type=int, default=2, help="num_epochs (default 2)")
    parser.add_argument("--exploit-train-batch", type=int, default=128,
                        help="train batch of the exploit part's single warm-up iteration (0: the default 1024, 10 epochs)")
    parser.add_argument("--no-nan-guard", action="store_true",
                        help="run pbt_job's PBTPPO as is (trials fail on NaN num_episodes, see GuardedPBTPPO)")
    parser.add_argument("--exploits", type=int, default=5, help="save/restore rounds through S3 (default 5)")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp run folders (path logged)")
    parser.add_argument("--skip-overhead", action="store_true", help="only the exploit-cost part")
    parser.add_argument("--skip-exploit", action="store_true", help="only the overhead part")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Exactly one line on the real stdout: everything else written to fd 1 (Tune's reporter,
    # prints of libraries) goes to stderr.
    real_stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("ray", "filelock", "urllib3", "botocore", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("ray.tune.schedulers.pbt").setLevel(logging.INFO)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # as the CLI

    import ray

    started = time.perf_counter()
    out: dict[str, Any] = {"benchmark": "pbt_overhead", "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out["machine"] = machine()
    out["reference"] = REFERENCE
    out["settings"] = {k: v for k, v in vars(args).items()}
    install_timers()
    tmp = Path(tempfile.mkdtemp(prefix="pbt-bench-"))
    out["settings"]["tmp_dir"] = str(tmp)
    try:
        if not args.skip_overhead:
            job = bench_job(args)
            out["settings"].update(
                game="configs/reference.yaml default env (25 x 25, max_steps 1000), default model",
                num_cpus_per_trial=job.resources.num_cpus_per_trial,
                num_env_runners=job.resources.num_env_runners,
                mutations=sorted(job.pbt.mutations),
                quantile_fraction=job.pbt.quantile_fraction,
                checkpoint_frequency=job.checkpoints.frequency,
                num_to_keep=job.checkpoints.num_to_keep,
                checkpoint_at_end=job.checkpoints.at_end,
                storage="local temp dir",
            )
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            with contextlib.suppress(Exception):
                out["ray_session_dir"] = ray._private.worker._global_node.get_session_dir_path()
            trainable = PBTPPO if args.no_nan_guard else GuardedPBTPPO
            out["settings"]["trainable"] = trainable.__name__
            fifo = run_fifo(job, tmp, trainable)
            pbt = run_pbt(job, tmp, trainable)
            out["fifo"], out["pbt"] = fifo, pbt
            out["overhead"] = round(1 - pbt["env_steps_per_s"] / fifo["env_steps_per_s"], 4)
            out["overhead_train_call"] = round(1 - pbt["env_steps_per_s_train_call"] / fifo["env_steps_per_s"], 4)
            out["overhead_meets_target"] = out["overhead"] <= REFERENCE["target_overhead_max"]
            # Env speed varies with the number of live agents (it differs between runs and after a clone
            # starts a fresh episode); the share of trial time spent inside Algorithm.step() does not.
            share_fifo = fifo["timeline"]["share_of_trial_time_in_step"]
            share_pbt = pbt["timeline"]["share_of_trial_time_in_step"]
            if share_fifo and share_pbt:
                out["overhead_by_time_in_step"] = round(1 - share_pbt / share_fifo, 4)
        if not args.skip_exploit:
            exploit = bench_exploit(args, tmp)
            exploit["meets_target"] = exploit["total"]["mean_s"] <= REFERENCE["target_exploit_s_max"]
            out["exploit_s3"] = exploit
    finally:
        if args.keep_dir:
            logger.info("[bench] run folders kept in %s", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        if ray.is_initialized():
            ray.shutdown()
    out["script_wall_s"] = round(time.perf_counter() - started, 1)
    real_stdout.write(json.dumps(out, sort_keys=False, default=str) + "\n")
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
