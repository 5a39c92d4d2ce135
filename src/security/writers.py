"""Writer lanes: what makes a counting write idempotent without any per-request state.

Lambda runs one request at a time per execution environment, so an environment's counting writes
never overlap. A **lane** is such a sequence of non-overlapping writes: a random id (5 base62
characters, drawn when the lane is created) and a **sequence** that only grows. Every counting
write sets the lane's own attribute on the item, ``e_<id> = :seq``, under the condition
``attribute_not_exists(e_<id>) OR e_<id> < :seq``. botocore retries a request by resending it
unchanged, same sequence: if the first attempt landed and only its answer was lost, the retry
fails the condition and its ``ALL_OLD`` shows ``e_<id> == :seq``, which is how the caller knows the
request is **already counted**. Nothing per request is stored: one small number per lane.

* In Lambda an environment has one lane. A process serving several threads at once (``mlmoat
  local start-api``, the tests) has one lane per request in flight, reused (``WriterPool``).
* The sequence is ``max(last + 1, now in ms)``: strictly increasing, and close to the time of the
  lane's last write, which is what pruning reads.
* A lane is redrawn after a SnapStart restore (``WriterPool.reset``: every restored environment
  must have ids of its own) and in a forked child (checked by process id).
* Two lanes drawing the same id (1 in 10^9 per pair) cannot over-serve: the one behind fails the
  condition with the attribute *ahead* of its sequence, redraws its id and writes again.

**Pruning** (``security.itemviews``). ``ItemViews`` remembers, per item, the other lanes'
attributes and their last sequence, as this environment last saw them whole: the item read on a
cold start, the ``ALL_OLD`` of a failed write, or the ``ALL_NEW`` that a write asks for instead of
``UPDATED_NEW`` when it has not seen the item whole for ``HORIZON_SECONDS``. From a view seen
whole within ``PRUNE_VIEW_SECONDS``, a write removes up to ``PRUNE_PER_WRITE`` attributes whose
sequence is older than the horizon, each under the condition that it is still that old (a lane
that wrote meanwhile keeps its attribute: the write fails, the caller sees why in ALL_OLD and
writes again). From an older view it prunes nothing: on a key that many environments take turns
on, each every few minutes, lanes stale in a view even seconds old have been written again
since often enough that such removals failed the counting write and cost a second one (3% of
the writes in the capacity model's 10,000-keys steady state with views up to the horizon old;
none within 1 s). A write whose view is older than the horizon asks for ``ALL_NEW``; when
the item it gets back holds ``CLEANUP_AT`` lanes older than the horizon or more, it sends one
**cleanup** write that removes up to ``CLEANUP_PER_WRITE`` of them under the same condition
(``Sender.send``; its failure loses nothing and fails no request). So an item keeps about one
lane per environment that wrote it within the horizon plus fewer than ``CLEANUP_AT`` others.

The horizon is longer than any retry of a counting write can come after its first attempt: a
retry is botocore resending the request within the counting client's own retry budget
(``security.wiring.DYNAMODB_FAST``: 3 attempts, 1 s to connect and 2 s to read, standard-mode
backoff of at most 1 s then 2 s: 12 s at worst), and the horizon is twice that
(``tests/unit/test_writers.py`` holds the two together). A lane removed later than that can
only be one whose environment has moved on: its next write carries a higher sequence.
"""

from __future__ import annotations

import os
import secrets
import string
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

WRITER_ATTR_PREFIX = "e_"
#: A lane's attribute older than this (by its sequence, in ms) may be removed by another write:
#: twice the counting client's worst retry span (see the module docstring).
HORIZON_SECONDS = 24
#: At most this many stale attributes are removed by one counting write (a bounded request).
PRUNE_PER_WRITE = 8
#: A write prunes other lanes only from a view of the item seen whole at most this long ago (a
#: cold request's read, a write's ALL_NEW or ALL_OLD): see the module docstring.
PRUNE_VIEW_SECONDS = 1.0
#: A cleanup write is sent when an item seen whole holds this many stale lanes or more (at about
#: 15 bytes a lane: with a lane per environment of the horizon at 1 request/s, about 24, the
#: item stays under 1 KB, one write unit).
CLEANUP_AT = 16
#: At most this many stale lanes are removed by one cleanup write.
CLEANUP_PER_WRITE = 48
_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 5


def new_writer_id() -> str:
    """A random lane id: 5 base62 characters (``secrets``: unaffected by a snapshot's state)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


def writer_attr(writer_id: str) -> str:
    """The attribute holding lane ``writer_id``'s last sequence on an item."""
    return WRITER_ATTR_PREFIX + writer_id


@dataclass(slots=True)
class Lane:
    """One writer: its id and its last sequence. Used by one thread at a time."""

    id: str
    last: int = 0

    @property
    def attr(self) -> str:
        """Its attribute name, ``e_<id>``."""
        return writer_attr(self.id)

    def next_sequence(self, now: float) -> int:
        """The sequence of the next write: above every earlier one, and ``now`` in ms or later."""
        self.last = max(self.last + 1, int(now * 1000))
        return self.last

    def redraw(self) -> None:
        """A new id (another lane holds this one on some item); the sequence goes on."""
        self.id = new_writer_id()

    def homes(self, shards: int) -> tuple[int, int]:
        """The two shards this lane counts on for a key with ``shards`` shards (stable per id,
        distinct when there are two or more shards)."""
        if shards <= 1:
            return 0, 0
        first = zlib.crc32(self.id.encode("ascii")) % shards
        second = zlib.crc32(f"{self.id}#2".encode("ascii")) % shards
        return first, (first + 1) % shards if second == first else second


class WriterPool:
    """The lanes of this execution environment: one per request in flight, reused."""

    def __init__(self, *, ids: Callable[[], str] | None = None) -> None:
        """``ids`` draws a new lane's id (default ``new_writer_id``; a replay draws them seeded)."""
        self._ids = ids
        self._lock = threading.Lock()
        self._free: list[Lane] = []
        self._pid = os.getpid()
        self._generation = 0

    @contextmanager
    def lane(self) -> Iterator[Lane]:
        """Hold a lane for the duration of one request's writes."""
        with self._lock:
            if os.getpid() != self._pid:  # a forked child must not share its parent's ids
                self._reset_locked()
            lane = self._free.pop() if self._free else Lane((self._ids or new_writer_id)())
            generation = self._generation
        try:
            yield lane
        finally:
            with self._lock:
                if generation == self._generation:
                    self._free.append(lane)

    def reset(self) -> None:
        """Forget every lane (after a SnapStart restore: new ids for this environment)."""
        with self._lock:
            self._reset_locked()

    def _reset_locked(self) -> None:
        self._free.clear()
        self._generation += 1
        self._pid = os.getpid()


@dataclass(frozen=True, slots=True)
class Stamp:
    """What makes one counting write idempotent, and what it prunes.

    ``attr``/``sequence``: the lane's attribute and this write's sequence. ``prune``: other lanes'
    attributes to remove, each only if still below ``prune_before``. ``full``: ask for ``ALL_NEW``
    instead of ``UPDATED_NEW`` (to see the item whole again).
    """

    attr: str
    sequence: int
    prune: tuple[str, ...] = ()
    prune_before: int = 0
    full: bool = False

    @property
    def return_values(self) -> str:
        """The write's ``ReturnValues``."""
        return "ALL_NEW" if self.full else "UPDATED_NEW"

    def expression(
        self, names: dict[str, str], values: dict[str, Any]
    ) -> tuple[str, list[str], list[str]]:
        """The write's parts: (its SET clause, its conditions, its REMOVE names); fills in
        ``names`` and ``values``."""
        names["#e"] = self.attr
        values[":seq"] = {"N": str(self.sequence)}
        conditions = ["(attribute_not_exists(#e) OR #e < :seq)"]
        removals = []
        if self.prune:
            values[":prune_before"] = {"N": str(self.prune_before)}
        for index, attr in enumerate(self.prune):
            names[f"#p{index}"] = attr
            conditions.append(f"(attribute_not_exists(#p{index}) OR #p{index} < :prune_before)")
            removals.append(f"#p{index}")
        return "#e = :seq", conditions, removals

    def counted(self, old: Mapping[str, Any]) -> bool:
        """Whether ``old`` (ALL_OLD of a failed write) shows this very write landed already."""
        return old.get(self.attr) == self.sequence

    def overtaken(self, old: Mapping[str, Any]) -> bool:
        """Whether another lane with the same id wrote the attribute past this sequence."""
        seen = old.get(self.attr)
        return isinstance(seen, int) and seen > self.sequence

    def prune_raced(self, old: Mapping[str, Any]) -> bool:
        """Whether an attribute this write meant to prune was written again meanwhile."""
        for attr in self.prune:
            seen = old.get(attr)
            if isinstance(seen, int) and seen >= self.prune_before:
                return True
        return False
