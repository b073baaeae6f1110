"""The node's kept checkpoints (`pbt_job.training.node_checkpoints`): what a recipient on the donor's node reads."""

from __future__ import annotations

import pytest

from pbt_job.training import node_checkpoints


@pytest.fixture()
def node_root(tmp_path, monkeypatch):
    monkeypatch.setattr(node_checkpoints, "ROOT", tmp_path / "node")
    return tmp_path / "node"


def checkpoint_folder(tmp_path, name: str):
    folder = tmp_path / name
    (folder / "learner").mkdir(parents=True)
    (folder / "learner" / "state.pkl").write_text(name)
    return folder


def test_a_pin_names_its_source_and_finds_the_nodes_copy(tmp_path, node_root):
    kept = node_checkpoints.KeptCheckpoints()
    kept.keep(str(checkpoint_folder(tmp_path, "c1")), "bucket/run/donor/checkpoint_000001/")
    pin = node_checkpoints.pin_name("bucket/run/recipient/pinned/iter_000002_from_donor_at_7", "bucket/run/donor/checkpoint_000001")
    found = node_checkpoints.source_on_this_node(pin)
    assert found is not None and (found / "learner" / "state.pkl").read_text() == "c1"
    assert not (tmp_path / "c1").exists(), "moved, not copied"
    other = node_checkpoints.pin_name("bucket/run/recipient/pinned/iter_000002_from_donor_at_8", "bucket/run/donor/checkpoint_000002")
    assert node_checkpoints.source_on_this_node(other) is None
    assert node_checkpoints.source_on_this_node("bucket/run/recipient/pinned/iter_000002_from_donor_at_9") is None


def test_a_process_keeps_its_last_two_and_clears_them(tmp_path, node_root):
    kept = node_checkpoints.KeptCheckpoints()
    paths = [f"bucket/run/donor/checkpoint_00000{i}" for i in range(1, 4)]
    for i, path in enumerate(paths, start=1):
        kept.keep(str(checkpoint_folder(tmp_path, f"c{i}")), path)
    pins = [node_checkpoints.pin_name("bucket/run/r/pinned/p", path) for path in paths]
    assert [node_checkpoints.source_on_this_node(pin) is not None for pin in pins] == [False, True, True]
    kept.keep(str(checkpoint_folder(tmp_path, "again")), paths[2])  # saved again: the copy there stays
    assert (node_checkpoints.source_on_this_node(pins[2]) / "learner" / "state.pkl").read_text() == "c3"
    kept.clear()
    assert not any(node_root.iterdir())


def test_a_disk_that_takes_nothing_keeps_nothing_and_raises_nothing(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(node_checkpoints, "ROOT", tmp_path / "file" / "node")
    node_checkpoints.KeptCheckpoints().keep(str(checkpoint_folder(tmp_path, "c1")), "bucket/run/donor/checkpoint_000001")
    assert node_checkpoints.source_on_this_node(node_checkpoints.pin_name("p", "bucket/run/donor/checkpoint_000001")) is None


def test_a_folder_others_can_write_to_is_not_read(tmp_path, node_root):
    """A kept checkpoint is unpickled when loaded: a folder another user could have filled is ignored."""
    node_checkpoints.KeptCheckpoints().keep(str(checkpoint_folder(tmp_path, "c1")), "bucket/run/donor/checkpoint_000001")
    pin = node_checkpoints.pin_name("p", "bucket/run/donor/checkpoint_000001")
    assert node_checkpoints.source_on_this_node(pin) is not None
    node_root.chmod(0o777)
    assert node_checkpoints.source_on_this_node(pin) is None
