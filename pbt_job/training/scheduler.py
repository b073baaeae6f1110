"""`LineagePBT` / `LineagePB2`: Ray Tune's PBT (and PB2) made exploit-safe and recorded.

Tune's PBT, as of Ray 2.60, has five gaps a long PBT job falls into (PB2 inherits them):

1. Retention breaks exploits. The recipient restores from a *reference* to the
   donor's checkpoint; the donor's `num_to_keep` rotation can delete it before the
   recipient loads it ("Could not recover from checkpoint as it does not exist on
   storage anymore"). Here the donor's checkpoint is copied into the recipient's
   own trial folder (`pinned/`) at exploit time and the recipient restores from
   the copy. The copy is deleted once the recipient has a checkpoint of its own,
   after the experiment state that references that checkpoint is saved (a resume
   restores from the *saved* state). Storage stays bounded: `num_to_keep` per
   trial plus one pin.
2. "[pbt]: no checkpoint for trial ... Skip exploit": a donor only has a
   checkpoint if it was in the upper quantile at its *own* last perturbation. Here
   a due exploit falls back to the donor's latest checkpoint that still exists; if
   the donor has none at all, the skip and its reason go to `exploit_skips.jsonl`.
3. No lineage: every exploit writes one line to `lineage.jsonl`.
4. `Tuner.restore` starts the scheduler afresh (ray-project/ray#30838): trial
   perturbation times are kept in `pbt_state.jsonl` and reloaded per trial.
5. Retention runs ahead of the snapshot a resume reads: Tune deletes a trial's oldest
   checkpoint as a new one registers, and the last saved experiment state may still
   name it as the trial's latest (and after a PBT exploit it names the checkpoint from
   before, until the next result). Here retention's deletions and released pins wait
   until a snapshot saved after them is stored.

And one cost: an exploit restarted the recipient's Ray actor (6-14 s) and, while it
waited, PBT paused every other trial reaching its perturbation point (Tune's PBT
time-shares the cluster with waiting trials). Here the recipient is staged so
that it restarts on its own actor (`PBTPPO.reset_config` takes the explored
values in place), and a trial is not paused for a recipient that waits only for
that restart. The pin is copied, and the lineage line written, while the actor
resets: the recipient's restore waits for the copy, the next experiment snapshot
for both.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import functools
import logging
import random
import time
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow.fs
from ray.tune import Checkpoint
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pb2 import PB2

from pbt_job.result_keys import yaml_name
from pbt_job.run_folder import RunFiles
from pbt_job.storage import retry_storage
from pbt_job.training.node_checkpoints import pin_name
from pbt_job.training.ray_compat import (
    PBTHooks,
    checkpoint_exists,
    defer_deletion,
    delete_after_snapshot,
    delete_fs_path,
    exists_at_fs_path,
    is_pending_checkpoint,
    pbt_mutated_keys,
    pbt_score_sign,
    pbt_trial_state,
    set_restore_checkpoint,
    stage_for_restart,
)

logger = logging.getLogger(__name__)

PIN_DIR = "pinned"
PIN_COPY_THREADS = 8
PIN_COPY, LINEAGE_LINE = "pin copy", "lineage line"


def _pin_dir(trial: Trial) -> str:
    return f"{trial.storage.trial_fs_path}/{PIN_DIR}"


class _Lineage(PBTHooks):
    """Pinned donor checkpoints, lineage and resumable state for a PBT-family scheduler.

    Args:
        run_files: The run folder's pbt-job files (lineage, state).
        seed: Seeds the explore/exploit draws (donor choice, perturbations, resampling).
        **kwargs: The scheduler's own arguments.
    """

    def __init__(self, *, run_files: RunFiles, seed: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.run_files = run_files
        self._pinned: dict[str, bool] = {}
        self._restarting: set[str] = set()
        self._writes: dict[tuple[str, str], tuple[concurrent.futures.Future, Callable[[], None]]] = {}
        """Per (recipient, what: `PIN_COPY` or `LINEAGE_LINE`): a write of its exploit in the background, and its call."""
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._random_states = random.Random(seed).getstate(), np.random.RandomState(seed).get_state()

    @contextlib.contextmanager
    def _own_random(self) -> Iterator[None]:
        """Tune's PBT draws from Python's `random` and numpy's global generator (PB2 too): during the
        scheduler's decisions those hold the scheduler's own seeded streams, and the driver's (Ray's,
        Tune's) are put back afterwards untouched."""
        outer = random.getstate(), np.random.get_state()
        random.setstate(self._random_states[0])
        np.random.set_state(self._random_states[1])
        try:
            yield
        finally:
            self._random_states = random.getstate(), np.random.get_state()
            random.setstate(outer[0])
            np.random.set_state(outer[1])

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self._release_pin_if_unneeded(trial)
        delete_after_snapshot(tune_controller)
        self._restarting.discard(trial.trial_id)
        with self._own_random():
            decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.PAUSE and self._only_recipients_wait(tune_controller):
            return TrialScheduler.CONTINUE
        return decision

    def _only_recipients_wait(self, tune_controller) -> bool:
        """PBT pauses a trial at its perturbation point while others wait, to share a cluster too
        small for the population; a recipient restarting on its own actor waits for no share."""
        waiting = {t.trial_id for t in tune_controller.get_trials() if t.status in (Trial.PENDING, Trial.PAUSED)}
        return waiting <= self._restarting

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        ledger = self.run_files.ledgers().get(trial.trial_id)
        if ledger is not None:
            state = pbt_trial_state(self, trial)
            state.last_perturbation_time = ledger.last_perturbation_time
            state.last_train_time = ledger.last_train_time
            self._delete_forgotten_checkpoints(trial)

    @staticmethod
    def _delete_forgotten_checkpoints(trial: Trial) -> None:
        """A driver killed with retention's deletions queued leaves checkpoints older than any the
        restored state keeps; nothing would ever delete them."""
        kept = [result.checkpoint.path for result in trial.run_metadata.checkpoint_manager.best_checkpoint_results]
        if not kept:
            return
        oldest = min(path.rsplit("/", 1)[-1] for path in kept)
        fs = trial.storage.storage_filesystem
        for info in fs.get_file_info(pyarrow.fs.FileSelector(trial.storage.trial_fs_path, allow_not_found=True)):
            if info.base_name.startswith("checkpoint_") and info.base_name < oldest:
                defer_deletion(fs, info.path.rstrip("/"))

    def usable_donors(self, trial: Trial, upper_quantile: list[Trial]) -> list[Trial]:
        donors = [donor for donor in upper_quantile if self._has_usable_checkpoint(donor)]
        if not donors:
            self._record_skip(trial, "no trial in the upper quantile has a checkpoint yet")
            return upper_quantile
        return donors

    def after_perturbation_point(self, trial: Trial) -> None:
        self._remember(trial)

    def _has_usable_checkpoint(self, donor: Trial) -> bool:
        """Point the donor's exploit checkpoint at one that exists; False if it has none."""
        state = pbt_trial_state(self, donor)
        if is_pending_checkpoint(state.last_checkpoint) or checkpoint_exists(state.last_checkpoint):
            return True
        latest = donor.run_metadata.checkpoint_manager.latest_checkpoint_result
        if latest is None or not checkpoint_exists(latest.checkpoint):
            return False
        logger.info("[exploit] donor %s: using its latest checkpoint %s", donor, latest.checkpoint.path)
        state.last_checkpoint, state.last_result = latest.checkpoint, latest.metrics
        return True

    def exploit(self, tune_controller, trial: Trial, trial_to_clone: Trial, clone) -> None:
        recipient_state, donor_state = pbt_trial_state(self, trial), pbt_trial_state(self, trial_to_clone)
        iteration = int(recipient_state.last_result.get("training_iteration", 0))
        if not checkpoint_exists(donor_state.last_checkpoint) and not self._has_usable_checkpoint(trial_to_clone):
            self._record_skip(trial, f"donor {trial_to_clone.trial_id} has no checkpoint left on storage")
            return
        self._settle((trial_to_clone.trial_id, PIN_COPY))  # a donor restored from a pin may donate it
        donor_checkpoint = donor_state.last_checkpoint
        decided_at = time.time()
        # Unique per exploit: a recipient restored to an older iteration can exploit the same
        # donor at the same iteration again, while another trial may still restore from (or a
        # lineage line name) the first pin: a pin is never overwritten.
        pin_path = pin_name(
            f"{_pin_dir(trial)}/iter_{iteration:06d}_from_{trial_to_clone.trial_id}_at_{decided_at * 1e6:.0f}",
            donor_checkpoint.path,
        )
        before = copy.deepcopy(trial.config)
        if trial.status != Trial.PAUSED:  # synchronous PBT pauses (and re-stages) its trials itself
            stage_for_restart(tune_controller, trial)
        clone()
        self._restarting.add(trial.trial_id)
        mutated = pbt_mutated_keys(self)
        # Older pins go before the new one is queued: listing a folder while a copy makes it fails
        # (pyarrow lists, finds no folder, then finds one and reports the first error).
        self._settle((trial.trial_id, PIN_COPY))
        self._delete_pins(trial)
        self._write_soon(trial, PIN_COPY, functools.partial(self._copy_to_pin, donor_checkpoint, trial, pin_path))
        self._write_soon(
            trial,
            LINEAGE_LINE,
            functools.partial(
                self.run_files.record,
                {
                    "event": "exploit",
                    "time": decided_at,
                    "iteration": iteration,
                    "recipient": trial.trial_id,
                    "donor": trial_to_clone.trial_id,
                    "donor_iteration": int(donor_state.last_result.get("training_iteration", 0)),
                    "donor_checkpoint": donor_checkpoint.path,
                    "pinned_checkpoint": pin_path,
                    "recipient_metric": pbt_score_sign(self) * recipient_state.last_score,
                    "donor_metric": pbt_score_sign(self) * donor_state.last_score,
                    "config_before": {yaml_name(k): before.get(k) for k in mutated},
                    "config_after": {yaml_name(k): trial.config.get(k) for k in mutated},
                },
            ),
        )
        self._restore_from_pin(trial, pin_path)
        self._remember(trial)

    def before_restore(self, trial: Trial) -> None:
        self._settle((trial.trial_id, PIN_COPY))

    def before_snapshot(self) -> None:
        for key in list(self._writes):
            self._settle(key)
        self.run_files.flush_ledgers()

    def _write_soon(self, trial: Trial, what: str, write: Callable[[], None]) -> None:
        """Run an exploit's `write` off the controller's thread, after the writes queued before it
        (lineage lines stay in decision order); `_settle` waits for it."""
        if self._writer is None:  # made on first use: Tune pickles the scheduler before
            self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pbt-job-exploit-writes")
        self._settle((trial.trial_id, what))  # the trial's previous exploit's, written by now
        self._writes[(trial.trial_id, what)] = (self._writer.submit(write), write)

    def _settle(self, key: tuple[str, str]) -> None:
        """Wait for the write queued under `key` (trial id, what), if any; a failed write is made
        again, riding out a storage outage (`retry_storage`), or fails the run: the exploit has
        happened and the recipient restores from the pin."""
        future, write = self._writes.pop(key, (None, None))
        if future is None:
            return
        trial_id, what = key
        try:
            future.result()
        except OSError as err:
            logger.warning("[exploit] the %s of %s failed (%s); writing it again", what, trial_id, err)
            retry_storage(write, f"writing the {what} of {trial_id}'s exploit")

    @staticmethod
    def _copy_to_pin(donor_checkpoint: Checkpoint, trial: Trial, pin_path: str) -> None:
        """Copy the donor's checkpoint into the recipient's folder.

        File by file within the storage, several at once: on S3 each is a server-side copy, so no
        byte passes through the driver (streaming a 5.5 MB checkpoint down and up again cost the
        recipient about a second per exploit on an S3 server on the same machine).
        """
        fs = trial.storage.storage_filesystem
        source = donor_checkpoint.path.rstrip("/")
        selector = pyarrow.fs.FileSelector(source, recursive=True)
        files = [info.path for info in fs.get_file_info(selector) if info.type == pyarrow.fs.FileType.File]
        targets = {path: pin_path + path[len(source):] for path in files}
        if isinstance(fs, pyarrow.fs.LocalFileSystem):  # S3 has no folders to make
            for folder in {target.rsplit("/", 1)[0] for target in targets.values()}:
                fs.create_dir(folder, recursive=True)
        with concurrent.futures.ThreadPoolExecutor(PIN_COPY_THREADS) as pool:
            list(pool.map(fs.copy_file, targets, targets.values()))

    def _restore_from_pin(self, trial: Trial, pin_path: str) -> None:
        """Point the recipient's restore at its pinned copy."""
        set_restore_checkpoint(trial, Checkpoint(pin_path, filesystem=trial.storage.storage_filesystem))
        self._pinned[trial.trial_id] = True
        logger.info("[exploit] %s restores from its pinned copy %s", trial, pin_path)

    def _release_pin_if_unneeded(self, trial: Trial) -> None:
        """Drop the trial's pin once its latest checkpoint is its own (checked once per trial after a restart)."""
        if trial.trial_id not in self._pinned:
            self._pinned[trial.trial_id] = exists_at_fs_path(trial.storage.storage_filesystem, _pin_dir(trial))
        latest = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
        if self._pinned[trial.trial_id] and latest is not None and f"/{PIN_DIR}/" not in latest.checkpoint.path:
            self._delete_pins(trial)
            self._pinned[trial.trial_id] = False

    @staticmethod
    def _delete_pins(trial: Trial) -> None:
        """Delete the trial's pins once an experiment snapshot no longer names them."""
        fs = trial.storage.storage_filesystem
        for info in fs.get_file_info(pyarrow.fs.FileSelector(_pin_dir(trial), allow_not_found=True)):
            defer_deletion(fs, info.path.rstrip("/"))
            logger.debug("[checkpoint] releasing pin of %s: %s", trial, info.path)

    def _record_skip(self, trial: Trial, reason: str) -> None:
        state = pbt_trial_state(self, trial)
        logger.info("[exploit] skipped for %s: %s", trial, reason)
        self.run_files.record(
            {
                "event": "skip",
                "time": time.time(),
                "iteration": int(state.last_result.get("training_iteration", 0)),
                "recipient": trial.trial_id,
                "reason": reason,
            }
        )

    def _remember(self, trial: Trial) -> None:
        state = pbt_trial_state(self, trial)
        ledger = self.run_files.ledger(trial.trial_id)
        ledger.last_perturbation_time = state.last_perturbation_time
        ledger.last_train_time = state.last_train_time


class LineagePBT(_Lineage, PopulationBasedTraining):
    """PopulationBasedTraining (Jaderberg et al. 2017) with the fixes above."""


class LineagePB2(_Lineage, PB2):
    """PB2 (Parker-Holder et al. 2020, https://arxiv.org/abs/2002.02518) with the fixes above.

    PB2 explores with a Gaussian-process bandit over continuous bounds instead of
    random perturbations.
    """
