"""Checkpoints a node's trials uploaded, kept on the node's disk: an exploit's recipient on the same
node as its donor loads the donor's checkpoint from there instead of downloading its pinned copy.

On S3 the recipient's download of the pin (5.5 MB on `configs/quick.yaml`) was the largest part
of an exploit's cost: 0.8-1.0 s from an S3 server busy with the other trials' uploads. The donor's
process had just written the same files before uploading them. Each trial process keeps its last
`KEPT` uploaded checkpoints under `ROOT`, named by a digest of their storage path; a pin's name
carries the digest of the checkpoint it copies (`pin_name`). A recipient whose donor ran on
another node, or whose donor has rotated the checkpoint out, finds nothing and downloads.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

ROOT = Path(tempfile.gettempdir()) / f"pbt-job-node-checkpoints-{os.getuid()}"
"""Loading a checkpoint unpickles it: only a folder this user made, and no one else can write to, is read."""
KEPT = 2
_SOURCE = re.compile(r"_src_([0-9a-f]{24})$")


def digest(storage_path: str) -> str:
    """A checkpoint's name on this node: a digest of its path in storage."""
    return hashlib.sha256(storage_path.rstrip("/").encode()).hexdigest()[:24]


def pin_name(prefix: str, source_path: str) -> str:
    """The name of a pin copied from `source_path`: `prefix` and the source's digest."""
    return f"{prefix}_src_{digest(source_path)}"


def source_on_this_node(pin_path: str) -> Path | None:
    """The node's kept copy of the checkpoint a pin was copied from, if it has one."""
    match = _SOURCE.search(pin_path.rstrip("/"))
    if match is None or not _root_is_private():
        return None
    kept = ROOT / match.group(1)
    return kept if kept.is_dir() else None


def _root_is_private() -> bool:
    try:
        status = ROOT.stat()
    except OSError:
        return False
    return status.st_uid == os.getuid() and not status.st_mode & 0o022


class KeptCheckpoints:
    """One trial process's last `KEPT` uploaded checkpoints on the node's disk."""

    def __init__(self) -> None:
        self._kept: list[Path] = []

    def keep(self, local_dir: str, storage_path: str) -> None:
        """Move `local_dir` (uploaded as `storage_path`) into the node's folder, atomically, and
        delete this process's oldest beyond `KEPT`. Best effort: a full or read-only disk keeps nothing."""
        target = ROOT / digest(storage_path)
        staged = ROOT / f".{target.name}.{uuid.uuid4().hex}"
        try:
            ROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.move(local_dir, staged)
            os.rename(staged, target)
        except OSError:  # e.g. already kept (the same checkpoint saved again): the copy there stays
            shutil.rmtree(staged, ignore_errors=True)
            return
        self._kept.append(target)
        while len(self._kept) > KEPT:
            shutil.rmtree(self._kept.pop(0), ignore_errors=True)

    def clear(self) -> None:
        for kept in self._kept:
            shutil.rmtree(kept, ignore_errors=True)
        self._kept = []
