"""Prometheus exporter for the population: throughput, metric, exploits and schedules, live.

Ray's own metrics (port 8080) describe nodes, not trials. `PopulationMetrics` holds
the `pbt_*` families in their own registry; a Tune callback on the driver feeds it
(`pbt_job.training.live_metrics`), and `serve` exposes it over HTTP.

One exporter per driver process, like `prometheus_client`'s default registry:
`serve` makes it the *active* one. Tune pickles its callbacks with the run and
restores them on resume; the callback therefore holds no exporter and looks up
the active one each time, so a resumed driver reports to the server it started.

Scrapes never slow training: `prometheus_client` answers each request on its own
daemon thread and an update only holds a metric's lock for a dictionary write.
Labels are bounded by the population: `trial`, and `policy`/`name` per trial.

Storage retries are the one family the callback does not feed: while the driver
retries a write it handles no result, so `StorageRetries` reads the count from
`pbt_job.storage` at each scrape instead.
"""

from __future__ import annotations

import errno
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily

from pbt_job import storage
from pbt_job.errors import BadInput

TRIAL_STATES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR")
ITERATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
CHECKPOINT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
EXPLOIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
"""Exploit to next result: a restore from the pinned copy plus one iteration."""


class MetricsPortError(BadInput):
    """The exporter's port cannot be bound."""


@dataclass(frozen=True)
class TrialSample:
    """What one training iteration of one trial reports to Prometheus."""

    iteration: int
    iteration_seconds: float
    env_steps_per_s: float
    agent_steps_per_s: float
    env_steps_total: int
    """The trial's own env steps over all driver sessions (a counter that survives resume)."""
    metric: float | None
    policy_returns: Mapping[str, float]
    hyperparameters: Mapping[str, float]


class StorageRetries:
    """`pbt_storage_retries_total`: the storage operations this process retried, counted at each scrape."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "pbt_storage_retries",
            "Storage operations of the driver retried during an outage (this driver session).",
            value=storage.retries_so_far(),
        )


class PopulationMetrics:
    """The `pbt_*` metric families of one run, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.env_steps_per_s = Gauge("pbt_trial_env_steps_per_second", "Env steps sampled per second in the trial's last iteration.", ["trial"], registry=r)
        self.agent_steps_per_s = Gauge("pbt_trial_agent_steps_per_second", "Agent steps sampled per second in the trial's last iteration.", ["trial"], registry=r)
        self.env_steps = Counter("pbt_env_steps", "Env steps sampled by the trial, over all driver sessions.", ["trial"], registry=r)
        self.iteration = Gauge("pbt_trial_iteration", "The trial's training iteration.", ["trial"], registry=r)
        self.metric = Gauge("pbt_trial_metric", "The trial's PBT metric (the one exploit decisions rank by).", ["trial"], registry=r)
        self.policy_return = Gauge("pbt_trial_policy_return", "Mean episode return per policy in the trial's last iteration.", ["trial", "policy"], registry=r)
        self.best_metric = Gauge("pbt_best_metric", "The best PBT metric in the population.", registry=r)
        self.trials = Gauge("pbt_trials", "Trials per Tune state.", ["state"], registry=r)
        self.exploits = Counter("pbt_exploits", "Exploits so far (lines of lineage.jsonl).", registry=r)
        self.exploit_skips = Counter("pbt_exploit_skips", "Due exploits skipped so far (lines of exploit_skips.jsonl).", registry=r)
        self.hyperparameter = Gauge("pbt_trial_hyperparameter", "Current value of each mutated hyperparameter.", ["trial", "name"], registry=r)
        self.checkpoint_seconds = Histogram("pbt_checkpoint_seconds", "Time to save and persist one checkpoint.", buckets=CHECKPOINT_BUCKETS, registry=r)
        self.checkpoint_bytes = Counter("pbt_checkpoint_bytes", "Bytes of checkpoints saved.", registry=r)
        self.iteration_seconds = Histogram("pbt_iteration_seconds", "Duration of one training iteration.", ["trial"], buckets=ITERATION_BUCKETS, registry=r)
        self.exploit_seconds = Histogram("pbt_exploit_seconds", "Time from an exploit decision to the recipient's next result.", buckets=EXPLOIT_BUCKETS, registry=r)
        r.register(StorageRetries())
        self._metric_values: dict[str, float] = {}
        self._counted: dict[tuple[str, str], float] = {}
        for state in TRIAL_STATES:
            self.trials.labels(state).set(0)

    def observe(self, trial: str, sample: TrialSample, best_is_max: bool) -> None:
        """Record one iteration of `trial`."""
        self.iteration.labels(trial).set(sample.iteration)
        self.iteration_seconds.labels(trial).observe(sample.iteration_seconds)
        self.env_steps_per_s.labels(trial).set(sample.env_steps_per_s)
        self.agent_steps_per_s.labels(trial).set(sample.agent_steps_per_s)
        self.set_env_steps_total(trial, sample.env_steps_total)
        for policy, value in sample.policy_returns.items():
            self.policy_return.labels(trial, policy).set(value)
        self.set_hyperparameters(trial, sample.hyperparameters)
        if sample.metric is not None and math.isfinite(sample.metric):
            self.metric.labels(trial).set(sample.metric)
            self._metric_values[trial] = sample.metric
            pick = max if best_is_max else min
            self.best_metric.set(pick(self._metric_values.values()))

    def set_env_steps_total(self, trial: str, total: int) -> None:
        self._advance(self.env_steps.labels(trial), ("env_steps", trial), total)

    def set_exploits_total(self, total: int) -> None:
        self._advance(self.exploits, ("exploits", ""), total)

    def set_exploit_skips_total(self, total: int) -> None:
        self._advance(self.exploit_skips, ("exploit_skips", ""), total)

    def set_hyperparameters(self, trial: str, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.hyperparameter.labels(trial, name).set(value)

    def set_trial_states(self, states: Iterable[str]) -> None:
        states = list(states)
        for state in TRIAL_STATES:
            self.trials.labels(state).set(states.count(state))

    def observe_checkpoint(self, seconds: float, size_bytes: int) -> None:
        self.checkpoint_seconds.observe(seconds)
        self.checkpoint_bytes.inc(size_bytes)

    def observe_exploit(self, seconds: float) -> None:
        self.exploit_seconds.observe(seconds)

    def _advance(self, counter: Counter, key: tuple[str, str], total: float) -> None:
        """Bring a counter up to a total kept elsewhere (lineage, ledgers); counters never go down."""
        delta = total - self._counted.get(key, 0)
        if delta > 0:
            counter.inc(delta)
            self._counted[key] = total


class MetricsServer:
    """A running `/metrics` endpoint; `close()` stops it and deactivates its metrics."""

    def __init__(self, metrics: PopulationMetrics, port: int, host: str):
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise MetricsPortError(
                    f"metrics_port {port}: the port is already in use; pass --metrics-port with a free port, or 0 to disable the exporter"
                ) from None
            raise MetricsPortError(f"metrics_port {port}: cannot serve on {host}:{port} ({err.strerror}); pass another --metrics-port") from None
        self.metrics = metrics
        self.port = self._server.server_address[1]

    def close(self) -> None:
        global _active
        self._server.shutdown()
        self._server.server_close()
        if _active is self.metrics:
            _active = None

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_active: PopulationMetrics | None = None


def serve(port: int, host: str = "0.0.0.0") -> MetricsServer:
    """Start the exporter on `port` (all interfaces: Prometheus scrapes the pod IP) and make it active.

    Raises:
        MetricsPortError: the port is taken or cannot be bound; nothing has started.
    """
    global _active
    server = MetricsServer(PopulationMetrics(), port, host)
    _active = server.metrics
    return server


def active() -> PopulationMetrics | None:
    """The metrics of the exporter this process serves, or None when it serves none."""
    return _active
