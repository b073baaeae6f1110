"""`LiveMetrics`: the Tune callback that feeds the driver's Prometheus exporter.

It keeps no exporter of its own (see `pbt_job.metrics`): Tune pickles it with the
run, and a resumed driver must report to the server *it* started. Totals that must
survive a resume (env steps, exploits) come from the run's own files, which the
`RunRecorder` and the scheduler keep (both run before this callback: Tune calls
the scheduler first, then callbacks in list order).
"""

from __future__ import annotations

import math
from typing import Any

from ray import tune

from pbt_job import metrics
from pbt_job.training.algorithm import AGENT_STEPS_PER_S_KEY, CHECKPOINTS_KEY, ENV_STEPS_PER_S_KEY
from pbt_job.training.result_keys import metric_value, yaml_name
from pbt_job.training.run_files import RunFiles


class LiveMetrics(tune.Callback):
    """Publishes each trial result, trial states and the exploit count to the active exporter.

    Args:
        run_files: The run's files (ledgers for env-step totals, lineage for exploits).
        metric: The PBT metric (a `/`-separated result key).
        mode: "max" or "min": which end is the best metric.
        mutated: Tune keys of the mutated hyperparameters.
    """

    def __init__(self, run_files: RunFiles, metric: str, mode: str, mutated: list[str]):
        self.run_files = run_files
        self.metric = metric
        self.best_is_max = mode == "max"
        self.mutated = mutated

    def setup(self, **info: Any) -> None:
        """On start and on resume: counters continue from the stored totals."""
        exporter = metrics.active()
        if exporter is None:
            return
        for trial_id, ledger in self.run_files.ledgers().items():
            exporter.set_env_steps_total(trial_id, ledger.env_steps_total)
        exporter.set_exploits_total(len(self.run_files.lineage()))

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        exporter = metrics.active()
        if exporter is not None:
            exporter.set_trial_states(trial.status for trial in trials)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info: Any) -> None:
        exporter = metrics.active()
        if exporter is None:
            return
        env_runners = result.get("env_runners", {})
        exporter.observe(
            trial.trial_id,
            metrics.TrialSample(
                iteration=int(result.get("training_iteration", 0)),
                iteration_seconds=float(result.get("time_this_iter_s", 0.0)),
                env_steps_per_s=float(result.get(ENV_STEPS_PER_S_KEY, 0.0)),
                agent_steps_per_s=float(result.get(AGENT_STEPS_PER_S_KEY, 0.0)),
                env_steps_total=self.run_files.ledger(trial.trial_id).env_steps_total,
                metric=metric_value(result, self.metric),
                policy_returns={
                    policy: float(value)
                    for policy, value in (env_runners.get("module_episode_returns_mean") or {}).items()
                    if isinstance(value, (int, float)) and math.isfinite(value)
                },
                hyperparameters=self._hyperparameters(trial),
            ),
            self.best_is_max,
        )
        for seconds, size_bytes in result.get(CHECKPOINTS_KEY, []):
            exporter.observe_checkpoint(seconds, int(size_bytes))
        exporter.set_exploits_total(len(self.run_files.lineage()))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Final states, exploit count and every trial's config (an exploit may follow its last result)."""
        exporter = metrics.active()
        if exporter is None:
            return
        exporter.set_trial_states(trial.status for trial in trials)
        exporter.set_exploits_total(len(self.run_files.lineage()))
        for trial in trials:
            exporter.set_hyperparameters(trial.trial_id, self._hyperparameters(trial))

    def _hyperparameters(self, trial) -> dict[str, float]:
        values = {yaml_name(key): trial.config.get(key) for key in self.mutated}
        return {name: float(value) for name, value in values.items() if isinstance(value, (int, float))}
