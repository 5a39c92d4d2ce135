"""The capacity meter's rollup: units per partition key and simulated second, and the hottest item.

``item_seconds`` sums each item's write and read units per simulated second; ``peak`` finds the
hottest item of a window and sets it against DynamoDB's per-partition limits (1,000 write units,
3,000 read units per second). Both read ``CallRecord``s of ``mlmoat.bench.capacity``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlmoat.bench.itemsize import PARTITION_READ_UNITS_PER_SECOND, PARTITION_WRITE_UNITS_PER_SECOND

if TYPE_CHECKING:
    from mlmoat.bench.capacity import CallRecord


@dataclass(frozen=True, slots=True)
class ItemSecond:
    """The units one partition key consumed in one simulated second."""

    pk: str
    second: int
    write_units: float
    read_units: float


@dataclass(frozen=True, slots=True)
class Peak:
    """The hottest item: its units per second in its hottest second, against the limit."""

    pk: str | None
    second: int | None
    units_per_second: float
    limit: int

    @property
    def share(self) -> float:
        """``units_per_second`` as a fraction of the partition limit (above 1: throttled)."""
        return self.units_per_second / self.limit


def item_seconds(
    records: Iterable[CallRecord], *, group: Callable[[str], str] | None = None
) -> list[ItemSecond]:
    """Units per partition key (or per ``group(pk)``: ``lambda pk: "table"`` sums the table)
    and simulated second (``floor`` of each record's time)."""
    totals: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for record in records:
        pk = record.pk if group is None else group(record.pk)
        sums = totals[(pk, math.floor(record.simulated))]
        sums[0] += record.write_units
        sums[1] += record.read_units
    return [ItemSecond(pk, s, w, r) for (pk, s), (w, r) in sorted(totals.items())]


def peak(
    records: Iterable[CallRecord],
    *,
    start: float,
    end: float,
    kind: str,
    select: Callable[[str], bool] = lambda pk: True,
    group: Callable[[str], str] | None = None,
    span: float | None = None,
) -> Peak:
    """The hottest selected item's ``kind`` (``"write"`` or ``"read"``) units per second over the
    simulated window ``[start, end)`` (``group`` as for ``item_seconds``; the limit is then the
    one item's, for comparison). A record outside the window counts nowhere.

    A window of a second or more: only the seconds it covers whole count. A shorter window
    stands for a second at the rate it ran at: each item's units in it divided by ``span``, the
    time that item's share of the traffic stands for (by default the window; with many keys
    taking turns, each key's turn: a key sending once per second, once in the window, spans 1 s).

    Raises:
        ValueError: ``kind`` is neither, the window is empty, or ``span`` is not positive.
    """
    if kind not in ("write", "read"):
        raise ValueError("kind must be 'write' or 'read'")
    if end <= start:
        raise ValueError("the window is empty")
    if span is not None and span <= 0:
        raise ValueError("span must be positive")
    limit = PARTITION_WRITE_UNITS_PER_SECOND if kind == "write" else PARTITION_READ_UNITS_PER_SECOND
    chosen = [r for r in records if start <= r.simulated < end and select(r.pk)]
    if end - start < 1.0:
        # One cell per item over the whole (sub-second) window.
        chosen = [dataclasses.replace(r, simulated=math.floor(start)) for r in chosen]
    best = Peak(None, None, 0.0, limit)
    for cell in item_seconds(chosen, group=group):
        if end - start < 1.0:
            seconds = span if span is not None else end - start
        else:
            seconds = min(end, cell.second + 1) - max(start, cell.second)
            if seconds < 1.0 - 1e-9:
                continue
        units = cell.write_units if kind == "write" else cell.read_units
        rate = units / seconds
        if rate > best.units_per_second:
            best = Peak(cell.pk, cell.second, rate, limit)
    return best
