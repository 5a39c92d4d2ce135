"""What this environment last saw of each counting item: lane attributes and rate windows.

A write returns ``UPDATED_NEW`` (only what it changed), so the other lanes' attributes are known
from the last time this environment saw the item whole: the read of a cold start, the
``ALL_OLD`` of a failed write, or an ``ALL_NEW`` asked for when that is ``HORIZON_SECONDS`` old.
``ItemViews.plan`` turns that into what the next write removes: the rate windows before the
current one, and, from a view seen whole within ``PRUNE_VIEW_SECONDS``, up to
``PRUNE_PER_WRITE`` lane attributes older than the horizon; ``ItemViews.stale`` names the lanes
a cleanup write removes (see ``security.writers``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from security.records import RATE_ATTR_PREFIX
from security.writers import (
    HORIZON_SECONDS,
    PRUNE_PER_WRITE,
    PRUNE_VIEW_SECONDS,
    WRITER_ATTR_PREFIX,
)

_VIEWS = 4096
#: The request-digest sets of the design before writer lanes (``rq_<now // 30>``): an item
#: written by it is cleaned by the next writes. Only buckets older than the previous one are
#: removed, as that design removed them itself, so instances still running it during a deploy
#: keep their idempotency.
LEGACY_PREFIX = "rq_"
LEGACY_BUCKET_SECONDS = 30


@dataclass(slots=True)
class _View:
    writers: dict[str, int]
    windows: dict[str, int]
    rows_used: int | None
    full_at: float
    legacy: set[str]


def _older_window(attr: str, window_start: int) -> bool:
    suffix = attr.removeprefix(RATE_ATTR_PREFIX)
    return suffix.lstrip("-").isdigit() and int(suffix) < window_start


def _older_bucket(attr: str, bucket: int) -> bool:
    suffix = attr.removeprefix(LEGACY_PREFIX)
    return suffix.lstrip("-").isdigit() and int(suffix) < bucket


def _numbers(item: Mapping[str, Any], prefix: str) -> dict[str, int]:
    return {
        name: value
        for name, value in item.items()
        if name.startswith(prefix) and isinstance(value, int)
    }


def _stale(view: _View, own: str, before: int) -> list[str]:
    ordered = sorted((v, name) for name, v in view.writers.items() if name != own and v < before)
    return [name for _, name in ordered]


@dataclass(frozen=True, slots=True)
class Plan:
    """What the next write to an item should remove and ask for."""

    windows: tuple[str, ...]
    writers: tuple[str, ...]
    prune_before: int
    full: bool


@dataclass(frozen=True, slots=True)
class Counts:
    """An item's counters as last seen: rows in a window (None: not seen), rows used."""

    window_rows: int | None
    rows_used: int | None


class ItemViews:
    """What this environment last saw of each counting item (bounded LRU, thread-safe)."""

    def __init__(self, *, size: int = _VIEWS) -> None:
        self._lock = threading.Lock()
        self._views: OrderedDict[str, _View] = OrderedDict()
        self._size = size

    def note(
        self,
        pk: str,
        item: Mapping[str, Any],
        *,
        now: float,
        full: bool,
        removed: Iterable[str] = (),
    ) -> None:
        """Record an item as a write or read returned it: ``full`` when it is the whole item
        (a read, ALL_OLD, ALL_NEW), else the attributes a write updated (UPDATED_NEW)."""
        writers = _numbers(item, WRITER_ATTR_PREFIX)
        windows = _numbers(item, RATE_ATTR_PREFIX)
        rows_used = item.get("rows_used")
        rows_used = rows_used if isinstance(rows_used, int) else None
        legacy = {name for name in item if name.startswith(LEGACY_PREFIX)}
        with self._lock:
            view = self._views.get(pk)
            if full or view is None:
                seen_at = now if full else float("-inf")
                view = _View(writers, windows, rows_used, seen_at, legacy)
            else:
                view.writers.update(writers)
                view.windows.update(windows)
                view.rows_used = view.rows_used if rows_used is None else rows_used
            for name in removed:
                view.writers.pop(name, None)
                view.windows.pop(name, None)
                view.legacy.discard(name)
            self._views[pk] = view
            self._views.move_to_end(pk)
            while len(self._views) > self._size:
                self._views.popitem(last=False)

    def plan(
        self, pk: str, *, own: str, now: float, window_start: int, previous: str | None
    ) -> Plan:
        """The stale windows (``previous`` and any older one seen; none if ``previous`` is None)
        and old request-digest sets of the previous design, the other lanes' attributes older than
        the horizon (oldest first, at most ``PRUNE_PER_WRITE``; none unless the view was seen
        whole within ``PRUNE_VIEW_SECONDS``; when it is older than the horizon the write asks for
        the whole item back)."""
        before = int((now - HORIZON_SECONDS) * 1000)
        first = () if previous is None else (previous,)
        with self._lock:
            view = self._views.get(pk)
            if view is None:
                return Plan(first, (), before, True)
            windows = set(first)
            if previous is not None:
                windows |= {w for w in view.windows if _older_window(w, window_start)}
            bucket = int(now) // LEGACY_BUCKET_SECONDS
            windows |= {name for name in view.legacy if _older_bucket(name, bucket - 1)}
            full = now - view.full_at >= HORIZON_SECONDS
            recent = now - view.full_at <= PRUNE_VIEW_SECONDS
            stale = _stale(view, own, before) if recent else []
        return Plan(tuple(sorted(windows)), tuple(stale[:PRUNE_PER_WRITE]), before, full)

    def stale(self, pk: str, *, own: str, now: float) -> tuple[str, ...]:
        """The other lanes' attributes older than the horizon on ``pk``, oldest first, when the
        view of it is whole and recent (seen within the horizon), else none."""
        with self._lock:
            view = self._views.get(pk)
            if view is None or now - view.full_at >= HORIZON_SECONDS:
                return ()
            return tuple(_stale(view, own, int((now - HORIZON_SECONDS) * 1000)))

    def counts(self, pk: str, window: str) -> Counts:
        """The rows in ``window`` and the rows used, as last seen on ``pk``."""
        with self._lock:
            view = self._views.get(pk)
            if view is None:
                return Counts(None, None)
            return Counts(view.windows.get(window), view.rows_used)

    def writers(self, pk: str) -> dict[str, int]:
        """The lane attributes last seen on ``pk`` (a copy)."""
        with self._lock:
            view = self._views.get(pk)
            return dict(view.writers) if view else {}
