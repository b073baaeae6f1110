"""`LiveMetrics`: the Tune callback that feeds the driver's Prometheus exporter.

It keeps no exporter of its own (see `pbt_job.metrics`): Tune pickles it with the
run, and a resumed driver must report to the server *it* started. Totals that must
survive a resume (env steps, exploits, skipped exploits) come from the run's own
files, which the `RunRecorder` and the scheduler keep (both run before this
callback: Tune calls the scheduler first, then callbacks in list order). What the `RunRecorder` reads
from a result (iteration, metric, hyperparameters, env steps) is taken from its
ledger, not parsed a second time; this callback reads only the rest.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray import tune

from pbt_job import metrics
from pbt_job.result_keys import AGENT_STEPS_PER_S_KEY, ENV_STEPS_PER_S_KEY, yaml_name
from pbt_job.run_folder import RunFiles
from pbt_job.training.algorithm import CHECKPOINTS_KEY


class ExploitTimer:
    """Times each exploit of one driver session from its decision to the recipient's next result.

    When did a result arrive? Its `timestamp` is whole seconds, too coarse for iterations
    shorter than a second. Tune handles one result at a time, the scheduler before the
    callbacks, so the arrival is bounded by the previous `on_trial_result` call instead:
    an exploit decided before that call was decided before this result arrived (this
    result is the recipient's next one); one decided after it was decided on this very
    result (the recipient's next result ends it). Each exploit thus falls in exactly one
    window of its recipient; exploits decided before the session started fall in none.

    Args:
        start: When this driver session started (epoch seconds).
    """

    def __init__(self, start: float):
        self._start = start
        self._previous = start
        self._timed_until: dict[str, float] = {}

    def durations(self, trial_id: str, lineage: list[dict[str, Any]], now: float) -> list[float]:
        """For a result of `trial_id` handled at `now`: the seconds since each exploit of the trial it ends."""
        since, until = self._timed_until.get(trial_id, self._start), self._previous
        self._timed_until[trial_id], self._previous = until, now
        times = (event.get("time") for event in lineage if event.get("recipient") == trial_id)
        return [now - t for t in times if isinstance(t, (int, float)) and since <= t < until]


class LiveMetrics(tune.Callback):
    """Publishes each trial result, trial states, exploit and skip counts and exploit times to the active exporter.

    Args:
        run_files: The run's files (ledgers for what the `RunRecorder` read, lineage and skips for exploits).
        mode: "max" or "min": which end is the best metric.
        mutated: Tune keys of the mutated hyperparameters.
    """

    def __init__(self, run_files: RunFiles, mode: str, mutated: list[str]):
        self.run_files = run_files
        self.best_is_max = mode == "max"
        self.mutated = mutated
        self._exploit_timer = ExploitTimer(time.time())

    def setup(self, **info: Any) -> None:
        """On start and on resume: counters continue from the stored totals; exploits are timed from now on."""
        self._exploit_timer = ExploitTimer(time.time())
        exporter = metrics.active()
        if exporter is None:
            return
        for trial_id, ledger in self.run_files.ledgers().items():
            exporter.set_env_steps_total(trial_id, ledger.env_steps_total)
        self._set_exploit_totals(exporter)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        exporter = metrics.active()
        if exporter is not None:
            exporter.set_trial_states(trial.status for trial in trials)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info: Any) -> None:
        exporter = metrics.active()
        if exporter is None:
            return
        ledger = self.run_files.ledger(trial.trial_id)  # the RunRecorder has just read this result into it
        exporter.observe(
            trial.trial_id,
            metrics.TrialSample(
                iteration=ledger.iteration,
                iteration_seconds=float(result.get("time_this_iter_s", 0.0)),
                env_steps_per_s=float(result.get(ENV_STEPS_PER_S_KEY, 0.0)),
                agent_steps_per_s=float(result.get(AGENT_STEPS_PER_S_KEY, 0.0)),
                env_steps_total=ledger.env_steps_total,
                metric=ledger.metric,
                policy_returns={
                    policy: float(value)
                    for policy, value in (result.get("env_runners", {}).get("module_episode_returns_mean") or {}).items()
                    if isinstance(value, (int, float)) and math.isfinite(value)
                },
                hyperparameters=_numbers(ledger.config),
            ),
            self.best_is_max,
        )
        for seconds, size_bytes in result.get(CHECKPOINTS_KEY, []):
            exporter.observe_checkpoint(seconds, int(size_bytes))
        lineage = self.run_files.lineage()
        for seconds in self._exploit_timer.durations(trial.trial_id, lineage, time.time()):
            exporter.observe_exploit(seconds)
        self._set_exploit_totals(exporter)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Final states, exploit and skip counts and every trial's config (an exploit may follow its last result)."""
        exporter = metrics.active()
        if exporter is None:
            return
        exporter.set_trial_states(trial.status for trial in trials)
        self._set_exploit_totals(exporter)
        for trial in trials:
            exporter.set_hyperparameters(trial.trial_id, self._hyperparameters(trial))

    def _set_exploit_totals(self, exporter: metrics.PopulationMetrics) -> None:
        exporter.set_exploits_total(len(self.run_files.lineage()))
        exporter.set_exploit_skips_total(len(self.run_files.skips()))

    def _hyperparameters(self, trial) -> dict[str, float]:
        return _numbers({yaml_name(key): trial.config.get(key) for key in self.mutated})


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in values.items() if isinstance(value, (int, float))}
