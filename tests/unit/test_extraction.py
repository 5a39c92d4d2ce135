"""Extraction detection (security.extraction): statistics, messages, sink, detectors, monitor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws

from security.errors import ModelIntegrityError
from security.extraction import (
    DetectorState,
    ExtractionDetector,
    ExtractionMonitor,
    MonitorReference,
    QueryMessage,
    QuerySink,
    load_monitor_references,
    shapiro_w,
)

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("n", [3, 4, 5, 6, 11, 50, 200, 400])
@pytest.mark.parametrize("dist", ["normal", "exponential", "uniform"])
def test_shapiro_w_matches_scipy(n: int, dist: str) -> None:
    # SciPy is the reference only: it needs numpy.f2py, which the deps layer prunes, so under
    # the Lambda build (`make test-py313`) this comparison is left to the 3.11 run.
    stats = pytest.importorskip("scipy.stats", exc_type=ImportError)
    sample = getattr(np.random.default_rng(n), dist)(size=n)
    assert shapiro_w(sample) == pytest.approx(stats.shapiro(sample).statistic, abs=1e-4)


def _reference(**overrides: Any) -> MonitorReference:
    rng = np.random.default_rng(0)
    fields: dict[str, Any] = {
        "model": "toy",
        "lower": (0.0, 0.0, 0.0),
        "upper": (1.0, 1.0, 1.0),
        "scale": (0.05, 0.05, 0.05),
        "prototypes": tuple(tuple(p) for p in 0.5 + 0.05 * rng.normal(size=(4, 3))),
        "off_manifold_threshold": 3.0,
        "off_manifold_p0": 0.03,
        "low_confidence_cut": 0.7,
        "low_confidence_p0": 0.1,
        "prada_delta": 0.0,
    }
    fields.update(overrides)
    return MonitorReference(**fields)


def _benign(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.clip(0.5 + 0.05 * rng.normal(size=(n, 3)), 0, 1)


def test_uniform_probing_is_flagged_within_a_few_dozen_rows() -> None:
    # given a monitor whose training data sits in a small ball
    detector, state = ExtractionDetector(_reference()), DetectorState()
    # when a caller sends uniform-random rows
    rows = np.random.default_rng(1).random((100, 3))
    verdict = detector.observe(state, rows, labels=["a"] * 100, confidences=[0.99] * 100)
    # then it is flagged by the off-manifold detector before 30 rows
    assert state.flagged and state.flag_reason.startswith("off_manifold")
    assert state.flagged_at_row <= 30 and verdict.newly_flagged


def test_benign_traffic_is_not_flagged() -> None:
    detector, state = ExtractionDetector(_reference()), DetectorState()
    rng = np.random.default_rng(2)
    for _ in range(40):
        detector.observe(state, _benign(rng, 50), labels=["a"] * 50, confidences=[0.95] * 50)
    assert not state.flagged and state.rows_seen == 2000


def test_low_confidence_probing_is_flagged() -> None:
    # given in-distribution rows that the model answers with low confidence (boundary probing)
    detector, state = ExtractionDetector(_reference()), DetectorState()
    conf = [0.55] * 60
    detector.observe(
        state, _benign(np.random.default_rng(3), 60), labels=["a"] * 60, confidences=conf
    )
    assert state.flagged and "low_confidence" in state.flag_reason


def test_prada_fires_on_a_non_normal_distance_stream() -> None:
    # given PRADA enabled, when queries collapse onto a few points (binary-search-like)
    detector = ExtractionDetector(_reference(prada_delta=0.9, off_manifold_threshold=99.0))
    state = DetectorState()
    base = 0.5 + 0.05 * np.random.default_rng(4).normal(size=(1, 3))
    rows = base + np.geomspace(1e-1, 1e-6, 150)[:, None] * np.ones((1, 3))
    detector.observe(state, rows, labels=["a"] * 150)
    assert state.flagged and state.flag_reason == "prada"


def test_state_round_trips_and_stays_bounded() -> None:
    detector, state = ExtractionDetector(_reference(prada_set_cap=64)), DetectorState()
    rng = np.random.default_rng(5)
    for _ in range(30):
        detector.observe(state, rng.random((100, 3)), labels=list("abc" * 33 + "a"))
    blob = state.to_bytes()
    again = DetectorState.from_bytes(blob)
    assert again.rows_seen == 3000 and again.flag_reason == state.flag_reason
    assert all(s.shape[0] <= 64 for s in again.class_sets.values())
    assert len(again.distances) == 200 and len(again.off_bits) == 200
    assert len(blob) <= 880


def test_message_round_trip_and_validation() -> None:
    message = QueryMessage("key#k1", "iris", "r1", 1.5, ((1.0, 2.0),), ("setosa",), (0.9,))
    assert QueryMessage.from_json(message.to_json()) == message
    with pytest.raises(ValueError):
        QueryMessage.from_json(json.dumps({"v": 1, "rows": [[1.0], [1.0, 2.0]]}))
    with pytest.raises(ValueError):
        QueryMessage.from_json(message.to_json().replace("1.0,2.0", "NaN,2.0"))


@mock_aws
def test_sink_sends_one_message_per_request_and_never_raises() -> None:
    # unbuffered (max_delay=0): each request's query leaves as it is served
    # (tests/unit/test_query_sink.py: the buffered default)
    sqs = boto3.client("sqs", region_name="eu-west-1")
    url = sqs.create_queue(QueueName="extraction-unit-1")["QueueUrl"]
    sink = QuerySink(client=sqs, queue_url=url, clock=lambda: 42.0, max_delay=0)
    assert sink.send(
        principal_id="key#s1",
        model="iris",
        request_id="req-s1",
        rows=np.array([[5.1, 3.5, 1.4, 0.2]]),
        labels=["setosa"],
        confidences=[0.97],
    )
    body = sqs.receive_message(QueueUrl=url)["Messages"][0]["Body"]
    message = QueryMessage.from_json(body)
    assert message.principal_id == "key#s1" and message.ts == 42.0 and message.labels == ("setosa",)
    # a queue that does not exist: the send fails, is counted, and does not raise
    broken = QuerySink(client=sqs, queue_url=url + "-missing", max_delay=0)
    assert not broken.send(principal_id="key#s1", model="iris", request_id="r", rows=[[1.0]])
    assert broken.failures == 1


def test_monitor_rejects_unknown_action() -> None:
    with pytest.raises(ValueError):
        ExtractionMonitor(store=None, references={}, action="ban", audit=print)  # type: ignore[arg-type]


def _table(name: str) -> Any:
    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return client


@mock_aws
def test_monitor_on_the_principal_store_suspends_the_key_and_keeps_state() -> None:
    from security.errors import StoreUnavailableError
    from security.store import PrincipalStore

    client = _table("sec-extraction-unit-1")
    client.put_item(
        TableName="sec-extraction-unit-1",
        Item={"pk": {"S": "key#st1"}, "status": {"S": "active"}},
    )
    store = PrincipalStore(client=client, table_name="sec-extraction-unit-1")
    records: list[dict[str, Any]] = []
    monitor = ExtractionMonitor(
        store=store,
        references={"toy": _reference()},
        action="suspend",
        audit=records.append,
        clock=lambda: 1_700_000_000.0,
    )
    rng = np.random.default_rng(7)
    for i in range(3):
        rows = tuple(tuple(r) for r in rng.random((20, 3)))
        message = QueryMessage("key#st1", "toy", f"req-st{i}", 1.0, rows, ("a",) * 20)
        monitor.process(message)
    # SQS redelivers the last message: it is recognised and not counted twice
    assert monitor.process(message).duplicate
    item = client.get_item(TableName="sec-extraction-unit-1", Key={"pk": {"S": "key#st1"}})["Item"]
    assert item["status"]["S"] == "suspended"
    assert item["flags"]["SS"] == ["extraction:off_manifold"]
    blob, version = store.load_monitor_state("key#st1", "toy")
    assert version == 3 and blob is not None
    assert DetectorState.from_bytes(blob).rows_seen == 60
    # a writer holding a stale version loses the race and is told to retry
    with pytest.raises(StoreUnavailableError) as info:
        store.save_monitor_state("key#st1", "toy", blob, expected_version=1, now=1)
    assert info.value.reason == "monitor_state_conflict"
    assert len(records) == 1 and records[0]["principal_id"] == "key#st1"
    assert records[0]["decision"] == "suspend" and records[0]["flagged_at_row"] <= 40


def test_a_message_for_a_model_without_a_reference_is_acknowledged_and_audited() -> None:
    # given a monitor with a reference for "toy" only, told "other" failed to load its own
    records: list[dict[str, Any]] = []
    monitor = ExtractionMonitor(
        store=None,  # type: ignore[arg-type]  # never touched for an unmonitored model
        references={"toy": _reference()},
        action="flag",
        audit=records.append,
        unavailable={"other": "defences_malformed"},
    )
    # when a message of "other" arrives, then it is not an error (nothing to retry)
    message = QueryMessage("key#u1", "other", "req-u1", 1.0, ((0.5, 0.5, 0.5),), ("a",))
    outcome = monitor.process(message)
    assert outcome.unmonitored and outcome.verdict is None and not outcome.duplicate
    # and its one audit record says why
    (record,) = records
    assert record["event"] == "unmonitored" and record["reason"] == "no_monitor_reference"
    assert record["model"] == "other" and record["request_id"] == "req-u1"
    assert record["flags"] == ["detail:defences_malformed"]


def _models_copy(tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(MODELS, target)
    return target


def test_every_shipped_model_has_a_monitor_reference() -> None:
    failures: dict[str, ModelIntegrityError] = {}
    references = load_monitor_references(MODELS, unavailable=failures)
    assert failures == {}
    served = sorted(p.name for p in MODELS.iterdir() if (p / "manifest.json").is_file())
    assert sorted(references) == served == ["breast-cancer", "breast-cancer-forest", "iris"]


def test_references_load_per_model_and_a_bad_one_is_recorded_alone(tmp_path: Path) -> None:
    # given one model without defences.json and one whose monitor section is malformed
    models = _models_copy(tmp_path)
    (models / "breast-cancer" / "defences.json").unlink()
    path = models / "iris" / "defences.json"
    document = json.loads(path.read_text())
    document["monitor"]["prototypes"] = "not rows"
    path.write_text(json.dumps(document))
    # when loaded per model, then each failure is recorded and the intact model is loaded
    failures: dict[str, ModelIntegrityError] = {}
    references = load_monitor_references(models, unavailable=failures)
    assert sorted(references) == ["breast-cancer-forest"]
    assert {name: error.reason for name, error in failures.items()} == {
        "breast-cancer": "defences_missing",
        "iris": "defences_malformed",
    }
    # and without a record the first failure still raises (the tooling's strict mode)
    with pytest.raises(ModelIntegrityError):
        load_monitor_references(models)


def test_a_reference_calibrated_on_an_earlier_state_layout_runs_without_prada() -> None:
    # given the PRADA stream that fires, under a reference whose section predates layout 3
    section = _reference(prada_delta=0.9, off_manifold_threshold=99.0).to_dict()
    stale = MonitorReference.from_dict("m", {k: v for k, v in section.items()
                                             if k != "state_layout"})  # fmt: skip
    assert stale.prada_stale and not MonitorReference.from_dict("m", section).prada_stale
    base = 0.5 + 0.05 * np.random.default_rng(4).normal(size=(1, 3))
    rows = base + np.geomspace(1e-1, 1e-6, 150)[:, None] * np.ones((1, 3))
    state = DetectorState()
    ExtractionDetector(stale).observe(state, rows, labels=["a"] * 150)
    # then PRADA does not fire (its delta was set on other distances) ...
    assert not state.flagged and len(state.distances) == 149
    # ... and the other detectors still do: far off-manifold rows flag it
    off = ExtractionDetector(MonitorReference.from_dict(
        "m", {**section, "off_manifold_threshold": 0.01, "state_layout": 2}))  # fmt: skip
    state = DetectorState()
    off.observe(state, rows, labels=["a"] * 150)
    assert state.flagged and state.flag_reason == "off_manifold"
