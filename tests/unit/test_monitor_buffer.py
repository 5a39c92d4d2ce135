"""The monitor's write-behind buffer (``security.extraction.buffer``, ``ExtractionMonitor``).

A principal's sparse messages wait in the execution environment until its group is due (count,
age, memory, shutdown), then share one read and one write; a dense group is applied in the
invocation that received it; ``flush_seconds=0`` is the monitor of before the buffer, byte for
byte; a failed flush loses nothing silently.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from security.audit import AuditLog
from security.errors import StoreUnavailableError
from security.extraction import (
    BUFFER_LOST_EVENT,
    DetectorState,
    ExtractionMonitor,
    MonitorReference,
    PendingBuffer,
    QueryMessage,
    flag_audit_sink,
)
from security.extraction.buffer import footprint
from security.settings import Settings, SettingsError

MODELS = Path(__file__).resolve().parents[2] / "models"


class Store:
    """``MonitorStateStore`` in memory: every read and write recorded; ``down`` makes every
    call fail as an unreachable DynamoDB does."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.reads: list[tuple[str, bool]] = []
        self.saves: list[tuple[str, str, bytes, int]] = []
        self.flags: list[tuple[str, str]] = []
        self.down = False

    def load_monitor_state(
        self, principal_id: str, model: str, *, consistent: bool = True
    ) -> tuple[bytes | None, int]:
        if self.down:
            raise StoreUnavailableError("store_unavailable")
        self.reads.append((principal_id, consistent))
        return self.items.get((principal_id, model), (None, 0))

    def save_monitor_state(
        self, principal_id: str, model: str, blob: bytes, *, expected_version: int, now: int
    ) -> None:
        if self.down:
            raise StoreUnavailableError("store_unavailable")
        version = self.items.get((principal_id, model), (b"", 0))[1]
        if version != expected_version:
            raise StoreUnavailableError("monitor_state_conflict")
        self.saves.append((principal_id, model, blob, expected_version))
        self.items[(principal_id, model)] = (blob, version + 1)

    def flag_principal(self, principal_id: str, *, reason: str, suspend: bool, now: int) -> None:
        self.flags.append((principal_id, reason))

    def rows(self, principal: str) -> int:
        return DetectorState.from_bytes(self.items[(principal, "iris")][0]).rows_seen


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def reference() -> MonitorReference:
    document = json.loads((MODELS / "iris" / "defences.json").read_text())
    return MonitorReference.from_dict("iris", document["monitor"])


def _messages(
    reference: MonitorReference, principal: str, count: int, *, seed: int, uniform: bool = False
) -> list[QueryMessage]:
    """One-row messages: benign rows near the prototypes, or uniform probes."""
    rng = np.random.default_rng(seed)
    lower, upper = np.asarray(reference.lower), np.asarray(reference.upper)
    if uniform:
        z = rng.random((count, len(lower)))
    else:
        protos = np.asarray(reference.prototypes)
        picks = rng.integers(0, len(protos), size=count)
        z = protos[picks] + 0.3 * np.asarray(reference.scale) * rng.normal(size=(count, len(lower)))
    rows = lower + z * (upper - lower)
    return [
        QueryMessage(
            principal,
            "iris",
            f"{principal}-{seed}-{i}",
            1.0,
            (tuple(rows[i]),),
            (f"class-{i % 3}",),
            (0.6 if uniform else 0.95,),
        )  # fmt: skip
        for i in range(count)
    ]


def _monitor(
    store: Store,
    reference: MonitorReference,
    clock: Clock,
    *,
    flush_seconds: float = 30.0,
    flush_messages: int = 8,
    max_pending_bytes: int = 64 * 1024 * 1024,
    audit: Callable[[Any], None] | None = None,
) -> tuple[ExtractionMonitor, list[dict[str, Any]], list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    positions: list[dict[str, Any]] = []
    monitor = ExtractionMonitor(
        store=store,
        references={"iris": reference},
        action="flag",
        audit=audit or records.append,
        clock=clock,
        flush_seconds=flush_seconds,
        flush_messages=flush_messages,
        max_pending_bytes=max_pending_bytes,
        report=lambda position: positions.append(dict(position)),
    )
    return monitor, records, positions


def _items(messages: list[QueryMessage], prefix: str = "m") -> list[tuple[str, QueryMessage]]:
    return [(f"{prefix}{i}", m) for i, m in enumerate(messages)]


def test_sparse_groups_wait_and_are_flushed_together_when_their_oldest_is_old_enough(
    reference: MonitorReference,
) -> None:
    store, clock = Store(), Clock()
    monitor, _, positions = _monitor(store, reference, clock)
    a, b = _messages(reference, "key#a", 5, seed=1), _messages(reference, "key#b", 5, seed=2)
    # given one message of each principal per batch, a batch every 5 s
    for i in range(5):
        result = monitor.process_batch([(f"a{i}", a[i]), (f"b{i}", b[i])])
        # then each is acknowledged and held: no read, no write, nothing redelivered
        assert result.failed == [] and all(o.pending for o in result.outcomes.values())
        clock.now += 5
    assert store.reads == [] and store.saves == []
    assert positions[-1] | {"env": ""} == {
        "env": "", "buffered": 10, "flushed": 0, "pending": 10, "lost": 0,
    }  # fmt: skip
    # when the first messages are 30 s old at a batch (one message of a third principal)
    clock.now = 1_800_000_030.0
    c = _messages(reference, "key#c", 1, seed=3)
    result = monitor.process_batch([("c0", c[0])])
    # then a's and b's five messages each are applied with one read and one write each, the
    # third principal's waits
    assert [principal for principal, _ in store.reads] == ["key#a", "key#b"]
    assert len(store.saves) == 2 and store.rows("key#a") == store.rows("key#b") == 5
    assert result.outcomes["c0"].pending
    assert positions[-1]["flushed"] == 10 and positions[-1]["pending"] == 1


def test_a_group_is_flushed_when_flush_messages_are_pending_and_a_dense_one_at_once(
    reference: MonitorReference,
) -> None:
    store, clock = Store(), Clock()
    monitor, _, _ = _monitor(store, reference, clock, flush_messages=4)
    a = _messages(reference, "key#a", 4, seed=4)
    for i in range(3):
        monitor.process_batch([(f"a{i}", a[i])])
    assert store.saves == []
    # the fourth pending message makes the group due in the batch that brings it
    result = monitor.process_batch([("a3", a[3])])
    assert len(store.saves) == 1 and store.rows("key#a") == 4
    assert not result.outcomes["a3"].pending and result.outcomes["a3"].rows_seen == 4
    # a principal with four messages in one batch: applied in that batch, one read, one write
    dense = _messages(reference, "key#d", 4, seed=5)
    result = monitor.process_batch(_items(dense, "d"))
    assert [o.rows_seen for o in result.outcomes.values()] == [1, 2, 3, 4]
    assert len(store.saves) == 2 and store.rows("key#d") == 4


def test_the_shutdown_flush_applies_every_pending_group(reference: MonitorReference) -> None:
    store, clock = Store(), Clock()
    monitor, _, positions = _monitor(store, reference, clock)
    for principal in ("key#a", "key#b", "key#c"):
        monitor.process_batch(_items(_messages(reference, principal, 2, seed=6), principal))
    assert store.saves == []
    monitor.flush()
    assert {store.rows(p) for p in ("key#a", "key#b", "key#c")} == {2}
    assert monitor.buffer.pending == 0 and positions[-1]["flushed"] == 6


def _reference_monitor(
    store: Store, reference: MonitorReference, clock: Clock
) -> Callable[..., None]:
    """The monitor before the buffer: each batch grouped by principal in order of first
    appearance, each group applied at once (``_group``, which the buffer did not change)."""
    monitor, _, _ = _monitor(store, reference, clock, flush_seconds=0)

    def process(items: list[tuple[str, QueryMessage]]) -> None:
        groups: dict[tuple[str, str], list[QueryMessage]] = {}
        for _, message in items:
            groups.setdefault((message.principal_id, message.model), []).append(message)
        for (principal, model), messages in groups.items():
            monitor._group(principal, model, messages)

    return process


def test_with_flush_seconds_0_the_writes_are_todays_byte_for_byte(
    reference: MonitorReference,
) -> None:
    # given interleaved principals (one extracting), in batches of 10 with a redelivery
    stream = [
        m
        for trio in zip(
            _messages(reference, "key#a", 40, seed=7),
            _messages(reference, "key#b", 40, seed=8),
            _messages(reference, "key#x", 40, seed=9, uniform=True),
            strict=True,
        )
        for m in trio
    ]
    stream.insert(50, stream[10])
    batches = [_items(stream[i : i + 10], f"b{i}-") for i in range(0, len(stream), 10)]
    today, buffered = Store(), Store()
    process = _reference_monitor(today, reference, Clock())
    monitor, records, positions = _monitor(buffered, reference, Clock(), flush_seconds=0)
    for batch in batches:
        process(batch)
        assert monitor.process_batch(batch).failed == []
    # then the same reads and the same writes, in the same order, with the same bytes
    assert buffered.saves == today.saves and buffered.reads == today.reads
    assert buffered.flags == today.flags and buffered.flags  # the extractor was flagged
    assert all(p["pending"] == 0 for p in positions)


def test_buffered_or_not_the_detectors_decide_on_the_same_rows(reference: MonitorReference) -> None:
    # given an extractor's uniform probes after benign traffic, one message per batch
    stream = _messages(reference, "key#x", 60, seed=10) + _messages(
        reference, "key#x", 120, seed=11, uniform=True
    )
    results = []
    for flush_seconds in (0.0, 30.0):
        store, clock = Store(), Clock()
        monitor, records, _ = _monitor(store, reference, clock, flush_seconds=flush_seconds)
        for i, message in enumerate(stream):
            monitor.process_batch([(f"m{i}", message)])
            clock.now += 1
        monitor.flush()
        results.append((store.items[("key#x", "iris")][0], records, len(store.saves)))
    (unbuffered, flags_0, writes_0), (buffered, flags_30, writes_30) = results
    # then the same state, the same flag at the same row and request, with fewer writes
    assert buffered == unbuffered
    assert [(r["flagged_at_row"], r["request_id"]) for r in flags_30] == [
        (r["flagged_at_row"], r["request_id"]) for r in flags_0
    ]
    assert len(flags_0) == 1
    assert writes_0 == 180 and writes_30 <= 180 / 8 + 1


def test_a_failed_flush_redelivers_this_batch_and_keeps_the_earlier_messages_pending(
    reference: MonitorReference,
) -> None:
    store, clock = Store(), Clock()
    monitor, records, positions = _monitor(store, reference, clock)
    a = _messages(reference, "key#a", 3, seed=12)
    monitor.process_batch([("a0", a[0])])
    # when the group is due and the store is down
    clock.now += 30
    store.down = True
    result = monitor.process_batch([("a1", a[1])])
    # then this batch's message is redelivered, the earlier one (acknowledged) stays pending
    assert result.failed == ["a1"]
    assert monitor.buffer.pending == 1 and positions[-1]["lost"] == 0 and records == []
    # and it is not retried before flush_seconds have passed
    store.down = False
    monitor.process_batch([("a2", a[2])])
    assert store.saves == []
    # then, with the redelivered message, all three are applied in the order received
    clock.now += 30
    monitor.process_batch([("a1-again", a[1])])
    assert store.rows("key#a") == 3
    state = DetectorState.from_bytes(store.items[("key#a", "iris")][0])
    assert len(state.recent_requests) == 3
    assert monitor.buffer.pending == 0 and monitor.buffer.lost == 0


def test_once_the_store_failed_in_a_batch_no_other_earlier_group_is_tried(
    reference: MonitorReference,
) -> None:
    store, clock = Store(), Clock()
    monitor, _, _ = _monitor(store, reference, clock)
    for principal in ("key#a", "key#b", "key#c"):
        monitor.process_batch(_items(_messages(reference, principal, 1, seed=13), principal))
    calls = []
    real = store.load_monitor_state

    def counted(principal_id: str, model: str, *, consistent: bool = True) -> Any:
        calls.append(principal_id)
        return real(principal_id, model, consistent=consistent)

    store.load_monitor_state = counted  # type: ignore[method-assign]
    clock.now += 30
    store.down = True
    monitor.process_batch([])
    # one try (it fails): the two others wait for the next batch, nothing is lost
    assert calls == ["key#a"] and monitor.buffer.pending == 3 and monitor.buffer.lost == 0


def test_a_redelivered_pending_message_is_applied_once(reference: MonitorReference) -> None:
    store, clock = Store(), Clock()
    monitor, _, _ = _monitor(store, reference, clock)
    a = _messages(reference, "key#a", 2, seed=14)
    monitor.process_batch([("first", a[0])])
    monitor.process_batch([("again", a[0]), ("next", a[1])])  # SQS delivered it twice
    clock.now += 30
    monitor.process_batch([])
    assert store.rows("key#a") == 2 and len(store.saves) == 1
    # and after the flush, the state's recent tokens still recognise it: nothing written
    monitor.process_batch([("late", a[0])])
    clock.now += 30
    result = monitor.process_batch([])
    assert store.rows("key#a") == 2 and len(store.saves) == 1 and result.failed == []


def test_the_memory_bound_flushes_the_oldest_groups_first(reference: MonitorReference) -> None:
    store, clock = Store(), Clock()
    messages = {p: _messages(reference, p, 1, seed=15)[0] for p in ("key#a", "key#b", "key#c")}
    size = footprint(messages["key#a"])
    monitor, _, _ = _monitor(store, reference, clock, max_pending_bytes=2 * size)
    for principal, message in messages.items():
        monitor.process_batch([(principal, message)])
        clock.now += 1
    # the third message passes the bound: the oldest group (a) is written, b and c wait
    assert [p for p, *_ in store.saves] == ["key#a"]
    assert monitor.buffer.pending == 2 and monitor.buffer.bytes == 2 * size


def test_messages_given_up_are_reported_with_their_request_ids_and_a_metric(
    reference: MonitorReference,
) -> None:
    stream = io.StringIO()
    audit = AuditLog(service="mlmoat-buffer-test", stream=stream)
    store, clock = Store(), Clock()
    sink = flag_audit_sink(audit, service="mlmoat-buffer-test")
    monitor, _, _ = _monitor(store, reference, clock, audit=sink)
    a = _messages(reference, "key#a", 2, seed=16)
    monitor.process_batch(_items(a, "a"))
    # when the environment shuts down with the store unreachable
    store.down = True
    monitor.flush()
    # then the two messages are counted lost, and one audit record names them with a metric
    assert monitor.buffer.lost == 2 and monitor.buffer.pending == 0
    (record,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert record["event"] == BUFFER_LOST_EVENT and record["messages"] == 2
    assert record["request_ids"] == [m.request_id for m in a]
    assert record["flags"] == ["detail:shutdown_flush_failed"]
    assert record["MonitorBufferLost"] == [2.0]
    assert record["monitor_buffer"]["lost"] == 2
    assert "rows" in record and "features" not in json.dumps(record)


def test_the_memory_bound_gives_up_earlier_messages_it_cannot_write(
    reference: MonitorReference,
) -> None:
    store, clock = Store(), Clock()
    a, b = _messages(reference, "key#a", 1, seed=17), _messages(reference, "key#b", 1, seed=18)
    monitor, records, _ = _monitor(store, reference, clock, max_pending_bytes=footprint(a[0]))
    monitor.process_batch([("a0", a[0])])
    store.down = True
    result = monitor.process_batch([("b0", b[0])])
    # a (acknowledged earlier) had to leave memory and could not be written: lost, reported;
    # b fits and waits
    assert result.failed == [] and monitor.buffer.lost == 1 and monitor.buffer.pending == 1
    assert [r["flags"] for r in records] == [["detail:memory_bound_flush_failed"]]
    assert records[0]["request_ids"] == [a[0].request_id]


def test_buffer_bounds_are_validated() -> None:
    for bad in ({"flush_messages": 0}, {"flush_seconds": -1.0}, {"max_bytes": 0}):
        with pytest.raises(ValueError, match="monitor buffer"):
            PendingBuffer(**bad)  # type: ignore[arg-type]


def test_settings_read_the_buffer_variables_and_refuse_bad_values() -> None:
    base = {"SECURITY_TABLE_NAME": "t", "SECURITY_MODEL_DIR": "/opt/models"}
    defaults = Settings.from_env(base)
    assert (defaults.monitor_flush_seconds, defaults.monitor_flush_messages) == (30.0, 8)
    assert defaults.monitor_max_pending_bytes == 64 * 1024 * 1024
    given = Settings.from_env(
        {
            **base,
            "SECURITY_MONITOR_FLUSH_SECONDS": "0",
            "SECURITY_MONITOR_FLUSH_MESSAGES": "4",
            "SECURITY_MONITOR_MAX_PENDING_MB": "16",
        }  # fmt: skip
    )
    assert (given.monitor_flush_seconds, given.monitor_flush_messages) == (0.0, 4)
    assert given.monitor_max_pending_bytes == 16 * 1024 * 1024
    for name, value in (
        ("MONITOR_FLUSH_SECONDS", "-1"),
        ("MONITOR_FLUSH_SECONDS", "nan"),
        ("MONITOR_FLUSH_SECONDS", "901"),
        ("MONITOR_FLUSH_MESSAGES", "0"),
        ("MONITOR_FLUSH_MESSAGES", "eight"),
        ("MONITOR_MAX_PENDING_MB", "0"),
    ):
        with pytest.raises(SettingsError, match=f"SECURITY_{name}"):
            Settings.from_env({**base, f"SECURITY_{name}": value})
