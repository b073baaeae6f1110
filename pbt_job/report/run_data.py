"""A run folder read into plain values: each trial's results, the exploits, the summary.

Works on a finished run and on one still training (it reads what is there), local
or on S3 through the same pyarrow filesystem. The format of pbt-job's files is
`pbt_job.run_folder`'s, read through a reader `RunFiles` (nothing cached, so the new
lines of a run still training are seen); nothing here imports `pbt_job.training` or
Ray. Every file is untrusted input: a malformed line is skipped with a warning; only
JSON is parsed, never Tune's pickles.

Where the numbers come from:

* `<trial folder>/result.json` (Tune, one line per iteration): iteration, time,
  the iteration's duration, the PBT metric, per-policy returns, the mutated hyperparameters.
* `lineage.jsonl`: the exploits; `summary.json`: the final numbers of a finished
  run; `pbt_state.jsonl`: env steps and wall time of a run still training.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow.fs

from pbt_job.errors import BadInput
from pbt_job.report.ancestry import Exploit
from pbt_job.result_keys import SCORE_KEY, metric_value, tune_key
from pbt_job.run_folder import JOB_CONFIG_FILE, RESULT_FILE, SUMMARY_FILE, RunFiles, TrialLedger, json_lines
from pbt_job.storage import StorageLocation, check_readable, filesystem, parse_storage_uri, read_text

logger = logging.getLogger(__name__)

EXPLOIT_FIELDS = ("recipient", "donor", "donor_iteration", "time")
"""What the report needs of a lineage event."""


class NotARunError(BadInput):
    """The path given is not a pbt-job run folder."""


@dataclass(frozen=True)
class Result:
    """One training iteration of one trial.

    Attributes:
        iteration: Tune's `training_iteration` (a clone gives the recipient the donor's count).
        time: When it was reported (seconds since the epoch).
        seconds: How long the iteration trained (`time_this_iter_s`; 0 when missing).
        metric: The PBT metric, None when missing or not finite.
        returns: Mean episode return per policy; policies without a finished episode are left out.
        hyperparameters: The mutated hyperparameters it trained with (YAML names).
    """

    iteration: int
    time: float
    seconds: float
    metric: float | None
    returns: dict[str, float]
    hyperparameters: dict[str, float]


@dataclass(frozen=True)
class RunData:
    """What a run folder holds.

    Attributes:
        name: The run's name (its folder's name).
        location: Where the run folder is.
        metric: The PBT metric (a `/`-separated result key) and `mode`, "max" or "min".
        mutations: The mutated hyperparameters (YAML names).
        results: Trial id -> its results in the order Tune wrote them.
        exploits: From `lineage.jsonl`, in time order.
        summary: `summary.json`, None while the run has not finished.
        ledgers: Per-trial counters from `pbt_state.jsonl`.
        wall_time_s: Seconds trained so far, from `pbt_state.jsonl`.
    """

    name: str
    location: StorageLocation
    metric: str
    mode: str
    mutations: list[str]
    results: dict[str, list[Result]]
    exploits: list[Exploit]
    summary: dict[str, Any] | None
    ledgers: dict[str, TrialLedger]
    wall_time_s: float | None

    @property
    def trials(self) -> list[str]:
        """Every trial seen in results, lineage or ledgers, sorted."""
        seen = set(self.results) | set(self.ledgers)
        for exploit in self.exploits:
            seen |= {exploit.recipient, exploit.donor}
        return sorted(seen)

    @property
    def policies(self) -> list[str]:
        return sorted({policy for results in self.results.values() for r in results for policy in r.returns})

    def best_trial(self) -> str | None:
        """The summary's best trial; while running, the trial whose latest metric is best."""
        if self.summary and isinstance(self.summary.get("best_trial"), str):
            return self.summary["best_trial"]
        latest = {trial: rs[-1].metric for trial, rs in self.results.items() if rs and rs[-1].metric is not None}
        if not latest:
            return None
        pick = max if self.mode == "max" else min
        return pick(latest, key=latest.__getitem__)


def load_run(run: str) -> RunData:
    """Read the run folder `run` (a path, `file://...` or `s3://bucket/prefix/name`).

    Raises:
        NotARunError: `run` does not exist, cannot be read, or holds no `job_config.json`.
        StorageError: `run` is not a usable URI, or its S3 endpoint or bucket cannot be read.
    """
    location = parse_storage_uri(run)
    check_readable(location)  # a dead or hung endpoint is named in seconds, before any read waits on it
    files = RunFiles(partial(filesystem, location), location.path, writer=False)
    fs = files.fs
    job = _job_config(fs, files, location)
    pbt = job.get("pbt") if isinstance(job.get("pbt"), dict) else {}
    metric = pbt.get("metric") if isinstance(pbt.get("metric"), str) else SCORE_KEY
    mutations = sorted(pbt["mutations"]) if isinstance(pbt.get("mutations"), dict) else []
    return RunData(
        name=location.path.rstrip("/").rsplit("/", 1)[-1],
        location=location,
        metric=metric,
        mode="min" if pbt.get("mode") == "min" else "max",
        mutations=mutations,
        results=_trial_results(fs, location.path, metric, mutations),
        exploits=sorted(_exploits(files.lineage()), key=lambda e: e.time),
        summary=files.read_json(SUMMARY_FILE),
        ledgers=files.ledgers(),
        wall_time_s=files.stored_wall_time(),
    )


def _job_config(fs: pyarrow.fs.FileSystem, files: RunFiles, location: StorageLocation) -> dict[str, Any]:
    try:
        found = fs.get_file_info(location.path).type
    except OSError as err:
        raise NotARunError(f"{location.uri}: cannot read it ({err}); check the path and the S3 settings") from None
    if found != pyarrow.fs.FileType.Directory:
        raise NotARunError(
            f"{location.uri}: no such run folder; give the folder `pbt-job train` wrote, e.g. ./runs/quick"
        )
    job = files.read_json(JOB_CONFIG_FILE)
    if job is None:
        runs = _runs_below(fs, location)
        hint = f"; runs found below it: {', '.join(runs)}" if runs else ""
        raise NotARunError(
            f"{location.uri}: not a pbt-job run folder (no {JOB_CONFIG_FILE}); "
            f"give the folder `pbt-job train` wrote, e.g. ./runs/quick{hint}"
        )
    return job


def _runs_below(fs: pyarrow.fs.FileSystem, location: StorageLocation) -> list[str]:
    """Run folders directly below `location`, for the hint when a storage root is given instead of a run."""
    return [
        location.display(info.base_name)
        for info in fs.get_file_info(pyarrow.fs.FileSelector(location.path))
        if info.type == pyarrow.fs.FileType.Directory
        and fs.get_file_info(f"{info.path}/{JOB_CONFIG_FILE}").type == pyarrow.fs.FileType.File
    ]


def _trial_results(
    fs: pyarrow.fs.FileSystem, run_path: str, metric: str, mutations: list[str]
) -> dict[str, list[Result]]:
    """Every trial folder's `result.json` (folders without one, like `best/`, are passed over)."""
    results: dict[str, list[Result]] = {}
    for info in sorted(fs.get_file_info(pyarrow.fs.FileSelector(run_path)), key=lambda i: i.path):
        if info.type != pyarrow.fs.FileType.Directory:
            continue
        text = read_text(fs, f"{info.path}/{RESULT_FILE}")
        if text is None:
            continue
        for trial_id, result in parse_results(text, f"{info.base_name}/{RESULT_FILE}", metric, mutations):
            results.setdefault(trial_id, []).append(result)
    return results


def parse_results(text: str, source: str, metric: str, mutations: list[str]) -> list[tuple[str, Result]]:
    """Tune's `result.json` lines as (trial id, `Result`); malformed lines are skipped with a warning.

    Args:
        text: The file's text.
        source: Its name, for the warnings.
        metric: The PBT metric (a `/`-separated key into the result).
        mutations: The mutated hyperparameters (YAML names).
    """
    parsed = []
    for number, result in json_lines(text, source, "report"):
        fields = _result_fields(result)
        if fields is None:
            logger.warning("[report] %s line %d skipped: no trial_id, training_iteration or timestamp", source, number)
            continue
        trial_id, iteration, timestamp = fields
        config = result.get("config") if isinstance(result.get("config"), dict) else {}
        values = {name: config.get(tune_key(name)) for name in mutations}
        hyperparameters = {name: value for name, value in values.items() if _finite(value)}
        value = metric_value(result, metric)
        seconds = result.get("time_this_iter_s")
        parsed.append((trial_id, Result(
            iteration=iteration,
            time=float(timestamp),
            seconds=float(seconds) if _finite(seconds) else 0.0,
            metric=value if _finite(value) else None,
            returns=_returns(result),
            hyperparameters=hyperparameters,
        )))
    return parsed


def _result_fields(result: Any) -> tuple[str, int, float] | None:
    if not isinstance(result, dict):
        return None
    trial_id, iteration, timestamp = (result.get(k) for k in ("trial_id", "training_iteration", "timestamp"))
    if not isinstance(trial_id, str) or not isinstance(iteration, int) or not _finite(timestamp):
        return None
    return trial_id, iteration, timestamp


def _returns(result: dict[str, Any]) -> dict[str, float]:
    env_runners = result.get("env_runners")
    returns = env_runners.get("module_episode_returns_mean") if isinstance(env_runners, dict) else None
    if not isinstance(returns, dict):
        return {}
    return {policy: float(value) for policy, value in returns.items() if _finite(value)}


def _exploits(events: list[dict[str, Any]]) -> list[Exploit]:
    exploits = []
    for event in events:
        if event.get("event", "exploit") != "exploit":
            continue
        recipient, donor, donor_iteration, time = (event.get(k) for k in EXPLOIT_FIELDS)
        if not (isinstance(recipient, str) and isinstance(donor, str) and isinstance(donor_iteration, int)
                and _finite(time)):
            logger.warning("[report] lineage event skipped: it lacks donor, donor_iteration or time: %s", event)
            continue
        exploits.append(Exploit(recipient, donor, donor_iteration, float(time)))
    return exploits


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
