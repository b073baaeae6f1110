"""Ctrl-C (SIGINT) and Kubernetes' stop (SIGTERM) end a training run early but resumably.

Tune stops its loop and saves a last experiment snapshot on SIGINT, then returns as
if the run had ended; SIGTERM kills the driver (Ray's own handler, installed by
`ray.init`, just dies). pbt-job catches both: while Tune's loop runs, the first signal
is passed to Tune as SIGUSR1 (which Tune always listens to, `TUNE_DISABLE_SIGINT_HANDLER`
aside); the run is then recorded as interrupted, not finished, and the command exits
with 128 + the signal's number. A second signal, or one outside Tune's loop,
interrupts at once (KeyboardInterrupt).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Iterator

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []
_catching = False
_tune_listening = False


def received() -> int | None:
    """The first SIGINT or SIGTERM caught in this process, if any."""
    return _received[0] if _received else None


def _on_signal(signum: int, frame: object) -> None:
    _received.append(signum)
    if len(_received) > 1 or not (_tune_listening and callable(signal.getsignal(signal.SIGUSR1))):
        raise KeyboardInterrupt
    logger.warning("[interrupt] %s: stopping the trials and saving the run's state; send it again to stop at once",
                   signal.Signals(signum).name)
    signal.raise_signal(signal.SIGUSR1)


def _install() -> None:
    for signum in SIGNALS:
        signal.signal(signum, _on_signal)


@contextlib.contextmanager
def caught() -> Iterator[None]:
    """Catch SIGINT and SIGTERM while the block runs (the whole `pbt-job train` command)."""
    global _catching
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _install()
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _catching = True
    try:
        yield
    finally:
        _catching = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def passed_to_tune() -> Iterator[None]:
    """While the block runs (`Tuner.fit`), a first signal asks Tune to stop instead of interrupting.

    Entered after `ray.init`, which replaced the SIGTERM handler: it is put back.
    """
    global _tune_listening
    if _catching:
        _install()
    _tune_listening = True
    try:
        yield
    finally:
        _tune_listening = False
