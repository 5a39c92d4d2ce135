"""Sending a counting write under a lane's stamp, and telling what a failed one means.

``Sender.send`` stamps the write with the lane's attribute and next sequence, the stale windows
and lane attributes ``ItemViews`` says it may remove, and ``UPDATED_NEW`` (or ``ALL_NEW`` when
the item was not seen whole for a while). A failed condition's ``ALL_OLD`` is the whole current
item; before the caller judges it (a limit, a stale configuration, a revoked key), three cases
are the stamp's own:

* the lane's attribute is at this write's sequence: an earlier attempt of this very write (an SDK
  retry after a lost answer) landed: **already counted**, admitted once;
* the attribute is past the sequence: another lane drew the same id: redraw, write again;
* an attribute the write meant to prune was written again meanwhile: write again without it.

A write that saw the item whole (``ALL_NEW``) and found ``CLEANUP_AT`` stale lanes or more on it
is followed by one cleanup write (``security.writers``: how an item that many environments take
turns on stays under 1 KB). The request is counted already: the cleanup's failure is logged and
changes nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from security.errors import StoreUnavailableError
from security.itemviews import Counts, ItemViews
from security.records import Counters, KeyRecord, SubjectRecord, rate_attr, shard_pk
from security.store import ChargeOutcome, Item
from security.writers import CLEANUP_AT, CLEANUP_PER_WRITE, HORIZON_SECONDS, Lane, Stamp

R = TypeVar("R")
_ATTEMPTS = 3
_LOG = logging.getLogger(__name__)
#: The cleanup write: (item pk, lane attributes, remove only those below this sequence).
Prune = Callable[..., ChargeOutcome]


@dataclass(frozen=True, slots=True)
class Sent:
    """A sent counting write: ``counted`` (now, or by an earlier attempt: ``already``), and the
    item: what the write updated, or the whole item (``full``: ALL_NEW, ALL_OLD), None when there
    is no such item."""

    counted: bool
    item: Item | None
    full: bool
    already: bool = False

    @property
    def found(self) -> bool:
        """Whether the item exists (a failed write to no item returns nothing)."""
        return self.item is not None

    @property
    def counters(self) -> Counters:
        """What the write updated or the failed write saw (empty when there is no item)."""
        return Counters(self.item)

    @property
    def key(self) -> KeyRecord:
        """The item as an API key's record (whole when ``full``)."""
        return KeyRecord(self.item)

    @property
    def subject(self) -> SubjectRecord:
        """The item as a token subject's record (empty when there is no item yet)."""
        return SubjectRecord(self.item)


class Sender:
    """Sends stamped counting writes for one environment."""

    def __init__(
        self, *, views: ItemViews, clock: Callable[[], float], prune: Prune | None = None
    ) -> None:
        """``prune``: the store's ``prune_lanes`` (None: no cleanup writes)."""
        self._views = views
        self._clock = clock
        self._prune = prune
        #: Cleanup writes sent, and those a lane's write made fail (for the capacity replay).
        self.cleanups = 0
        self.cleanups_failed = 0

    def seen(self, principal_id: str, window_start: int, *, shard: int | None = None) -> Counts:
        """What this environment last saw of a principal's (or its shard's) counters."""
        pk = principal_id if shard is None else shard_pk(principal_id, shard)
        return self._views.counts(pk, rate_attr(window_start))

    def saw(self, record: Counters) -> None:
        """Note a record read whole (a consistent read) for the next writes' pruning."""
        self._views.note(str(record.item["pk"]), record.item, now=self._clock(), full=True)

    def send(
        self,
        lane: Lane,
        pk: str,
        *,
        build: Callable[[Stamp, tuple[str, ...]], R],
        call: Callable[[R], ChargeOutcome],
        window_start: int = 0,
        window_seconds: int | None = None,
        shard: int | None = None,
        full: bool = False,
    ) -> Sent:
        """Send ``build(stamp, stale windows)`` through ``call``, writing again (a new sequence)
        when the stamp itself made it fail. ``window_seconds``: the rate window's length (None:
        the write removes no window); ``shard``: the write goes to that shard of ``pk``;
        ``full``: always ask ALL_NEW.

        Raises:
            StoreUnavailableError: DynamoDB failed, or the stamp failed three times.
        """
        if shard is not None:
            pk = shard_pk(pk, shard)
        previous = None if window_seconds is None else rate_attr(window_start - window_seconds)
        for _ in range(_ATTEMPTS):
            moment = self._clock()
            plan = self._views.plan(
                pk, own=lane.attr, now=moment, window_start=window_start, previous=previous
            )
            stamp = Stamp(
                attr=lane.attr,
                sequence=lane.next_sequence(moment),
                prune=plan.writers,
                prune_before=plan.prune_before,
                full=full or plan.full,
            )
            outcome = call(build(stamp, plan.windows))
            if outcome.ok:
                item = outcome.item or {}
                removed = (*plan.windows, *plan.writers)
                self._views.note(pk, item, now=moment, full=outcome.full, removed=removed)
                if outcome.full:
                    self._cleanup(pk, lane, moment)
                return Sent(counted=True, item=item, full=outcome.full)
            old = outcome.item
            if old is None:
                return Sent(counted=False, item=None, full=True)
            self._views.note(pk, old, now=moment, full=True)
            if stamp.counted(old):
                return Sent(counted=True, item=old, full=True, already=True)
            if stamp.overtaken(old):
                lane.redraw()
                continue
            if stamp.prune_raced(old):
                continue
            return Sent(counted=False, item=old, full=True)
        raise StoreUnavailableError("writer_contention", detail="stamp refused three times")

    def _cleanup(self, pk: str, lane: Lane, moment: float) -> None:
        stale = self._views.stale(pk, own=lane.attr, now=moment)
        if self._prune is None or len(stale) < CLEANUP_AT:
            return
        attrs = stale[:CLEANUP_PER_WRITE]
        before = int((moment - HORIZON_SECONDS) * 1000)
        self.cleanups += 1
        try:
            outcome = self._prune(pk, attrs, before=before)
        except StoreUnavailableError as exc:
            _LOG.warning("lane_cleanup_failed", extra={"reason": exc.reason, "lanes": len(attrs)})
            return
        if outcome.ok:
            self._views.note(pk, {}, now=moment, full=False, removed=attrs)
        else:
            self.cleanups_failed += 1
            if outcome.item is not None:
                self._views.note(pk, outcome.item, now=moment, full=True)
