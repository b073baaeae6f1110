"""The run folder's format: the files pbt-job keeps next to Tune's, written by training, read by report.

A room of its own (no Ray import): training writes through `RunFiles`, and
`pbt-job report` reads through it without importing anything of `pbt_job.training`.
Tune's `Tuner.restore` does not restore scheduler state (ray-project/ray#30838),
so everything PBT and the lineage need to continue after a driver restart lives
here, next to Tune's files, on the same storage (local or S3, through one pyarrow
filesystem from `pbt_job.storage`):

* `job_config.json`: the job's configuration as validated (`config_to_dict`),
  written once when a run starts; report reads `pbt.metric`, `pbt.mode` and
  `pbt.mutations` from it.
* `lineage.jsonl`: one JSON object per exploit, append-only in meaning;
  rewritten whole because S3 has no append. One line per exploit, so its line
  count is the exploit count (`pbt_exploits_total`). Fields: `event: exploit`,
  `time`, `iteration` (the recipient's), `recipient`, `donor`, `donor_iteration`,
  `donor_checkpoint`, `pinned_checkpoint`, `recipient_metric`, `donor_metric`,
  `config_before`, `config_after` (YAML names).
* `exploit_skips.jsonl`: due exploits that could not happen (`event: skip`,
  `time`, `iteration`, `recipient`, `reason`).
* `pbt_state.jsonl`: per-trial ledgers (`TrialLedger`) and the run's `wall_time_s`,
  one JSON document on one line. Not `.json`: on restore Tune copies every
  `.json`/`.pkl` of the run folder into its staging folder and keeps uploading
  those stale copies back over the originals.
* `summary.json`: written at the end: `status` (`finished`, or `interrupted` by SIGINT/SIGTERM:
  the numbers so far), `metric`, `mode`, `best_trial` (one of the run's trials), `best_metric`,
  `best_hyperparameters`, `best_checkpoint`, `exploits`, `skipped_exploits`,
  `env_steps_total`, `wall_time_s`, `env_steps_per_s`, `trials` (per trial:
  `iteration`, `metric`, `env_steps_total`, `hyperparameters`), `errors`.
* `best/<policy>/`: the best trial's RLModules, written at the end.
* `<trial folder>/result.json`: Tune's, one JSON line per iteration (`RESULT_FILE`).

Files are untrusted input: a corrupt line, ledger or state document is skipped with
a warning, never executed (JSON only, no pickle); `read_document` is for a reader
that cannot go on without the document and raises `MalformedRunFile` instead.

Caching: a writer `RunFiles` (the default) reads each file once, on first use, then
keeps it in memory and writes it whole: the run has one writer, the driver (its
scheduler and callbacks share one `RunFiles`), so its memory is what storage holds.
A reader (`writer=False`: `pbt-job report`, or any process beside a running
driver) caches nothing: every call reads storage again and sees the lines the
writer added since; it cannot write.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator

import pyarrow.fs

from pbt_job.errors import BadInput
from pbt_job.storage import read_text, write_text

logger = logging.getLogger(__name__)

LINEAGE_FILE = "lineage.jsonl"
SKIPS_FILE = "exploit_skips.jsonl"
STATE_FILE = "pbt_state.jsonl"
SUMMARY_FILE = "summary.json"
JOB_CONFIG_FILE = "job_config.json"
RESULT_FILE = "result.json"
"""Tune's per-trial results, in each trial folder."""
BEST_DIR = "best"


class MalformedRunFile(BadInput):
    """A file of the run folder is not what pbt-job writes; the message names the file (and the field)."""


def is_number(value: Any) -> bool:
    """A JSON number a float can hold: NaN and infinities yes; a bool or a 400-digit integer no."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, float) or abs(value) <= sys.float_info.max


def is_finite(value: Any) -> bool:
    """A JSON number that is a finite float."""
    return is_number(value) and math.isfinite(value)


def is_count(value: Any) -> bool:
    """A JSON integer >= 0 that a float holds exactly (iterations, env steps, exploits)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**53


def parse_json(text: str) -> Any:
    """`json.loads`, with every way text fails to be JSON a `ValueError` (too deep a nesting included)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{err.msg} at line {err.lineno}") from None


@dataclass
class TrialLedger:
    """What pbt-job remembers of one trial across driver restarts."""

    last_perturbation_time: float = 0.0
    last_train_time: float = 0.0
    env_steps_total: int = 0
    iteration: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    metric: float | None = None
    session_starts: list[int] = field(default_factory=list)
    """Per driver session, the iteration the trial continued from (0: from scratch)."""

    @classmethod
    def from_json(cls, data: Any) -> TrialLedger | None:
        """The ledger `pbt_state.jsonl` holds as `data`; None when a field is unknown or of the wrong type."""
        if not isinstance(data, dict) or not set(data) <= {f.name for f in fields(cls)}:
            return None
        if not all(check(data[name]) for name, check in LEDGER_CHECKS.items() if name in data):
            return None
        return cls(**data)


LEDGER_CHECKS = {
    "last_perturbation_time": is_finite, "last_train_time": is_finite, "env_steps_total": is_count,
    "iteration": is_count, "config": lambda v: isinstance(v, dict), "metric": lambda v: v is None or is_number(v),
    "session_starts": lambda v: isinstance(v, list) and all(is_count(i) for i in v),
}
"""The type of each `TrialLedger` field as `pbt_state.jsonl` must hold it (NaN is a metric, not a time)."""


def json_lines(text: str, source: str, tag: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-empty JSON line; a line that is not JSON is skipped with a warning."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, parse_json(line)
        except ValueError as err:
            logger.warning("[%s] %s line %d skipped: not JSON (%s)", tag, source, number, err)


def parse_lineage(text: str, source: str = LINEAGE_FILE) -> list[dict[str, Any]]:
    """Parse lineage lines; malformed lines are skipped with a warning."""
    events = []
    for number, event in json_lines(text, source, "lineage"):
        if not isinstance(event, dict) or not {"recipient", "iteration"} <= event.keys():
            logger.warning("[lineage] %s line %d skipped: not a lineage event", source, number)
            continue
        events.append(event)
    return events


class ReadOnlyRunFiles(RuntimeError):
    """A write through a reader's `RunFiles`."""


class RunFiles:
    """Reads and writes pbt-job's files in one run folder.

    Holds a filesystem *factory*, not a filesystem: the scheduler that owns this
    object is pickled by Tune, and the pickle must carry no credentials.

    Args:
        fs_factory: Returns the run's pyarrow filesystem.
        run_path: The run folder's path in that filesystem.
        writer: True for the run's one writer (the driver): each file is read once and
            then kept in memory. False for a reader: nothing is kept, every call reads
            storage (and sees new lines), writes raise `ReadOnlyRunFiles`.
    """

    def __init__(self, fs_factory, run_path: str, *, writer: bool = True):
        self._fs_factory = fs_factory
        self.run_path = run_path.rstrip("/")
        self.writer = writer
        self._fs: pyarrow.fs.FileSystem | None = None
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._events_lock = threading.RLock()  # the scheduler records exploits off the controller's thread
        self._ledgers: dict[str, TrialLedger] | None = None
        self._ledgers_lock = threading.Lock()
        self._queued_state: dict[str, Any] | None = None
        self._ledger_writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._ledger_writes: list[concurrent.futures.Future] = []
        self._stored_wall_time: float | None = None
        self._session_start = time.time()

    def __getstate__(self) -> dict[str, Any]:
        return {"_fs_factory": self._fs_factory, "run_path": self.run_path, "writer": self.writer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_fs_factory"], state["run_path"], writer=state.get("writer", True))

    def _check_writer(self, what: str) -> None:
        if not self.writer:
            raise ReadOnlyRunFiles(f"{self.run_path}: {what} through a reader's RunFiles (writer=False)")

    @property
    def fs(self) -> pyarrow.fs.FileSystem:
        if self._fs is None:
            self._fs = self._fs_factory()
        return self._fs

    def path(self, name: str) -> str:
        return f"{self.run_path}/{name}"

    def lineage(self) -> list[dict[str, Any]]:
        """The exploits so far."""
        return self._read_events(LINEAGE_FILE)

    def skips(self) -> list[dict[str, Any]]:
        """The due exploits that were skipped, with their reasons."""
        return self._read_events(SKIPS_FILE)

    def _read_events(self, name: str) -> list[dict[str, Any]]:
        with self._events_lock:
            if name in self._events:
                return self._events[name]
            text = read_text(self.fs, self.path(name))
            events = parse_lineage(text, name) if text else []
            if self.writer:
                self._events[name] = events
            return events

    def record(self, event: dict[str, Any]) -> None:
        """Add one exploit (or, for `event: skip`, one skipped exploit).

        A resumed run redoes the exploits made after Tune's last experiment snapshot:
        a redo replaces the line an earlier driver session wrote for the same recipient
        and iteration. Within one session two exploits of one recipient may share an
        iteration (a clone can set its iteration count back): both stay.
        """
        self._check_writer("recording an exploit")
        name = SKIPS_FILE if event.get("event") == "skip" else LINEAGE_FILE
        key = (event["recipient"], event["iteration"])

        def replayed(e: dict[str, Any]) -> bool:
            return (e["recipient"], e["iteration"]) == key and float(e.get("time", 0)) < self._session_start

        with self._events_lock:
            events = [e for e in self._read_events(name) if not replayed(e)]
            events.append(event)
            self._events[name] = events
            write_text(self.fs, self.path(name), "".join(json.dumps(e, sort_keys=True) + "\n" for e in events))

    def ledgers(self) -> dict[str, TrialLedger]:
        """Per-trial ledgers from `pbt_state.jsonl` (a writer loads them on first use, then keeps its own)."""
        if self._ledgers is not None:
            return self._ledgers
        ledgers = {}
        trials = (self.read_json(STATE_FILE) or {}).get("trials")
        for trial_id, fields in (trials.items() if isinstance(trials, dict) else ()):
            ledger = TrialLedger.from_json(fields)
            if ledger is None:
                logger.warning("[state] %s: entry for trial %s skipped: unexpected fields or types", STATE_FILE, trial_id)
            else:
                ledgers[trial_id] = ledger
        if self.writer:
            self._ledgers = ledgers
        return ledgers

    def ledger(self, trial_id: str) -> TrialLedger:
        """The writer's ledger of `trial_id`, created empty when new."""
        self._check_writer("keeping a ledger")
        return self.ledgers().setdefault(trial_id, TrialLedger())

    def wall_time(self) -> float:
        """Seconds this run has trained, over all driver sessions (this one counted from its start)."""
        self._check_writer("counting this session's wall time")
        if self._stored_wall_time is None:
            self._stored_wall_time = self.stored_wall_time() or 0.0
        return self._stored_wall_time + time.time() - self._session_start

    def stored_wall_time(self) -> float | None:
        """`wall_time_s` as `pbt_state.jsonl` holds it (what a reader sees of a run's wall time)."""
        value = (self.read_json(STATE_FILE) or {}).get("wall_time_s")
        return float(value) if is_finite(value) else None

    def save_ledgers(self) -> None:
        """Write `pbt_state.jsonl` now, after the writes `save_ledgers_soon` queued."""
        self.flush_ledgers()
        self.write_json(STATE_FILE, self._state())

    def save_ledgers_soon(self) -> None:
        """Write `pbt_state.jsonl` off the caller's thread. The driver saves it after every result:
        on S3 the write held Tune's controller, and so every trial's next step and an exploit's
        restart, for 0.1-0.3 s. Writes run in order, a newer state replacing one not yet begun;
        `flush_ledgers` waits for them (before each experiment snapshot: a resume reads both)."""
        self._check_writer(f"writing {STATE_FILE}")
        with self._ledgers_lock:
            begun, self._queued_state = self._queued_state is None, self._state()
            if begun:
                if self._ledger_writer is None:
                    self._ledger_writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pbt-job-ledgers")
                self._ledger_writes.append(self._ledger_writer.submit(self._write_queued_state))

    def flush_ledgers(self) -> None:
        """Wait for the writes `save_ledgers_soon` queued.

        Raises:
            Exception: what a write raised (a `StorageOutage` once its retries ran out).
        """
        with self._ledgers_lock:
            writes, self._ledger_writes = self._ledger_writes, []
        for write in writes:
            write.result()

    def _write_queued_state(self) -> None:
        with self._ledgers_lock:
            state, self._queued_state = self._queued_state, None
        self.write_json(STATE_FILE, state)

    def _state(self) -> dict[str, Any]:
        trials = {trial_id: asdict(ledger) for trial_id, ledger in self.ledgers().items()}
        return {"trials": trials, "wall_time_s": self.wall_time()}

    def read_json(self, name: str) -> dict[str, Any] | None:
        """The JSON object stored as `name`; None when there is none, or (with a warning) when it is malformed."""
        try:
            return self.read_document(name)
        except MalformedRunFile as err:
            logger.warning("[state] %s; ignoring it", err)
            return None

    def read_document(self, name: str) -> dict[str, Any] | None:
        """The JSON object stored as `name`; None when there is no such file.

        Raises:
            MalformedRunFile: it is not JSON (truncated, binary) or not a JSON object.
        """
        text = read_text(self.fs, self.path(name))
        if text is None:
            return None
        try:
            data = parse_json(text)
        except ValueError as err:
            raise MalformedRunFile(f"{self.path(name)} is not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise MalformedRunFile(f"{self.path(name)} is not a JSON object but a {type(data).__name__}")
        return data

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        self._check_writer(f"writing {name}")
        write_text(self.fs, self.path(name), json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
