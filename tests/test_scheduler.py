"""LineagePBT's and LineagePB2's exploit decisions on stub trials (no Ray cluster), as Tune's own PBT tests do."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from functools import partial
from types import SimpleNamespace

import numpy as np
import pyarrow.fs
import pytest
from ray.train._internal.session import _TrainingResult
from ray.tune import Checkpoint
from ray.tune.schedulers.pbt import _PBTTrialState

from conftest import REPO
from pbt_job.run_folder import LINEAGE_FILE, SKIPS_FILE, RunFiles
from pbt_job.storage import StorageOutage, filesystem, parse_storage_uri
from pbt_job.training.config import PBTConfig, load_config
from pbt_job.training.explore import explore_fn, pbt_mutations
from pbt_job.training.ray_compat import checkpoint_deletions_deferred
from pbt_job.training.run import build_scheduler
from pbt_job.training.scheduler import PIN_COPY, LineagePB2, LineagePBT


class StubTrial(SimpleNamespace):
    """What the scheduler reads of a Tune trial; hashable like one, named by its id (PB2 keys its data by `str`)."""

    __hash__ = object.__hash__

    def __str__(self) -> str:
        return self.trial_id


def stub_trial(trial_id: str, latest: Checkpoint | None = None) -> StubTrial:
    result = _TrainingResult(checkpoint=latest, metrics={"training_iteration": 4}) if latest else None
    return StubTrial(
        trial_id=trial_id, experiment_tag=trial_id, config={}, status="RUNNING",
        run_metadata=SimpleNamespace(checkpoint_manager=SimpleNamespace(latest_checkpoint_result=result)),
    )


@pytest.fixture()
def scheduler(tmp_path):
    pbt = PBTConfig()
    sched = LineagePBT(
        run_files=RunFiles(pyarrow.fs.LocalFileSystem, str(tmp_path)),
        time_attr="training_iteration", metric="pbt_score", mode="max", perturbation_interval=2,
        hyperparam_mutations=pbt_mutations(pbt), custom_explore_fn=explore_fn(pbt),
    )
    return sched


def add(scheduler, trial, score: float, iteration: int, checkpoint=None):
    state = _PBTTrialState(trial)
    state.last_score, state.last_checkpoint = score, checkpoint
    state.last_result = {"training_iteration": iteration, "pbt_score": score}
    scheduler._trial_state[trial] = state
    return state


def checkpoint_dir(tmp_path, name: str, exists: bool = True) -> Checkpoint:
    path = tmp_path / name
    if exists:
        path.mkdir()
    return Checkpoint(str(path))


def test_donor_without_an_exploit_checkpoint_falls_back_to_its_latest(scheduler, tmp_path):
    """Tune skips the exploit ("[pbt]: no checkpoint for trial ... Skip exploit") when the donor was
    not in the upper quantile at its own last perturbation; LineagePBT uses its latest checkpoint."""
    latest = checkpoint_dir(tmp_path, "donor_latest")
    donor = stub_trial("donor", latest=latest)
    state = add(scheduler, donor, 10.0, 4, checkpoint=None)
    assert scheduler._has_usable_checkpoint(donor)
    assert state.last_checkpoint is latest
    assert state.last_result == {"training_iteration": 4}


def test_donor_checkpoint_rotated_away_falls_back_to_its_latest(scheduler, tmp_path):
    gone = checkpoint_dir(tmp_path, "rotated", exists=False)
    latest = checkpoint_dir(tmp_path, "donor_latest")
    donor = stub_trial("donor", latest=latest)
    state = add(scheduler, donor, 10.0, 4, checkpoint=gone)
    assert scheduler._has_usable_checkpoint(donor)
    assert state.last_checkpoint is latest


def test_a_due_exploit_without_any_donor_checkpoint_is_logged_as_skipped(scheduler, tmp_path):
    donor, recipient = stub_trial("donor"), stub_trial("recipient")
    add(scheduler, donor, 10.0, 4)
    add(scheduler, recipient, 1.0, 4)
    scheduler._checkpoint_or_exploit(recipient, None, [donor], [recipient])
    events = [json.loads(line) for line in (tmp_path / SKIPS_FILE).read_text().splitlines()]
    assert events == [
        {"event": "skip", "iteration": 4, "recipient": "recipient", "reason": events[0]["reason"], "time": events[0]["time"]}
    ]
    assert "checkpoint" in events[0]["reason"]


def test_lineage_replaces_a_replayed_event_instead_of_duplicating_it(tmp_path):
    """After a resume Tune may redo an exploit at the same recipient iteration: one line stays."""
    files = RunFiles(partial(pyarrow.fs.LocalFileSystem), str(tmp_path))
    files.record({"event": "exploit", "recipient": "a", "iteration": 2, "donor": "b"})
    files.record({"event": "exploit", "recipient": "a", "iteration": 4, "donor": "b"})
    again = RunFiles(partial(pyarrow.fs.LocalFileSystem), str(tmp_path))
    again.record({"event": "exploit", "recipient": "a", "iteration": 2, "donor": "c"})
    lines = (tmp_path / LINEAGE_FILE).read_text().splitlines()
    assert [(e["iteration"], e["donor"]) for e in map(json.loads, lines)] == [(4, "b"), (2, "c")]


def test_two_exploits_of_one_recipient_at_one_iteration_in_one_session_both_stay(tmp_path):
    """A clone sets the recipient's iteration to the donor checkpoint's; a lagging donor can
    bring it back to an iteration it already exploited at. That is a second real exploit."""
    files = RunFiles(partial(pyarrow.fs.LocalFileSystem), str(tmp_path))
    files.record({"event": "exploit", "recipient": "a", "iteration": 4, "donor": "b", "time": time.time()})
    files.record({"event": "exploit", "recipient": "a", "iteration": 4, "donor": "c", "time": time.time()})
    lines = (tmp_path / LINEAGE_FILE).read_text().splitlines()
    assert [e["donor"] for e in map(json.loads, lines)] == ["b", "c"]


def test_exploit_from_a_donor_whose_checkpoint_vanished_is_skipped_not_fatal(scheduler, tmp_path):
    """The donor's pending save resolved to a checkpoint that retention already deleted, and it
    has no other: the exploit is skipped and logged; the run (and the recipient) go on."""
    donor, recipient = stub_trial("donor"), stub_trial("recipient")
    add(scheduler, donor, 10.0, 4, checkpoint=checkpoint_dir(tmp_path, "rotated", exists=False))
    add(scheduler, recipient, 1.0, 4)
    scheduler._exploit(None, recipient, donor)
    assert not (tmp_path / LINEAGE_FILE).exists(), "lineage holds exploits only"
    events = [json.loads(line) for line in (tmp_path / SKIPS_FILE).read_text().splitlines()]
    assert [(e["event"], e["recipient"]) for e in events] == [("skip", "recipient")]
    assert "no checkpoint left" in events[0]["reason"]
    assert recipient.config == {}, "the recipient keeps its config"


CHECKPOINT_FILES = {"a": "1", "b/c": "2", "rllib_checkpoint.json": "{}"}


def stored_donor_and_recipient(scheduler, fs: pyarrow.fs.FileSystem, root: str) -> tuple[StubTrial, StubTrial]:
    """A donor whose checkpoint under `root` holds three files and a recipient storing under `root`,
    paused (as synchronous PBT leaves it), so an exploit's clone (Tune's config change, pause) can be left out."""
    for name, text in CHECKPOINT_FILES.items():
        path = f"{root}/donor/checkpoint_000004/{name}"
        fs.create_dir(path.rsplit("/", 1)[0])
        with fs.open_output_stream(path) as out:
            out.write(text.encode())
    donor, recipient = stub_trial("donor"), stub_trial("recipient", latest=Checkpoint(f"{root}/recipient/own", filesystem=fs))
    recipient.status = "PAUSED"
    recipient.storage = SimpleNamespace(trial_fs_path=f"{root}/recipient", storage_filesystem=fs)
    recipient.run_metadata.invalidate_cache = lambda: None
    add(scheduler, donor, 10.0, 4, checkpoint=Checkpoint(f"{root}/donor/checkpoint_000004", filesystem=fs))
    add(scheduler, recipient, 1.0, 4)
    return donor, recipient


def pinned_files(recipient: StubTrial) -> dict[str, str]:
    """The files of the checkpoint the recipient will restore from."""
    fs, pin = recipient.storage.storage_filesystem, recipient.run_metadata.checkpoint_manager._latest_checkpoint_result.checkpoint.path
    infos = fs.get_file_info(pyarrow.fs.FileSelector(pin, recursive=True))
    return {i.path[len(pin) + 1:]: fs.open_input_stream(i.path).read().decode() for i in infos if i.type == pyarrow.fs.FileType.File}


def test_the_pin_is_copied_while_the_recipient_resets_and_complete_before_its_restore(scheduler, tmp_path):
    """The exploit returns before the copy and its lineage line are written (the controller then
    resets the recipient's actor); the controller's restore of the recipient, and any experiment
    snapshot, first wait for them."""
    donor, recipient = stored_donor_and_recipient(scheduler, pyarrow.fs.LocalFileSystem(), str(tmp_path))
    scheduler.exploit(None, recipient, donor, lambda: None)
    pin = recipient.run_metadata.checkpoint_manager._latest_checkpoint_result.checkpoint.path
    assert "/pinned/" in pin
    scheduler.before_restore(recipient)
    assert pinned_files(recipient) == CHECKPOINT_FILES
    scheduler.before_snapshot()  # and the lineage line
    assert json.loads((tmp_path / LINEAGE_FILE).read_text())["pinned_checkpoint"] == pin


def exploit_copied_during_an_outage(scheduler, donor, recipient, restartable_s3) -> None:
    """An exploit whose pin copy starts once the storage is down: copies run one at a time in
    exploit order, and the previous exploit's copy holds the copier until the outage begins."""
    previous_copy = threading.Event()
    scheduler._write_soon(stub_trial("earlier_recipient"), PIN_COPY, previous_copy.wait)
    scheduler.exploit(None, recipient, donor, lambda: None)
    restartable_s3.stop()
    previous_copy.set()


def test_a_pin_copy_failed_by_an_outage_is_made_again_before_the_restore(scheduler, bucket, restartable_s3, monkeypatch, caplog):
    """The copy fails in the background while the storage is down; the restore (or the next
    snapshot) makes it again, riding out the outage like every other write, and a storage that
    stays down past the retry limit stops the run (`StorageOutage`)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", restartable_s3.url)
    monkeypatch.setenv("PBT_JOB_STORAGE_RETRY_S", "30")
    donor, recipient = stored_donor_and_recipient(scheduler, filesystem(parse_storage_uri(f"s3://{bucket}")), f"{bucket}/run")
    with checkpoint_deletions_deferred():  # as in a run: a pin's exploit queues older pins for deletion
        exploit_copied_during_an_outage(scheduler, donor, recipient, restartable_s3)
        threading.Timer(3.0, restartable_s3.start).start()
        with caplog.at_level(logging.WARNING, logger="pbt_job.training.scheduler"):
            scheduler.before_restore(recipient)
        assert "the pin copy of recipient failed" in caplog.text, "the copy met the outage"
        assert pinned_files(recipient) == CHECKPOINT_FILES
        monkeypatch.setenv("PBT_JOB_STORAGE_RETRY_S", "2")
        exploit_copied_during_an_outage(scheduler, donor, recipient, restartable_s3)
        with pytest.raises(StorageOutage):
            scheduler.before_snapshot()
        restartable_s3.start()


def test_a_trial_is_not_paused_for_a_recipient_that_only_waits_for_its_restart(scheduler):
    """Tune's PBT pauses a trial at its perturbation point while any trial waits (to share a
    cluster too small for the population). A recipient restarting on its own actor waits for
    no share: pausing another trial for it would only stall that trial."""
    recipient, running = stub_trial("recipient"), stub_trial("running")
    recipient.status = "PAUSED"
    scheduler._restarting.add("recipient")
    assert scheduler._only_recipients_wait(SimpleNamespace(get_trials=lambda: [recipient, running]))
    never_started = stub_trial("never_started")
    never_started.status = "PENDING"
    assert not scheduler._only_recipients_wait(SimpleNamespace(get_trials=lambda: [recipient, running, never_started]))


@pytest.mark.filterwarnings("ignore")  # scikit-learn's GP fit warns about convergence on so few points
def test_pb2_explores_where_its_gp_expects_the_most_gain_not_by_perturbing(tmp_path):
    """What only PB2 does (`pbt.scheduler: pb2`): a new config from its Gaussian-process bandit.

    1. Six trials trained 2 iterations each with clip_param spread over its bounds
       [0.1, 0.3]; their metric gained 100 x clip_param: the more, the better.
    2. A recipient clones the trial at clip_param 0.18.
    3. PB2 proposes clip_param at the top of the bounds (0.3), where the GP expects
       the most gain, and names no perturbation. PBT would give 0.144 or 0.216
       (x 0.8 / x 1.2), or, once in four, a uniform resample: at most 5 % of those
       reach 0.29. Choices (lr, entropy_coeff) come out as listed values.
    """
    job = load_config(REPO / "tests" / "data" / "tiny.yaml", ["pbt.scheduler=pb2"])
    scheduler = build_scheduler(job, RunFiles(pyarrow.fs.LocalFileSystem, str(tmp_path)))
    assert isinstance(scheduler, LineagePB2)
    trials = []
    for i, clip in enumerate([0.1, 0.14, 0.18, 0.22, 0.26, 0.3]):
        trial = stub_trial(f"t{i}")
        trial.config = {"lr": 1e-4, "clip_param": clip, "entropy_coeff": 0.0}
        state = _PBTTrialState(trial)
        scheduler._trial_state[trial] = state
        for iteration, score in ((2, 0.0), (4, 100 * clip)):
            scheduler._save_trial_state(state, iteration, {"training_iteration": iteration, "pbt_score": score}, trial)
        trials.append(trial)
    recipient, donor = trials[0], trials[2]
    for seed in range(3):
        random.seed(seed)
        np.random.seed(seed)
        config, operations = scheduler._get_new_config(recipient, donor)
        assert operations == {}, "PBT names its perturbations; PB2 has none"
        assert 0.29 <= config["clip_param"] <= 0.3, (seed, config)
        assert config["lr"] in [1e-3, 5e-4, 1e-4] and config["entropy_coeff"] in [0.0, 1e-3, 5e-3], config
