"""The cheaper redaction (one alternation, cached field names, plain values passed through) masks
exactly what applying each pattern in turn masked; audit fields are read without ``asdict``."""

from __future__ import annotations

import enum
import io
import json
import uuid
from decimal import Decimal

import numpy as np

from security.audit import AuditEvent, AuditLog
from security.keys import generate_key
from security.sanitize import MASK, redact, redact_text

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


class _Reason(enum.StrEnum):
    LEAK = "leak"


def test_overlapping_shapes_are_masked_whole() -> None:
    # given a key and a JWT each presented after "Bearer", and a key inside a longer text
    _, key = generate_key()
    text = f"Authorization: Bearer {key}; auth=Bearer {JWT} tail {key}x"
    # when redacted
    out = redact_text(text)
    # then no part of either secret survives and the surrounding text does
    assert key not in out and key.split("_")[1] not in out and JWT not in out
    assert "eyJ" not in out and "Bearer" not in out
    assert out == f"Authorization: {MASK}; auth={MASK} tail {MASK}"


def test_plain_values_pass_through_and_other_objects_are_rendered_and_masked() -> None:
    # given numbers, booleans, None, a str enum and objects rendered with str() that hold a key
    _, key = generate_key()
    record = {
        "rows": 3,
        "latency_ms": 1.25,
        "ok": True,
        "none": None,
        "np": np.float64(0.5),
        "reason": _Reason.LEAK,
        "decimal": Decimal("1.5"),
        "error": ValueError(f"bad {key}"),
        "nested": ({"inner": [key, 7]},),
    }
    out = redact(record)
    # then plain values are the same objects, and no key survives anywhere
    assert out["rows"] == 3 and out["latency_ms"] == 1.25 and out["ok"] is True
    assert out["none"] is None and out["np"] == 0.5
    assert out["reason"] == "leak" and out["decimal"] == "1.5"
    assert out["error"] == f"bad {MASK}"
    assert out["nested"] == [{"inner": [MASK, 7]}]
    assert key not in repr(out)


def test_secret_named_fields_are_masked_however_often_their_names_repeat() -> None:
    # given the same secret-named field in many records (the name check is cached)
    records = [{"Authorization": f"Basic {uuid.uuid4().hex}", "token": None} for _ in range(5)]
    # then every one is masked whole, and an empty value stays empty
    assert [redact(r) for r in records] == [{"Authorization": MASK, "token": None}] * 5


def test_audit_fields_are_a_snapshot_in_declaration_order() -> None:
    # given an event with raw features and flags
    event = AuditEvent(request_id="req-fast-1", route="/predict", model="iris")
    event.record_input(np.array([[5.1, 3.5, 1.4, 0.2]]), raw=True)
    event.flags.append("squeeze_disagreement")
    event.finish(status=200)
    # when its fields are taken, then later mutation of the event does not change them
    fields = event.fields()
    event.flags.append("later")
    assert event.features is not None
    event.features[0][0] = 99.0
    assert fields["flags"] == ["squeeze_disagreement"]
    assert fields["features"] == [[5.1, 3.5, 1.4, 0.2]]
    # and the order is the dataclass's, with None fields and the timer left out
    assert list(fields)[:4] == ["request_id", "route", "event", "method"]
    assert "started" not in fields and "source_ip" not in fields
    assert list(fields).index("features") < list(fields).index("flags")


def test_a_key_in_any_audit_field_is_masked_in_the_line() -> None:
    # given a key smuggled into free-text fields of the record
    _, key = generate_key()
    stream = io.StringIO()
    audit = AuditLog(service=f"fast-{uuid.uuid4().hex[:8]}", stream=stream)
    event = AuditEvent(request_id="req-fast-2", route=f"/predict?{key}", source_ip=key)
    event.flags.append(f"Bearer {JWT}")
    event.finish(status=401, reason="malformed_key")
    # when emitted
    audit.emit(event)
    line = stream.getvalue()
    # then the line holds neither secret, and still parses with the masked values in place
    assert key not in line and JWT not in line
    record = json.loads(line)
    assert record["route"] == f"/predict?{MASK}" and record["source_ip"] == MASK
    assert record["flags"] == [MASK]
