"""``mlmoat bench --capacity``: DynamoDB capacity per prediction, from replays at simulated rates.

One key at 1, 10, 100, 1,000 and 10,000 requests per simulated second, one key with
``SHARDS`` shards at 10,000, and 10,000 keys at one request per second each
(``mlmoat.bench.replay``), each metered by ``CapacityMeter`` against an embedded moto server and
served by as many execution environments as Lambda would run (Little's law,
``replay.INVOCATION_SECONDS``). Every scenario simulates up to ``WINDOW_SECONDS`` but sends at
most ``FULL_REQUESTS`` real requests (``QUICK_REQUESTS`` with ``--quick``): the fast scenarios
simulate a shorter window, which the table states. Figures per allowed prediction are split
into the key's items ("counter": its item and its shards), the monitor's items (``mon#...``)
and everything ("total"); the hottest item's units per second are set against the partition
limits.

The projection extends what was measured with the model alone: a counting item's size is its
other attributes plus one writer lane (``e_<id>``) per environment that wrote it within the
lanes' horizon, so the measured bytes per lane give how many environments one item holds under
1 KB (one write unit). The monitor's state is bounded: the largest monitor item of the run
stands for its plateau.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlmoat.bench.capacity import CallRecord, CapacityMeter
from mlmoat.bench.itemsize import (
    ITEM_LIMIT_BYTES,
    KB,
    PARTITION_READ_UNITS_PER_SECOND,
    PARTITION_WRITE_UNITS_PER_SECOND,
    read_units,
    write_units,
)
from mlmoat.bench.replay import (
    CACHE_ENTRIES,
    CapacityReplay,
    CounterItem,
    Scenario,
    ScenarioResult,
    SimulatedClock,
)
from mlmoat.bench.rollup import peak

if TYPE_CHECKING:
    from security.extraction import ExtractionMonitor

RATES = (1, 10, 100, 1_000, 10_000)
MANY_KEYS = 10_000
WINDOW_SECONDS = 60.0
FULL_REQUESTS = 2_000
QUICK_REQUESTS = 50
MONITOR_PREFIX = "mon#"
#: The sharded scenario: one key over this many shards at the highest rate.
SHARDS = 20
#: The many-keys steady state: keys simulated of ``MANY_KEYS`` (full, quick), metered seconds
#: (whole periods of the monitor's 30 s buffer: a principal's buffered messages are written
#: about once a period per environment), unmetered warm-up seconds (past 132 s, an
#: environment's cache lifetime for a key at 10,000 keys over 250 environments, and the writer
#: lanes' 24 s horizon) and its rows per request (16: the monitor's states reach their plateau,
#: docs/ml-defences.md "State layout").
STEADY_SAMPLE = 20
STEADY_QUICK_SAMPLE = 2
STEADY_SECONDS = 120.0
STEADY_QUICK_SECONDS = 60.0
STEADY_WARMUP_SECONDS = 140.0
STEADY_WARMUP_ROWS = 16


def plan(*, quick: bool) -> list[Scenario]:
    """The scenarios, each capped at the run's request budget."""
    cap = QUICK_REQUESTS if quick else FULL_REQUESTS
    scenarios = [
        Scenario(f"1 key x {rate:,}/s", 1, float(rate), min(WINDOW_SECONDS, cap / rate))
        for rate in RATES
    ]
    top = RATES[-1]
    scenarios.append(
        Scenario(
            f"1 key ({SHARDS} shards) x {top:,}/s",
            1,
            float(top),
            min(WINDOW_SECONDS, cap / top),
            shards=SHARDS,
        )
    )
    scenarios.append(
        Scenario(
            f"{MANY_KEYS:,} keys x 1/s, first requests",
            MANY_KEYS,
            1.0,
            min(WINDOW_SECONDS, cap / MANY_KEYS),
        )
    )
    scenarios.append(steady_scenario(quick=quick))
    return scenarios


def steady_scenario(*, quick: bool, sample: int | None = None) -> Scenario:
    """10,000 keys at 1 request/s each in steady state: ``STEADY_SAMPLE`` of them
    (``STEADY_QUICK_SAMPLE`` with ``--quick``) simulated, after a warm-up past the environments'
    cache lifetime (``replay.eviction_seconds``) and the lanes' horizon."""
    return Scenario(
        f"{MANY_KEYS:,} keys x 1/s, steady state",
        MANY_KEYS,
        1.0,
        STEADY_QUICK_SECONDS if quick else STEADY_SECONDS,
        sample=sample or (STEADY_QUICK_SAMPLE if quick else STEADY_SAMPLE),
        warmup_seconds=STEADY_WARMUP_SECONDS,
        warmup_rows_per_request=STEADY_WARMUP_ROWS,
    )


@dataclass(frozen=True, slots=True)
class MonitorTiming:
    """One monitor invocation: its wall time, the part spent in its DynamoDB calls (the meter's
    reads around them included) and how many calls it made."""

    wall_s: float
    sdk_s: float
    calls: int


class TimedReplay(CapacityReplay):
    """``CapacityReplay`` that also times each monitor invocation (``monitor_timings``, reset per
    scenario by the caller): the in-process time is the wall time minus the DynamoDB calls, which
    here are a local server's and carry the meter's own reads."""

    def __init__(self, root: Path, endpoint: str) -> None:
        super().__init__(root, endpoint)
        self.monitor_timings: list[MonitorTiming] = []
        self._sdk_s = 0.0
        self._calls = 0
        self._call_started = 0.0

    def metering_starts(self) -> None:
        """The warm-up's monitor invocations are not timed with the metered ones."""
        self.monitor_timings.clear()

    def _call_begins(self, **_: Any) -> None:
        self._call_started = time.perf_counter()

    def _call_ends(self, **_: Any) -> None:
        self._sdk_s += time.perf_counter() - self._call_started
        self._calls += 1

    def _monitor_handler(
        self, settings: Any, meter: CapacityMeter, clock: SimulatedClock
    ) -> tuple[Callable[[dict[str, Any], Any], dict[str, Any]], ExtractionMonitor]:
        attach = meter.attach

        def timed_attach(client: Any) -> Any:
            # Around the meter's own hooks: first before the call, last after it.
            attached = attach(client)
            attached.meta.events.register_first("provide-client-params.dynamodb", self._call_begins)
            attached.meta.events.register_last("after-call.dynamodb", self._call_ends)
            return attached

        meter.attach = timed_attach  # type: ignore[method-assign]
        try:
            inner, monitor = super()._monitor_handler(settings, meter, clock)
        finally:
            meter.attach = attach  # type: ignore[method-assign]

        def timed(event: dict[str, Any], context: Any) -> dict[str, Any]:
            self._sdk_s, self._calls = 0.0, 0
            started = time.perf_counter()
            try:
                return inner(event, context)
            finally:
                wall = time.perf_counter() - started
                self.monitor_timings.append(MonitorTiming(wall, self._sdk_s, self._calls))

        return timed, monitor


def _monitor_figures(timings: list[MonitorTiming] | None) -> dict[str, float | None]:
    if not timings:
        return {"monitor_ms_per_invocation": None, "monitor_calls_per_invocation": None}
    count = len(timings)
    return {
        "monitor_ms_per_invocation": 1000 * sum(t.wall_s - t.sdk_s for t in timings) / count,
        "monitor_calls_per_invocation": sum(t.calls for t in timings) / count,
    }


def _selectors(result: ScenarioResult) -> dict[str, Callable[[str], bool]]:
    return {
        "counter": lambda pk: pk in result.key_pks,
        "monitor": lambda pk: pk.startswith(MONITOR_PREFIX),
        "total": lambda pk: True,
    }


def _part(result: ScenarioResult, select: Callable[[str], bool]) -> dict[str, Any]:
    allowed = max(1, result.allowed)
    records: list[CallRecord] = [r for r in result.records if select(r.pk)]
    writes = [r for r in records if r.is_write]
    scenario = result.scenario
    # In a sub-second window each key's share of the requests stands for its own rate.
    per_key = scenario.requests / min(scenario.keys, scenario.requests)
    span = per_key / scenario.rate_per_key
    hot_w, hot_r = (
        peak(records, start=result.start, end=result.end, kind=kind, select=select, span=span)
        for kind in ("write", "read")
    )
    return {
        "write_units": sum(r.write_units for r in records) / allowed,
        "read_units": sum(r.read_units for r in records) / allowed,
        "bytes_written": sum(r.billed_bytes for r in writes) / allowed,
        "writes": len(writes) / allowed,
        "reads": (len(records) - len(writes)) / allowed,
        "conditions_failed": sum(r.condition_failed for r in records),
        "hottest_write": {"pk": hot_w.pk, "units_per_second": hot_w.units_per_second,
                          "share_of_limit": hot_w.share},
        "hottest_read": {"pk": hot_r.pk, "units_per_second": hot_r.units_per_second,
                         "share_of_limit": hot_r.share},
    }  # fmt: skip


def lanes_under_1_kb(item: CounterItem) -> dict[str, Any] | None:
    """How many writer lanes a counting item holds under 1 KB (one write unit), from a measured
    item: the bytes of its other attributes and the mean bytes of a lane. None without lanes."""
    if item.lanes == 0:
        return None
    per_lane = item.lane_bytes / item.lanes
    other = item.size - item.lane_bytes
    return {
        "lanes": item.lanes,
        "bytes_per_lane": per_lane,
        "other_bytes": other,
        "lanes_under_1_kb": max(0, math.floor((KB - other) / per_lane)),
    }


def _whole(pk: str) -> str:
    return "table"


def summarise(
    result: ScenarioResult, monitor_timings: list[MonitorTiming] | None = None
) -> dict[str, Any]:
    """One scenario's figures per allowed prediction, its peaks and its lanes projection
    (``monitor_timings``: its monitor invocations', when timed)."""
    parts = {name: _part(result, select) for name, select in _selectors(result).items()}
    table_w, table_r = (
        peak(result.records, start=result.start, end=result.end, kind=kind, group=_whole)
        for kind in ("write", "read")
    )
    largest = max(result.counter_items, key=lambda item: item.size, default=None)
    scenario = result.scenario
    return {
        "scenario": scenario.label,
        "keys": scenario.keys,
        "keys_sending": min(scenario.keys, scenario.requests, scenario.sample or scenario.keys),
        "rate_per_key": scenario.rate_per_key,
        "rate": scenario.rate,
        "simulated_seconds": result.end - result.start,
        "requests": scenario.requests,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "allowed": result.allowed,
        "monitor_failures": result.monitor_failures,
        "violations": [
            {"operation": v.operation, "pk": v.pk, "size": v.size, "detail": v.detail}
            for v in result.violations
        ],
        **parts,
        "table": {
            "write_units_per_second": table_w.units_per_second * scenario.scale,
            "read_units_per_second": table_r.units_per_second * scenario.scale,
        },
        "steady": steady_figures(result, parts["monitor"]),
        "shards": scenario.shards,
        "environments": result.environments,
        "pollers": result.pollers,
        "flush_seconds": result.flush_seconds,
        "flush_messages": result.flush_messages,
        "counter_item": None
        if largest is None
        else {"bytes": largest.size, "lanes": largest.lanes},
        "lanes": None if largest is None else lanes_under_1_kb(largest),
        "wall_seconds": result.wall_seconds,
        "delivery": {
            "queue_calls_per_request": result.queue_calls / max(1, scenario.requests),
            "monitor_batches": len(result.monitor_batches),
            "messages_per_batch": (
                sum(result.monitor_batches) / len(result.monitor_batches)
                if result.monitor_batches
                else 0.0
            ),
            "rows_served": result.allowed * scenario.rows_per_request,
            "rows_monitored": result.rows_monitored,
            **_monitor_figures(monitor_timings),
        },
    } | _population_delivery(result, monitor_timings)


def _population_delivery(
    result: ScenarioResult, monitor_timings: list[MonitorTiming] | None
) -> dict[str, Any]:
    """A sampled scenario's delivery as the whole population has it: each invocation fed the
    sample's share of a batch stands for ``batch / share`` of a full batch of the template's
    event source (every batch is full: 10,000 messages a second fill one in 10 ms), so the
    population has that many fewer invocations, each that many times longer (fixed costs
    included: an upper bound) with that many times the calls. Nothing for the others."""
    share = result.event_source
    if result.scenario.sample is None or share is None or not result.monitor_batches:
        return {}
    full = result.template_batch
    factor = full / share.batch_size
    timed = _monitor_figures(monitor_timings)
    return {
        "delivery_sample": {
            "monitor_batches": len(result.monitor_batches),
            "messages_per_batch": sum(result.monitor_batches) / len(result.monitor_batches),
            **timed,
        },
        "delivery": {
            "queue_calls_per_request": result.queue_calls / max(1, result.scenario.requests),
            "monitor_batches": len(result.monitor_batches) / factor,
            "messages_per_batch": float(full),
            "rows_served": result.allowed * result.scenario.rows_per_request,
            "rows_monitored": result.rows_monitored,
            **{name: None if value is None else value * factor for name, value in timed.items()},
        },
    }


def steady_figures(result: ScenarioResult, monitor: dict[str, Any]) -> dict[str, Any] | None:
    """A sampled steady-state scenario's own figures (None for the others): the sample, the
    warm-up, the cache lifetime and the share of requests that found their environment cold
    (measured, and by the model: no visit to that environment within the lifetime), the
    monitor's state at the start of the window and its units per write, its messages per
    principal and batch (messages over state writes), and the monitor's write units per
    prediction by the model (state write units over messages per principal and batch: among
    all the keys a batch of B holds about 1 + B / keys messages of a principal that has one)."""
    scenario = result.scenario
    if scenario.sample is None or result.cold_requests is None or result.evict_after is None:
        return None
    writes = [r for r in result.records if r.is_write and r.pk.startswith(MONITOR_PREFIX)]
    state = max((r.size_after for r in writes), default=0)
    per_batch = max(1, result.allowed) / max(1, len(writes))
    state_units = write_units(state, state) if state else 0
    batch = result.event_source.batch_size if result.event_source is not None else 0
    return {
        "sample": scenario.sample,
        "warmup_seconds": scenario.warmup_seconds,
        "warmup_rows_per_request": scenario.warmup_rows_per_request,
        "evict_after_seconds": result.evict_after,
        "cold_share": result.cold_requests / max(1, scenario.requests),
        "cold_share_model": math.exp(
            -result.evict_after * scenario.rate_per_key / result.environments
        ),
        "monitor_batch_of_sample": batch,
        "monitor_state_bytes": state,
        "monitor_state_bytes_min": min((r.size_before for r in writes), default=0),
        "monitor_state_write_units": state_units,
        "messages_per_principal_per_batch": per_batch,
        "monitor_write_units_model": state_units / per_batch,
        "monitor_write_units": monitor["write_units"],
    }


def monitor_plateau(results: list[ScenarioResult]) -> dict[str, Any] | None:
    """The largest monitor item of the run (its state is bounded: this stands for the plateau),
    with what one state write and one state read cost at that size (one of each per principal
    and monitor batch)."""
    best: tuple[int, str, int] | None = None
    for result in results:
        counts: dict[str, int] = {}
        for record in result.records:
            if record.is_write and record.pk.startswith(MONITOR_PREFIX):
                counts[record.pk] = counts.get(record.pk, 0) + 1
                if best is None or record.size_after > best[0]:
                    best = (record.size_after, record.pk, counts[record.pk])
    if best is None:
        return None
    size, _, writes = best
    return {
        "bytes": size,
        "after_writes": writes,
        "write_units": write_units(size, size),
        "read_units": read_units(size, consistent=True),
    }


def _machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_capacity(
    root: Path, *, quick: bool, endpoint: str | None = None, log: bool = True
) -> dict[str, Any]:
    """Run every scenario of ``plan`` (against ``endpoint``, or an embedded moto server)."""
    from mlmoat.local.server import EmbeddedDynamoDB

    def say(line: str) -> None:
        if log:
            print(line, file=sys.stderr, flush=True)

    server = None if endpoint else EmbeddedDynamoDB(host="127.0.0.1").start()
    try:
        replay = TimedReplay(root, endpoint or server.endpoint)  # type: ignore[union-attr]
        results = []
        timings: list[list[MonitorTiming]] = []
        for scenario in plan(quick=quick):
            say(f"capacity: {scenario.label}, {scenario.requests} requests ...")
            replay.monitor_timings = []
            run = replay.run if scenario.sample is None else replay.run_steady
            results.append(run(scenario, log=say))
            timings.append(replay.monitor_timings)
    finally:
        if server is not None:
            server.stop()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "quick": quick,
        "window_seconds": WINDOW_SECONDS,
        "request_cap": QUICK_REQUESTS if quick else FULL_REQUESTS,
        "limits": {
            "item_bytes": ITEM_LIMIT_BYTES,
            "item_write_units_per_second": PARTITION_WRITE_UNITS_PER_SECOND,
            "item_read_units_per_second": PARTITION_READ_UNITS_PER_SECOND,
        },
        "scenarios": [summarise(r, t) for r, t in zip(results, timings, strict=True)],
        "monitor_plateau": monitor_plateau(results),
    }


# ---------------------------------------------------------------------- rendering
def _n(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _window(row: dict[str, Any]) -> str:
    seconds = row["simulated_seconds"]
    text = f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1000:.3g} ms"
    steady = row.get("steady")
    if steady is not None:
        text += (
            f" (a sample of {steady['sample']:,} keys, after {steady['warmup_seconds']:g} s"
            " of warm-up)"
        )
    elif row["keys_sending"] < row["keys"]:
        text += f" ({row['keys_sending']:,} keys send)"
    return text


def render_capacity(report: dict[str, Any]) -> str:
    """The report as markdown: per prediction, hottest items, steady state."""
    rows = report["scenarios"]
    lines = [
        f"Capacity model, {report['date']}: {report['machine']['cpu_model']}, "
        f"{report['machine']['cores']} cores; at most {report['request_cap']:,} real requests "
        f"per scenario over up to {report['window_seconds']:g} simulated s.",
        "",
        "Per allowed prediction (write units, read units, billed bytes written):",
        "",
        "| scenario | simulated | environments | requests (200) | counter WCU | counter RCU "
        "| monitor WCU | monitor RCU | total WCU | total RCU | bytes written: counter / monitor |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        c, m, t = row["counter"], row["monitor"], row["total"]
        lines.append(
            f"| {row['scenario']} | {_window(row)} | {row['environments']:,} "
            f"| {row['requests']:,} ({row['allowed']:,}) "
            f"| {_n(c['write_units'])} | {_n(c['read_units'])} | {_n(m['write_units'])} "
            f"| {_n(m['read_units'])} | {_n(t['write_units'])} | {_n(t['read_units'])} "
            f"| {_n(c['bytes_written'], 0)} / {_n(m['bytes_written'], 0)} |"
        )
    lines += [
        "",
        "Hottest item per simulated second against the partition limits "
        f"({PARTITION_WRITE_UNITS_PER_SECOND:,} WCU/s, {PARTITION_READ_UNITS_PER_SECOND:,} RCU/s);"
        " the whole table's units per second for scale:",
        "",
        "| scenario | counter item WCU/s | monitor item WCU/s | monitor item RCU/s "
        "| table WCU/s | table RCU/s | largest counting item at end | items over 400 KB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cw, mw = row["counter"]["hottest_write"], row["monitor"]["hottest_write"]
        mr = row["monitor"]["hottest_read"]
        item = row["counter_item"] or {"bytes": 0, "lanes": 0}
        lines.append(
            f"| {row['scenario']} | {_n(cw['units_per_second'], 0)} ({cw['share_of_limit']:.0%}) "
            f"| {_n(mw['units_per_second'], 0)} ({mw['share_of_limit']:.0%}) "
            f"| {_n(mr['units_per_second'], 0)} ({mr['share_of_limit']:.0%}) "
            f"| {_n(row['table']['write_units_per_second'], 0)} "
            f"| {_n(row['table']['read_units_per_second'], 0)} "
            f"| {item['bytes'] / KB:,.2f} KB, {item['lanes']:,} "
            f"lane{'' if item['lanes'] == 1 else 's'} "
            f"| {len(row['violations'])} |"
        )
    lines += _render_lanes(report)
    lines += _render_steady(report)
    return "\n".join(lines)


def _render_steady(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for row in report["scenarios"]:
        steady = row.get("steady")
        if steady is None:
            continue
        lines += [
            "",
            f"{row['scenario']}: {steady['sample']:,} of the {row['keys']:,} keys simulated, "
            f"each request to one of {row['environments']:,} environments at random; a key's "
            f"cached view in an environment lives {steady['evict_after_seconds']:.0f} s without "
            f"a visit (LRUs of {CACHE_ENTRIES:,}), so {steady['cold_share']:.0%} of the requests "
            f"found their environment cold (the model: {steady['cold_share_model']:.0%}). "
            f"Monitor states at their plateau ({steady['monitor_state_bytes_min']:,} to "
            f"{steady['monitor_state_bytes']:,} bytes, {steady['monitor_state_write_units']} WCU "
            f"a write), fed {steady['monitor_batch_of_sample']:,} of the sample's messages a "
            f"batch (its share of the event source's batch) by {row.get('pollers', 1)} "
            f"pollers, each invoking its own monitor environment ({_buffer_rule(row)}): "
            f"{steady['messages_per_principal_per_batch']:.2f} messages per principal and "
            f"state write, so {steady['monitor_write_units']:.2f} monitor WCU per prediction "
            f"(the model: {steady['monitor_write_units_model']:.2f}). Table-wide units per "
            f"second are the sample's x {row['keys'] / steady['sample']:,.0f}.",
        ]
    return lines


def _buffer_rule(row: dict[str, Any]) -> str:
    if not row.get("flush_seconds"):
        return "each batch applied at once"
    return (
        f"a principal's messages buffered until {row['flush_messages']} are pending or the "
        f"oldest is {row['flush_seconds']:g} s old"
    )


def _render_lanes(report: dict[str, Any]) -> list[str]:
    plateau = report["monitor_plateau"]
    lines = [
        "",
        "Counting items by the model (one writer lane per environment that wrote the item in the "
        "last 24-48 s; measured bytes per lane and other attributes):",
        "",
        "| scenario | lanes on the largest item | bytes per lane | other bytes "
        "| lanes under 1 KB (1 WCU) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in report["scenarios"]:
        lanes = row["lanes"]
        if lanes is None:
            continue
        lines.append(
            f"| {row['scenario']} | {lanes['lanes']:,} | {lanes['bytes_per_lane']:.1f} "
            f"| {lanes['other_bytes']:,} | {lanes['lanes_under_1_kb']:,} |"
        )
    if plateau is not None:
        lines += [
            "",
            f"Monitor item: largest seen {plateau['bytes']:,} bytes (after "
            f"{plateau['after_writes']:,} writes; its state is bounded), i.e. "
            f"{plateau['write_units']} WCU + {plateau['read_units']:g} RCU per write "
            "(one state read and one write per principal and monitor batch).",
        ]
    lines += [
        "",
        "Delivery to the monitor (SendMessageBatch calls of the predict path per request; the "
        "event source's batches; rows the monitor's states counted against rows served):",
        "",
        "| scenario | queue calls per request | monitor batches | messages per batch "
        "| rows monitored / served | monitor in-process ms / DynamoDB calls per invocation |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["scenarios"]:
        delivery = row["delivery"]
        lines.append(
            f"| {row['scenario']} | {delivery['queue_calls_per_request']:.2f} "
            f"| {delivery['monitor_batches']:,} | {delivery['messages_per_batch']:,.1f} "
            f"| {delivery['rows_monitored']:,} / {delivery['rows_served']:,} "
            f"| {_n(delivery.get('monitor_ms_per_invocation'), 1)} / "
            f"{_n(delivery.get('monitor_calls_per_invocation'), 1)} |"
        )
    return lines
