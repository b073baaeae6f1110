"""A run folder read into plain values: each trial's results, the exploits, the summary.

Works on a finished run and on one still training (it reads what is there), local
or on S3 through the same pyarrow filesystem. The format of pbt-job's files is
`pbt_job.run_folder`'s, read through a reader `RunFiles` (nothing cached, so the new
lines of a run still training are seen); nothing here imports `pbt_job.training` or
Ray. Every file is untrusted input: a malformed line is skipped with a warning; only
JSON is parsed, never Tune's pickles. The two documents the report trusts as they
are, `job_config.json` (what the run optimised) and `summary.json` (the final
numbers), are checked field by field instead: a damaged one is bad input
(`MalformedRunFile`, exit 2) naming the file, the field and the fix, never a
traceback or a report of wrong numbers.

Where the numbers come from:

* `<trial folder>/result.json` (Tune, one line per iteration): iteration, time,
  the iteration's duration, the PBT metric, per-policy returns, the mutated hyperparameters.
* `lineage.jsonl`: the exploits; `summary.json`: the final numbers of a finished
  run; `pbt_state.jsonl`: env steps and wall time of a run still training.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow.fs

from pbt_job.errors import BadInput
from pbt_job.report.ancestry import Exploit
from pbt_job.result_keys import SCORE_KEY, metric_value, tune_key
from pbt_job.run_folder import (
    JOB_CONFIG_FILE, RESULT_FILE, SUMMARY_FILE, MalformedRunFile, RunFiles, TrialLedger, is_count, is_finite, is_number,
    json_lines,
)
from pbt_job.storage import StorageLocation, check_readable, filesystem, parse_storage_uri, read_text

logger = logging.getLogger(__name__)

EXPLOIT_FIELDS = ("recipient", "donor", "donor_iteration", "time")
"""What the report needs of a lineage event."""
SUMMARY_FIELDS = {
    "best_trial": ("a trial id", lambda v: v is None or isinstance(v, str)),
    "best_metric": ("a number", lambda v: v is None or is_number(v)),
    "best_hyperparameters": ("an object of numbers", lambda v: isinstance(v, dict) and all(
        isinstance(x, str) or is_number(x) for x in v.values())),
    "exploits": ("a count", is_count),
    "env_steps_total": ("a count", lambda v: v is None or is_count(v)),
    "wall_time_s": ("a number of seconds", lambda v: v is None or is_number(v)),
    "env_steps_per_s": ("a number", lambda v: v is None or is_number(v)),
}
"""What the report takes from `summary.json` as it is: field -> (what it must be, the check)."""
SUMMARY_FIX = "the file is malformed: delete it and the report computes the numbers from the run's other files"
JOB_CONFIG_FIX = "the file is malformed: write it back (pbt-job train writes it from the job's config as a run starts)"


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
    location = parse_storage_uri(run, flag="run folder")
    check_readable(location)  # a dead or hung endpoint is named in seconds, before any read waits on it
    files = RunFiles(partial(filesystem, location), location.path, writer=False)
    fs = files.fs
    pbt = _pbt_settings(_job_config(fs, files, location), files.path(JOB_CONFIG_FILE))
    mutations = sorted(pbt["mutations"])
    run_data = RunData(
        name=location.path.rstrip("/").rsplit("/", 1)[-1],
        location=location,
        metric=pbt["metric"],
        mode=pbt["mode"],
        mutations=mutations,
        results=_trial_results(fs, location.path, pbt["metric"], mutations),
        exploits=sorted(_exploits(files.lineage()), key=lambda e: e.time),
        summary=_with_fix(files.read_document, SUMMARY_FILE, SUMMARY_FIX),
        ledgers=files.ledgers(),
        wall_time_s=files.stored_wall_time(),
    )
    if run_data.summary is not None:
        _check_summary(run_data.summary, run_data.trials, files.path(SUMMARY_FILE))
    return run_data


def _with_fix(read, name: str, fix: str) -> dict[str, Any] | None:
    """`read(name)`, a `MalformedRunFile` extended by what to do about it."""
    try:
        return read(name)
    except MalformedRunFile as err:
        raise MalformedRunFile(f"{err}; {fix}") from None


def _pbt_settings(job: dict[str, Any], source: str) -> dict[str, Any]:
    """`pbt.metric`, `pbt.mode` and `pbt.mutations` of `job_config.json`; missing ones get their defaults.

    Raises:
        MalformedRunFile: one of them has the wrong type or value.
    """
    pbt = job.get("pbt", {})
    if not isinstance(pbt, dict):
        raise MalformedRunFile(f"{source}: pbt is {_shown(pbt)}, not an object; {JOB_CONFIG_FIX}")
    settings = {"metric": pbt.get("metric", SCORE_KEY), "mode": pbt.get("mode", "max"), "mutations": pbt.get("mutations", {})}
    checks = {"metric": ("a result key", lambda v: isinstance(v, str) and v != ""),
              "mode": ("max or min", lambda v: v in ("max", "min")),
              "mutations": ("an object", lambda v: isinstance(v, dict))}
    for name, (wanted, check) in checks.items():
        if not check(settings[name]):
            raise MalformedRunFile(f"{source}: pbt.{name} is {_shown(settings[name])}, not {wanted}; {JOB_CONFIG_FIX}")
    return settings


def _check_summary(summary: dict[str, Any], trials: list[str], source: str) -> None:
    """Raises `MalformedRunFile` naming the first field of `summary.json` the report cannot show as it is."""
    for name, (wanted, check) in SUMMARY_FIELDS.items():
        if name in summary and not check(summary[name]):
            raise MalformedRunFile(f"{source}: {name} is {_shown(summary[name])}, not {wanted}; {SUMMARY_FIX}")
    best = summary.get("best_trial")
    if best is not None and best not in trials:
        raise MalformedRunFile(f"{source}: best_trial {_shown(best)} is no trial of this run; {SUMMARY_FIX}")


def _shown(value: Any) -> str:
    """A JSON value for a one-line message, cut short."""
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _job_config(fs: pyarrow.fs.FileSystem, files: RunFiles, location: StorageLocation) -> dict[str, Any]:
    try:
        found = fs.get_file_info(location.path).type
    except OSError as err:
        raise NotARunError(f"{location.uri}: cannot read it ({err}); check the path and the S3 settings") from None
    if found != pyarrow.fs.FileType.Directory:
        raise NotARunError(
            f"{location.uri}: no such run folder; give the folder `pbt-job train` wrote, e.g. ./runs/quick"
        )
    job = _with_fix(files.read_document, JOB_CONFIG_FILE, JOB_CONFIG_FIX)
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
        hyperparameters = {name: value for name, value in values.items() if is_finite(value)}
        value = metric_value(result, metric)
        seconds = result.get("time_this_iter_s")
        parsed.append((trial_id, Result(
            iteration=iteration,
            time=float(timestamp),
            seconds=float(seconds) if is_finite(seconds) else 0.0,
            metric=value if is_finite(value) else None,
            returns=_returns(result),
            hyperparameters=hyperparameters,
        )))
    return parsed


def _result_fields(result: Any) -> tuple[str, int, float] | None:
    if not isinstance(result, dict):
        return None
    trial_id, iteration, timestamp = (result.get(k) for k in ("trial_id", "training_iteration", "timestamp"))
    if not isinstance(trial_id, str) or not is_count(iteration) or not is_finite(timestamp):
        return None
    return trial_id, iteration, timestamp


def _returns(result: dict[str, Any]) -> dict[str, float]:
    env_runners = result.get("env_runners")
    returns = env_runners.get("module_episode_returns_mean") if isinstance(env_runners, dict) else None
    if not isinstance(returns, dict):
        return {}
    return {policy: float(value) for policy, value in returns.items() if is_finite(value)}


def _exploits(events: list[dict[str, Any]]) -> list[Exploit]:
    exploits = []
    for event in events:
        if event.get("event", "exploit") != "exploit":
            continue
        recipient, donor, donor_iteration, time = (event.get(k) for k in EXPLOIT_FIELDS)
        if not (isinstance(recipient, str) and isinstance(donor, str) and is_count(donor_iteration)
                and is_finite(time)):
            logger.warning("[report] lineage event skipped: it lacks donor, donor_iteration or time: %s", event)
            continue
        exploits.append(Exploit(recipient, donor, donor_iteration, float(time)))
    return exploits

