"""`RayJobEventLog`: the Tune callback that tells the RayJob what the population does.

Each exploit (from `lineage.jsonl`, which the scheduler writes before Tune calls the
callbacks with the same result), each trial error and the end of training become
Kubernetes Events on the RayJob (`pbt_job.k8s_events`; off outside a cluster):

    trial 3f2a1_00003 cloned 3f2a1_00001 at iteration 40: lr 0.0001 -> 8e-5, metric 120 -> 190

Like `LiveMetrics`, it is pickled with the run and holds no connection: each driver
session looks for the cluster in `setup`, and reports only the exploits decided after it
(an earlier session reported the others).
"""

from __future__ import annotations

import math
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ray import tune

from pbt_job import interruption
from pbt_job.k8s_events import Event, RayJobEvents
from pbt_job.run_folder import RunFiles, TrialLedger, is_finite

ERROR_LINE_LIMIT = 300


class RayJobEventLog(tune.Callback):
    """Posts `Exploit`, `TrialError` and `JobFinished` events on the RayJob, when there is one.

    Args:
        run_files: The run's files (lineage for exploits, ledgers for the best trial).
        mode: "max" or "min": which end is the best metric.
    """

    def __init__(self, run_files: RunFiles, mode: str):
        self.run_files = run_files
        self.best_is_max = mode == "max"
        self._events: RayJobEvents | None = None
        self._reported_until = time.time()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_events": None}

    def setup(self, **info: Any) -> None:
        self._events = RayJobEvents.in_cluster()
        self._reported_until = time.time()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info: Any) -> None:
        self._post_exploits()

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._post_trial_error(trial, "Tune restarts it from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._post_trial_error(trial, "no retry left, the trial stays in ERROR")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._events is None:
            return
        self._post_exploits()
        statuses = Counter(trial.status for trial in trials)
        signum = interruption.received()
        self._events.post(Event(
            "JobFinished",
            finished_message(
                statuses, len(self.run_files.lineage()), best_trial(self.run_files.ledgers(), self.best_is_max),
                signal.Signals(signum).name if signum else None,
            ),
            warning=bool(signum) or set(statuses) != {"TERMINATED"},
        ))
        self._events.close()
        self._events = None

    def _post_exploits(self) -> None:
        if self._events is None:
            return
        new = [e for e in self.run_files.lineage() if is_finite(e.get("time")) and e["time"] > self._reported_until]
        for event in new:
            self._events.post(Event("Exploit", exploit_message(event), at=event["time"]))
        if new:
            self._reported_until = max(event["time"] for event in new)

    def _post_trial_error(self, trial, outcome: str) -> None:
        if self._events is None:
            return
        iteration = (trial.last_result or {}).get("training_iteration", 0)
        self._events.post(Event(
            "TrialError",
            f"trial {trial.trial_id} failed at iteration {iteration} (failure {trial.num_failures}), "
            f"{outcome}: {last_error_line(trial.error_file)}",
            warning=True,
        ))


def exploit_message(event: dict[str, Any]) -> str:
    """One line for a `lineage.jsonl` exploit: who cloned whom, the hyperparameters that changed (by name,
    as the stored file orders them), the metric (the recipient's before, the donor's it now starts from)."""
    before, after = event.get("config_before") or {}, event.get("config_after") or {}
    changes = [f"{name} {number(before.get(name))} -> {number(value)}"
               for name, value in sorted(after.items()) if before.get(name) != value]
    changes.append(f"metric {number(event.get('recipient_metric'))} -> {number(event.get('donor_metric'))}")
    return (f"trial {event['recipient']} cloned {event.get('donor')} at iteration {event['iteration']}: "
            + ", ".join(changes))


def finished_message(
    statuses: Counter, exploits: int, best: tuple[str, TrialLedger] | None, signal_name: str | None
) -> str:
    """The end of training: how it ended, the trials by state, the exploits and the best trial."""
    how = f"training interrupted by {signal_name} (resumable from storage)" if signal_name else "training ended"
    states = ", ".join(f"{count} {state}" for state, count in sorted(statuses.items()))
    text = f"{how}: {sum(statuses.values())} trials ({states}), {exploits} exploits"
    if best is not None:
        trial_id, ledger = best
        text += f"; best trial {trial_id}, metric {number(ledger.metric)} at iteration {ledger.iteration}"
    return text


def best_trial(ledgers: dict[str, TrialLedger], best_is_max: bool) -> tuple[str, TrialLedger] | None:
    """The trial whose last metric is best, with its ledger; None before any finite metric."""
    scored = [(trial_id, ledger) for trial_id, ledger in ledgers.items() if is_finite(ledger.metric)]
    if not scored:
        return None
    pick = max if best_is_max else min
    return pick(scored, key=lambda item: item[1].metric)


def last_error_line(error_file: str | None) -> str:
    """The last line of the trial's `error.txt` (the exception and its message), shortened."""
    try:
        lines = [line.strip() for line in Path(error_file).read_text().splitlines() if line.strip()] if error_file else []
    except OSError:
        lines = []
    return lines[-1][:ERROR_LINE_LIMIT] if lines else "see the trial's error.txt"


def number(value: Any) -> str:
    """A hyperparameter or metric as people write it: 4 significant digits, `8e-5` rather than `8e-05`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value)
    text = f"{value:.4g}"
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if e else text
