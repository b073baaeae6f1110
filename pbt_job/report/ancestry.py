"""Ancestry through clones: whose training a trial's weights went through, and when.

In PBT an exploit overwrites a recipient's weights and hyperparameters with a
donor's checkpoint, and Tune copies the donor's iteration count with them. A
trial's final weights were therefore trained by a chain of trials: the donor of
its last exploit up to that exploit, that donor's own last donor before *then*,
and so on. Following the chain backwards in time, each link strictly earlier
than the one after it, reconstructs the chain; a trial cloned twice only keeps
its latest clone, and a donor that was itself a recipient continues the chain.

Pure functions on plain values: no files, no Ray.

Example:
    >>> a_to_b = Exploit(recipient="b", donor="a", donor_iteration=4, time=10.0)
    >>> [(s.trial, s.start, s.end) for s in ancestry("b", [a_to_b])]
    [('a', 0, 4), ('b', 4, None)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, TypeVar


@dataclass(frozen=True)
class Exploit:
    """One clone, as `lineage.jsonl` records it.

    Attributes:
        recipient: The trial whose weights and hyperparameters were replaced.
        donor: The trial they were copied from.
        donor_iteration: The iteration of the donor's checkpoint; the recipient continues from it.
        time: When it happened (seconds since the epoch), which orders the clones.
    """

    recipient: str
    donor: str
    donor_iteration: int
    time: float


@dataclass(frozen=True)
class Segment:
    """Iterations `start + 1 .. end` of a lineage, trained by `trial`.

    Attributes:
        trial: The trial that trained them.
        start: Iterations the weights had when `trial` got them (0: from scratch).
        end: The last iteration it trained before handing them on; None: up to its latest.
        until: When it handed them on (its later results belong to other lineages).
        received: The exploit by which `trial` got the weights; None for the first segment.
    """

    trial: str
    start: int
    end: int | None
    until: float = math.inf
    received: Exploit | None = None


def ancestry(trial: str, exploits: list[Exploit]) -> list[Segment]:
    """The chain of trials that trained `trial`'s current weights, oldest first.

    Args:
        trial: The trial to trace (usually the best one).
        exploits: Every exploit of the run, in any order.

    Returns:
        Segments whose iteration ranges follow one another; a segment may be empty
        (start == end) when a trial passed weights on before training them further.
    """
    chain: list[Segment] = []
    end: int | None = None
    until = math.inf
    while True:
        received = [e for e in exploits if e.recipient == trial and e.time < until]
        if not received:
            chain.append(Segment(trial, 0, end, until))
            return chain[::-1]
        last = max(received, key=lambda e: e.time)
        chain.append(Segment(trial, last.donor_iteration, end, until, last))
        trial, end, until = last.donor, last.donor_iteration, last.time


class Timed(Protocol):
    """A result of one trial: its iteration and when it was reported."""

    iteration: int
    time: float


T = TypeVar("T", bound=Timed)


def inherited(chain: list[Segment], results: dict[str, list[T]]) -> list[T]:
    """The results along a chain: what the weights went through, iteration by iteration.

    A trial may report an iteration more than once (a clone resets its count); the
    one that counts is its latest report of that iteration before it handed on.

    Args:
        chain: From `ancestry`.
        results: Each trial's results in the order it reported them.

    Returns:
        One result per iteration present, in iteration order.
    """
    picked: list[T] = []
    for segment in chain:
        latest: dict[int, T] = {}
        for result in results.get(segment.trial, []):
            in_range = segment.start < result.iteration and (segment.end is None or result.iteration <= segment.end)
            if in_range and result.time <= segment.until:
                latest[result.iteration] = result
        picked += [latest[iteration] for iteration in sorted(latest)]
    return picked


def clones_before(results: list[Timed], exploits: list[Exploit]) -> list[Exploit | None]:
    """Per result of one trial, the exploit that replaced its weights since its previous result, if any.

    Args:
        results: The trial's results in the order it reported them.
        exploits: The exploits whose recipient is this trial.
    """
    clones: list[Exploit | None] = []
    previous = -math.inf
    for result in results:
        between = [e for e in exploits if previous <= e.time < result.time]
        clones.append(max(between, key=lambda e: e.time) if between else None)
        previous = result.time
    return clones


def discarded(results: list[Timed]) -> list[bool]:
    """Per result, whether a later restore went back to or before its iteration (its work was thrown away)."""
    flags, lowest_later = [], math.inf
    for result in reversed(results):
        flags.append(result.iteration >= lowest_later)
        lowest_later = min(lowest_later, result.iteration)
    return flags[::-1]


def segment_end(segment: Segment, results: dict[str, list[Timed]]) -> int:
    """The last iteration of a segment; an open one ends at its trial's latest result."""
    if segment.end is not None:
        return segment.end
    reported = results.get(segment.trial)
    return reported[-1].iteration if reported else segment.start
