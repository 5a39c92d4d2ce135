"""The monitor at a bounded cost: batches grouped by principal, a compact state, exact results.

``ExtractionMonitor.process_batch`` reads and writes each principal's state once per batch; the
state's binary layout stays under one read unit (4 KB) whatever the model's feature count; and
batching changes nothing the detectors decide (a state serialised per message and one
serialised per batch hold the same values).
"""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlmoat.bench.itemsize import item_size
from security.errors import StoreUnavailableError
from security.extraction import (
    DetectorState,
    ExtractionDetector,
    ExtractionMonitor,
    MonitorReference,
    QueryMessage,
)
from security.extraction.detectors import set_cap
from security.extraction.state import (
    RECENT_TOKENS,
    STATE_VERSION,
    quantise_distance,
    quantise_rows,
    token_digest,
)
from security.monitor_state import monitor_pk

MODELS = Path(__file__).resolve().parents[2] / "models"
#: DynamoDB's write unit: a state item up to this size costs one.
WRITE_UNIT = 1024


class MemoryStore:
    """The ``MonitorStateStore`` protocol in memory, counting reads and writes; ``conflicts``
    saves fail as if another writer had won the race."""

    def __init__(self, conflicts: int = 0) -> None:
        self.items: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.reads = 0
        self.writes = 0
        self.conflicts = conflicts
        self.flags: list[tuple[str, str, bool]] = []
        self.consistent: list[bool] = []

    def load_monitor_state(
        self, principal_id: str, model: str, *, consistent: bool = True
    ) -> tuple[bytes | None, int]:
        self.reads += 1
        self.consistent.append(consistent)
        return self.items.get((principal_id, model), (None, 0))

    def save_monitor_state(
        self, principal_id: str, model: str, blob: bytes, *, expected_version: int, now: int
    ) -> None:
        stored, version = self.items.get((principal_id, model), (None, 0))
        if self.conflicts:
            # another instance wrote the state meanwhile: the version moved
            self.conflicts -= 1
            self.items[(principal_id, model)] = (stored or DetectorState().to_bytes(), version + 1)
            raise StoreUnavailableError("monitor_state_conflict")
        if version != expected_version:
            raise StoreUnavailableError("monitor_state_conflict")
        self.writes += 1
        self.items[(principal_id, model)] = (blob, version + 1)

    def flag_principal(self, principal_id: str, *, reason: str, suspend: bool, now: int) -> None:
        self.flags.append((principal_id, reason, suspend))


def _reference(name: str) -> MonitorReference:
    document = json.loads((MODELS / name / "defences.json").read_text())
    return MonitorReference.from_dict(name, document["monitor"])


def _benign_stream(reference: MonitorReference, count: int, seed: int) -> list[QueryMessage]:
    """One-row messages of rows near the training prototypes, labelled by their nearest one."""
    rng = np.random.default_rng(seed)
    lower, upper = np.asarray(reference.lower), np.asarray(reference.upper)
    protos = np.asarray(reference.prototypes)
    picks = rng.integers(0, len(protos), size=count)
    z = protos[picks] + 0.3 * np.asarray(reference.scale) * rng.normal(size=(count, len(lower)))
    rows = lower + z * (upper - lower)
    labels = [f"class-{p % 3}" for p in picks]
    return [
        QueryMessage(
            "key#b", reference.model, f"req-{i}", 1.0, (tuple(rows[i]),), (labels[i],), (0.95,)
        )  # fmt: skip
        for i in range(count)
    ]


def _uniform_stream(reference: MonitorReference, count: int, seed: int) -> list[QueryMessage]:
    rng = np.random.default_rng(seed)
    lower, upper = np.asarray(reference.lower), np.asarray(reference.upper)
    rows = lower + rng.random((count, len(lower))) * (upper - lower)
    return [
        QueryMessage("key#u", reference.model, f"req-u{i}", 1.0, (tuple(rows[i]),), ("a",), (0.9,))
        for i in range(count)
    ]


def _monitor(
    store: MemoryStore, references: dict[str, MonitorReference]
) -> tuple[ExtractionMonitor, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    monitor = ExtractionMonitor(
        store=store, references=references, action="flag", audit=records.append, clock=lambda: 1.0
    )
    return monitor, records


def _batches(messages: list[QueryMessage], size: int) -> list[list[tuple[str, QueryMessage]]]:
    items = [(f"m{i}", message) for i, message in enumerate(messages)]
    return [items[start : start + size] for start in range(0, len(items), size)]


@pytest.mark.parametrize("model", ["iris", "breast-cancer"])
def test_a_batch_gives_the_same_state_and_verdicts_as_one_message_at_a_time(model: str) -> None:
    # given one stream, once applied message by message (a read and a write each) and once in
    # batches of 100 as the event source delivers them
    reference = _reference(model)
    stream = _benign_stream(reference, 450, seed=3) + _uniform_stream(reference, 60, seed=4)
    stream = [
        QueryMessage("key#s", m.model, m.request_id, m.ts, m.rows, m.labels, m.confidences)
        for m in stream
    ]
    single = MemoryStore()
    monitor, single_records = _monitor(single, {model: reference})
    for message in stream:
        monitor.process(message)
    batched = MemoryStore()
    monitor, batched_records = _monitor(batched, {model: reference})
    for batch in _batches(stream, 100):
        assert monitor.process_batch(batch).failed == []
    # then the stored states are the same bytes and the flag fired at the same row, once
    assert batched.items[("key#s", model)][0] == single.items[("key#s", model)][0]
    state = DetectorState.from_bytes(batched.items[("key#s", model)][0])
    assert state.rows_seen == 510 and state.flagged
    assert [r["flagged_at_row"] for r in batched_records] == [state.flagged_at_row]
    assert [r["flagged_at_row"] for r in single_records] == [state.flagged_at_row]
    assert batched_records[0]["request_id"] == single_records[0]["request_id"]
    # and the batched monitor read and wrote the state once per batch, not once per message
    assert (single.reads, single.writes) == (510, 510)
    assert (batched.reads, batched.writes) == (6, 6)


@pytest.mark.parametrize("model", ["iris", "breast-cancer", "breast-cancer-forest"])
def test_the_state_item_stays_within_one_write_unit_whatever_the_feature_count(model: str) -> None:
    # given a principal past every window and cap: 3,000 rows over three labels, 32 tokens
    reference = _reference(model)
    store = MemoryStore()
    monitor, _ = _monitor(store, {model: reference})
    for batch in _batches(_benign_stream(reference, 3000, seed=5), 100):
        monitor.process_batch(batch)
    blob, _ = store.items[("key#b", model)]
    state = DetectorState.from_bytes(blob)
    width = len(reference.lower)
    labels = list(state.class_sets)
    # then the sets share what the rest of the state leaves, the windows are full, the tokens
    # are the last 32, and the state is within its budget
    assert len(labels) == 3
    cap = set_cap(reference, labels, width)
    assert all(rows.shape[0] == cap for rows in state.class_sets.values())
    assert len(state.distances) == reference.prada_window and len(state.off_bits) == 200
    assert len(state.recent_requests) == RECENT_TOKENS
    assert len(blob) <= reference.state_bytes, len(blob)
    # and the item as DynamoDB sizes it (a 12-character key id, a 64-character model name, the
    # version, updated_at and ttl) is at most 1 KB: one write unit
    item = {
        "pk": {"S": monitor_pk(f"key#{'k' * 12}", "m" * 64)},
        "state": {"B": blob},
        "state_version": {"N": "999999"},
        "updated_at": {"N": "1796600000"},
        "ttl": {"N": "1797200000"},
    }
    assert item_size(item) <= WRITE_UNIT, item_size(item)


def test_a_batch_is_grouped_by_principal_and_a_failing_group_fails_alone() -> None:
    reference = _reference("iris")
    store = MemoryStore()
    monitor, _ = _monitor(store, {"iris": reference})
    stream = _benign_stream(reference, 30, seed=6)
    mixed = [
        QueryMessage(f"key#{'ab'[i % 2]}", m.model, m.request_id, m.ts, m.rows, m.labels)
        for i, m in enumerate(stream)
    ]
    # one of the principals' states does not parse (its group is retried, then dead-lettered)
    store.items[("key#b", "iris")] = (b"\x02 not a state", 1)
    result = monitor.process_batch([(f"m{i}", m) for i, m in enumerate(mixed)])
    assert sorted(result.failed) == sorted(f"m{i}" for i in range(1, 30, 2))
    assert sorted(result.outcomes) == sorted(f"m{i}" for i in range(0, 30, 2))
    # the other principal's 15 messages: one read, one write
    assert (store.reads, store.writes) == (2, 1)
    assert DetectorState.from_bytes(store.items[("key#a", "iris")][0]).rows_seen == 15


def test_a_lost_race_is_applied_again_to_the_winners_state() -> None:
    reference = _reference("iris")
    messages = _benign_stream(reference, 20, seed=7)
    # given a writer that loses twice: the third attempt, on a fresh read, is written
    store = MemoryStore(conflicts=2)
    monitor, _ = _monitor(store, {"iris": reference})
    assert monitor.process_batch(_batches(messages, 20)[0]).failed == []
    assert (store.reads, store.writes) == (3, 1)
    # the first read eventually consistent (half the units), the rereads strongly consistent
    assert store.consistent == [False, True, True]
    assert DetectorState.from_bytes(store.items[("key#b", "iris")][0]).rows_seen == 20
    # and one that keeps losing gives up: its records are redelivered by SQS
    store = MemoryStore(conflicts=3)
    monitor, _ = _monitor(store, {"iris": reference})
    assert len(monitor.process_batch(_batches(messages, 20)[0]).failed) == 20


def test_redeliveries_are_recognised_within_and_across_batches_and_cost_no_write() -> None:
    reference = _reference("iris")
    store = MemoryStore()
    monitor, _ = _monitor(store, {"iris": reference})
    messages = _benign_stream(reference, 10, seed=8)
    # a batch with a message twice (SQS delivers at least once)
    first = [(f"m{i}", m) for i, m in enumerate([*messages, messages[3]])]
    result = monitor.process_batch(first)
    assert [result.outcomes[f"m{i}"].duplicate for i in range(11)] == [False] * 10 + [True]
    # a later batch of nothing but messages already applied: read, recognised, not written
    again = monitor.process_batch([("r1", messages[0]), ("r2", messages[9])])
    assert all(outcome.duplicate for outcome in again.outcomes.values())
    assert (store.reads, store.writes) == (2, 1)
    assert DetectorState.from_bytes(store.items[("key#b", "iris")][0]).rows_seen == 10


def test_a_malformed_record_fails_alone_in_the_sqs_event() -> None:
    reference = _reference("iris")
    store = MemoryStore()
    monitor, _ = _monitor(store, {"iris": reference})
    (good,) = _benign_stream(reference, 1, seed=9)
    event = {
        "Records": [
            {"messageId": "ok", "body": good.to_json()},
            {"messageId": "bad", "body": '{"v": 2, "rows": "not base64"}'},
        ]
    }
    assert monitor.process_sqs_event(event) == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    assert store.writes == 1


def test_a_state_of_the_previous_layout_is_read_and_rewritten_compact() -> None:
    # given a version 1 state (zlib-compressed JSON, float32 sets, request ids in clear)
    sets = np.array([[0.25, 0.5, 0.125, 0.75], [0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
    document = {
        "v": 1,
        "rows_seen": 2,
        "flagged": False,
        "flag_reason": "",
        "flagged_at_row": 0,
        "off_bits": base64.b64encode(bytes([0, 1])).decode(),
        "low_bits": base64.b64encode(bytes([1, 0])).decode(),
        "distances": base64.b64encode(np.array([0.5], dtype=np.float32).tobytes()).decode(),
        "width": 4,
        "class_sets": {"setosa": base64.b64encode(sets.tobytes()).decode()},
        "class_stats": {"setosa": [1.0, 0.5, 0.0]},
        "recent_requests": ["req-1/0", "req-2/0"],
        "refusal_bits": base64.b64encode(bytes([0, 0])).decode(),
    }
    old = zlib.compress(json.dumps(document).encode())
    state = DetectorState.from_bytes(old)
    assert (state.rows_seen, state.off_bits, state.low_bits) == (2, [0, 1], [1, 0])
    assert state.recent_requests == [token_digest("req-1/0"), token_digest("req-2/0")]
    # (onto version 3's grid: within half its 0.0059 step)
    np.testing.assert_allclose(state.class_sets["setosa"], sets, atol=0.003)
    # then the next save is version 3 and reads back to the same values
    again = DetectorState.from_bytes(state.to_bytes())
    assert (again.rows_seen, again.off_bits, again.distances) == (2, [0, 1], state.distances)
    assert again.recent_requests == state.recent_requests
    assert again.class_stats == state.class_stats
    assert np.array_equal(again.class_sets["setosa"], state.class_sets["setosa"])
    with pytest.raises(ValueError, match="malformed"):
        DetectorState.from_bytes(state.to_bytes()[:-3])


def test_stored_coordinates_and_distances_are_already_quantised_in_memory() -> None:
    # what makes batching exact: a value is rounded once, when it enters the state
    reference = _reference("iris")
    detector, state = ExtractionDetector(reference), DetectorState()
    stream = _benign_stream(reference, 300, seed=10)
    for message in stream:
        detector.observe(state, message.rows, labels=message.labels, confidences=(0.9,))
    for rows in state.class_sets.values():
        assert np.array_equal(quantise_rows(rows), rows)
    assert all(quantise_distance(d) == d for d in state.distances)
    again = DetectorState.from_bytes(state.to_bytes())
    assert again.distances == state.distances and again.class_stats == state.class_stats
    for label, rows in state.class_sets.items():
        assert np.array_equal(again.class_sets[label], rows)


def test_a_version_2_state_is_read_onto_version_3_and_brought_within_the_bounds() -> None:
    # given a state the previous monitor wrote at its plateau (tests/unit/data, 3,691 bytes: 400
    # float16 distances, 96 uint16 rows per class, 64 six-byte tokens, a flag)
    old = (Path(__file__).parent / "data" / "monitor-state-v2.bin").read_bytes()
    assert old[0] == 2 and len(old) == 3691
    state = DetectorState.from_bytes(old)
    # then it reads with its counters, flag and tokens (truncated digests: a redelivered
    # message it remembered is still recognised)
    assert (state.rows_seen, state.flagged, state.flagged_at_row) == (3000, True, 2977)
    assert state.flag_reason == "off_manifold+prada"
    assert len(state.recent_requests) == RECENT_TOKENS
    assert state.recent_requests[-1] == token_digest("req-2999/0")
    assert all(quantise_distance(d) == d for d in state.distances)
    for rows in state.class_sets.values():
        assert np.array_equal(quantise_rows(rows), rows)
    # and the next row brings its windows and sets within the reference, under the budget
    reference = _reference("iris")
    ExtractionDetector(reference).observe(state, _benign_stream(reference, 1, seed=1)[0].rows,
                                          labels=["setosa"], confidences=[0.9])  # fmt: skip
    blob = state.to_bytes()
    assert blob[0] == STATE_VERSION and len(blob) <= reference.state_bytes, len(blob)
    cap = set_cap(reference, list(state.class_sets), 4)
    assert all(rows.shape[0] <= cap for rows in state.class_sets.values())
    assert len(state.distances) == reference.prada_window
    again = DetectorState.from_bytes(blob)
    assert (again.rows_seen, again.flag_reason, again.recent_requests) == (
        3001, "off_manifold+prada", state.recent_requests)  # fmt: skip


def test_a_flag_reason_is_stored_as_detector_bits() -> None:
    for reason in ("", "off_manifold", "low_confidence+prada", "refusals",
                   "off_manifold+low_confidence+prada"):  # fmt: skip
        state = DetectorState(flagged=bool(reason), flag_reason=reason)
        assert DetectorState.from_bytes(state.to_bytes()).flag_reason == reason
    with pytest.raises(ValueError, match="no detector"):
        DetectorState(flagged=True, flag_reason="boundary").to_bytes()
