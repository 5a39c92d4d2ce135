"""Audit records, parsed from the JSON lines the audit logger writes."""

from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pytest

from security.audit import AUDIT_MESSAGE, AuditEvent, AuditLog, input_fingerprint
from security.keys import generate_key


@pytest.fixture
def sink() -> tuple[AuditLog, io.StringIO]:
    stream = io.StringIO()
    # a unique service name gives each test its own Powertools logger and stream
    return AuditLog(service=f"audit-test-{uuid.uuid4().hex[:8]}", stream=stream), stream


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_one_allowed_request_writes_one_record_with_every_field(sink) -> None:
    audit, stream = sink
    # given an admitted request for two rows
    event = AuditEvent(request_id="req-1", route="/predict", source_ip="203.0.113.9", model="iris")
    event.key_id, event.principal_fingerprint, event.credential_type = (
        "AbCdEfGh1234",
        "0a1b2c3d4e5f",
        "api_key",
    )
    event.record_input(np.array([[5.1, 3.5, 1.4, 0.2], [6.0, 3.0, 4.8, 1.8]]), raw=False)
    # when it finishes and is emitted
    event.finish(status=200)
    audit.emit(event)
    # then exactly one JSON line says who, what, how much and how it ended
    (record,) = lines(stream)
    assert record["message"] == AUDIT_MESSAGE
    assert record["request_id"] == record["correlation_id"] == "req-1"
    assert (record["decision"], record["reason"], record["status"]) == ("allow", "ok", 200)
    assert (record["key_id"], record["rows"], record["model"]) == ("AbCdEfGh1234", 2, "iris")
    assert record["source_ip"] == "203.0.113.9" and record["route"] == "/predict"
    assert len(record["input_fingerprint"]) == 32
    assert "features" not in record
    assert record["latency_ms"] >= 0


def test_the_record_is_an_emf_document_with_requests_rows_and_latency(sink) -> None:
    audit, stream = sink
    event = AuditEvent(request_id="req-2", route="/predict")
    event.record_input(np.array([[1.0, 2.0]] * 3), raw=False)
    event.finish(status=200)
    audit.emit(event)
    (record,) = lines(stream)
    (directive,) = record["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "mlmoat"
    assert set(directive["Dimensions"][0]) == {"decision", "reason", "service"}
    names = {metric["Name"] for metric in directive["Metrics"]}
    assert names == {"Requests", "RowsPredicted", "Latency"}
    assert record["Requests"] == [1.0] and record["RowsPredicted"] == [3.0]


def test_a_refusal_is_a_deny_with_its_reason_and_no_rows_metric(sink) -> None:
    audit, stream = sink
    event = AuditEvent(request_id="req-3", route="/predict")
    event.reason = "bad_secret"
    event.finish(status=401)
    audit.emit(event)
    (record,) = lines(stream)
    assert (record["decision"], record["reason"], record["status"]) == ("deny", "bad_secret", 401)
    assert "RowsPredicted" not in record


def test_raw_features_are_logged_only_when_configured(sink) -> None:
    audit, stream = sink
    rows = np.array([[5.1, 3.5, 1.4, 0.2]])
    event = AuditEvent(request_id="req-4", route="/predict")
    event.record_input(rows, raw=True)
    event.finish(status=200)
    audit.emit(event)
    (record,) = lines(stream)
    assert record["features"] == [[5.1, 3.5, 1.4, 0.2]]


def test_equal_inputs_have_equal_fingerprints_and_different_inputs_differ() -> None:
    a = input_fingerprint(np.array([[5.1, 3.5]]))
    assert a == input_fingerprint(np.array([[5.1, 3.5]], dtype=np.float64))
    assert a == input_fingerprint(
        np.array([[5.1, 3.5]]).astype(int).astype(float) + np.array([[0.1, 0.5]])
    )
    assert a != input_fingerprint(np.array([[5.1, 3.6]]))


def test_key_material_never_reaches_the_audit_stream(sink) -> None:
    audit, stream = sink
    _, key = generate_key()
    # given a careless caller that puts a key and a bearer token into audited fields and a log
    event = AuditEvent(request_id="req-5", route=f"/predict?api_key={key}")
    event.flags.append(f"detail:{key}")
    event.finish(status=500, reason="internal_error")
    audit.emit(event)
    try:
        raise RuntimeError(f"boom Authorization: Bearer {key}")
    except RuntimeError as exc:
        audit.error("unhandled_error", exc=exc)
    text = stream.getvalue()
    # then neither the key nor its secret part appears anywhere, the records still do
    assert key not in text and key.split("_")[2] not in text
    assert len(lines(stream)) == 2


def test_begin_sets_the_correlation_id_for_other_lines(sink) -> None:
    audit, stream = sink
    audit.begin("req-6")
    try:
        raise ValueError("detail")
    except ValueError as exc:
        audit.error("unhandled_error", exc=exc)
    (record,) = lines(stream)
    assert record["correlation_id"] == "req-6"
    assert record["level"] == "ERROR" and "ValueError" in record["exception"]


def test_the_root_redaction_filter_masks_other_loggers_lines() -> None:
    import logging

    from security.audit import RedactingFilter

    _, key = generate_key()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    other = logging.getLogger(f"third-party-{uuid.uuid4().hex[:6]}")
    other.addHandler(handler)
    other.propagate = False
    other.warning("sending %s to %s", key, "somewhere")
    try:
        raise ValueError(f"Authorization: Bearer {key}")
    except ValueError:
        other.exception("failed")
    text = stream.getvalue()
    assert "sending *** to somewhere" in text and "failed" in text
    assert key not in text and key.split("_")[2] not in text


def test_a_flush_outside_any_request_is_a_record_of_its_own(sink) -> None:
    # the extraction sink's buffer flushed at shutdown: where it stood, and what it lost
    log, stream = sink
    log.queue_flushed(["r1", "r2"], {"env": "0a1b2c3d", "queued": 12, "flushed": 12})
    log.queue_flushed([], {"env": "0a1b2c3d", "queued": 14, "flushed": 14})
    lost, clean = lines(stream)
    assert lost["event"] == clean["event"] == "monitor_queue"
    assert lost["monitor_queue_lost"] == ["r1", "r2"] and lost["MonitorQueueFailures"] == [2.0]
    assert "monitor_queue_failed" in lost["flags"]
    assert clean["monitor_queue"] == {"env": "0a1b2c3d", "queued": 14, "flushed": 14}
    assert "MonitorQueueFailures" not in clean and "flags" not in clean
