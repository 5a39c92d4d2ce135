"""``mlmoat audit``: per-principal summaries from real audit records in every log format."""

from __future__ import annotations

import gzip
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from mlmoat import audit_cli
from security.audit import AuditEvent, AuditLog


def _write_records(stream: io.StringIO) -> None:
    """Real records through AuditLog: a normal key, a guesser, a heavy user, a throttled key."""
    audit = AuditLog(service=f"audit-cli-{uuid.uuid4().hex[:8]}", stream=stream)

    def request(key_id, status, *, rows=1, reason=None, ip="198.51.100.7", model="iris", flags=()):
        event = AuditEvent(
            request_id=str(uuid.uuid4()), route="/predict", source_ip=ip, model=model
        )
        if key_id:
            event.key_id, event.principal_id = key_id, f"key#{key_id}"
        if status == 200:
            event.record_input(np.zeros((rows, 4)), raw=False)
        if reason:
            event.reason = reason
        event.flags.extend(flags)
        event.finish(status=status)
        audit.emit(event)

    for _ in range(6):
        request("normalKey0001", 200, rows=10)
    request("normalKey0001", 422, reason="outside_envelope")
    for _ in range(7):
        request(None, 401, reason="missing_credentials", ip="203.0.113.66")
    for _ in range(3):
        request("heavyKey0002", 200, rows=100)
    request("heavyKey0002", 200, rows=100, flags=["squeeze_flagged:1"])
    for _ in range(2):
        request("quietKey0003", 200, rows=8)
    for _ in range(4):
        request("throttled0004", 429, reason="rate_limited")
    request("throttled0004", 200, rows=12)
    audit.logger.info(
        "audit",
        extra={
            "event": "extraction_flag",
            "principal_id": "key#heavyKey0002",
            "model": "iris",
            "request_id": "r",
            "decision": "flag",
            "reason": "extraction:prada",
        },
    )


@pytest.fixture
def log_text() -> str:
    stream = io.StringIO()
    _write_records(stream)
    return "START RequestId: x Version: $LATEST\n" + stream.getvalue() + "REPORT RequestId: x\n"


def _run(capsys, data: bytes, *args: str, monkeypatch) -> dict:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert audit_cli.main(["-", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def _by_principal(result: dict) -> dict[str, dict]:
    return {p["principal"]: p for p in result["principals"]}


def test_json_lines_are_summarised_per_principal(capsys, monkeypatch, log_text) -> None:
    result = _run(capsys, log_text.encode(), monkeypatch=monkeypatch)
    people = _by_principal(result)
    assert result["records"] == 26 and result["skipped_lines"] == 2
    normal = people["normalKey0001"]
    assert (normal["requests"], normal["allowed"], normal["denied"], normal["rows"]) == (
        7,
        6,
        1,
        60,
    )
    assert normal["refusals"] == {"outside_envelope": 1} and normal["anomalies"] == []
    assert normal["first_seen"] <= normal["last_seen"]
    guesser = people["ip:203.0.113.66"]
    assert guesser["refusals"] == {"missing_credentials": 7}
    assert "auth_failures:7" in guesser["anomalies"] and any(
        a.startswith("refusal_ratio") for a in guesser["anomalies"]
    )
    heavy = people["heavyKey0002"]
    assert heavy["rows"] == 400
    assert any(a.startswith("rows_outlier") for a in heavy["anomalies"])
    assert (
        "extraction:extraction:prada" in heavy["anomalies"]
        and "adversarial:1" in heavy["anomalies"]
    )
    assert "throttled:4" in people["throttled0004"]["anomalies"]
    assert people["quietKey0003"]["anomalies"] == []
    assert set(result["anomalous"]) == {"ip:203.0.113.66", "heavyKey0002", "throttled0004"}


def test_a_filter_log_events_export_gives_the_same_summary(capsys, monkeypatch, log_text) -> None:
    direct = _run(capsys, log_text.encode(), monkeypatch=monkeypatch)
    events = [
        {
            "logStreamName": "s",
            "timestamp": 1795650000000 + i,
            "message": line,
            "ingestionTime": 1,
            "eventId": str(i),
        }
        for i, line in enumerate(log_text.splitlines())
    ]
    exported = json.dumps({"events": events, "searchedLogStreams": []}, indent=2).encode()
    assert _run(capsys, exported, monkeypatch=monkeypatch)["principals"] == direct["principals"]


def test_s3_export_lines_gzipped_give_the_same_summary(
    capsys, monkeypatch, log_text, tmp_path
) -> None:
    direct = _run(capsys, log_text.encode(), monkeypatch=monkeypatch)
    lines = "".join(
        f"2026-11-26T00:00:{i % 60:02d}.000Z {line}\n"
        for i, line in enumerate(log_text.splitlines())
    )
    path = tmp_path / "000000.gz"
    path.write_bytes(gzip.compress(lines.encode()))
    assert audit_cli.main([str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["principals"] == direct["principals"]


def test_principal_and_time_filters(capsys, monkeypatch, log_text) -> None:
    only = _run(
        capsys, log_text.encode(), "--principal", "key#normalKey0001", monkeypatch=monkeypatch
    )
    assert [p["principal"] for p in only["principals"]] == ["normalKey0001"]
    future = _run(
        capsys, log_text.encode(), "--since", "2999-01-01T00:00:00Z", monkeypatch=monkeypatch
    )
    assert future["principals"] == []
    past = _run(
        capsys, log_text.encode(), "--until", "2000-01-01T00:00:00Z", monkeypatch=monkeypatch
    )
    assert past["principals"] == []
    window = _run(
        capsys,
        log_text.encode(),
        "--since",
        "2000-01-01",
        "--until",
        "2999-01-01T00:00:00+00:00",
        monkeypatch=monkeypatch,
    )
    assert len(window["principals"]) == 5


def test_the_table_names_the_anomalous_principals(capsys, monkeypatch, log_text) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(log_text.encode())))
    assert audit_cli.main([]) == 0
    out = capsys.readouterr().out
    assert "ANOMALOUS: refusal_ratio:1.00; auth_failures:7" in out
    assert "26 audit records, 5 principals, 3 anomalous" in out


def test_a_bad_time_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        audit_cli.main(["--since", "yesterday"])
    assert info.value.code == 2


def _owner_records() -> io.StringIO:
    """Real records: owner acme spreads 900 rows over three keys, three owners use ~50 each."""
    stream = io.StringIO()
    audit = AuditLog(service=f"audit-owner-{uuid.uuid4().hex[:8]}", stream=stream)

    class Admitted:  # what AuditEvent.identify reads from an admission's principal
        def __init__(self, key_id: str, owner: str) -> None:
            self.kind, self.principal_id = "api_key", f"key#{key_id}"
            self.key_id, self.subject, self.owner = key_id, None, owner

    def request(key_id: str, owner: str, rows: int) -> None:
        event = AuditEvent(request_id=str(uuid.uuid4()), route="/predict", model="iris")
        event.identify(Admitted(key_id, owner))
        event.record_input(np.zeros((rows, 4)), raw=False)
        event.finish(status=200)
        audit.emit(event)

    for key in ("acmeKey00001", "acmeKey00002", "acmeKey00003"):
        for _ in range(3):
            request(key, "acme", 100)
    for key, owner in (("bKey00000001", "b"), ("cKey00000001", "c"), ("dKey00000001", "d")):
        request(key, owner, 50)
    audit.logger.info(
        "audit",
        extra={
            "event": "extraction_flag",
            "principal_id": "key#acmeKey00002",
            "model": "iris",
            "request_id": "r",
            "decision": "flag",
            "reason": "extraction:prada",
        },
    )
    stream.seek(0)
    return stream


def _summaries(by: str) -> dict[str, audit_cli.PrincipalSummary]:
    reader = audit_cli.AuditReader()
    raw = io.BytesIO(_owner_records().getvalue().encode())
    return {s.principal: s for s in audit_cli.summarise(reader.read([raw]), by=by)}


def test_per_owner_view_adds_up_an_extraction_spread_over_many_keys() -> None:
    # Per key, none of acme's keys stands out by volume (300 rows each)
    per_key = _summaries("principal")
    assert not any(a.startswith("rows_outlier") for a in per_key["acmeKey00001"].anomalies)
    # Per owner, acme is 900 rows over three keys, flagged, with the monitor's flag joined
    per_owner = _summaries("owner")
    acme = per_owner["owner:acme"]
    assert acme.rows == 900 and acme.requests == 9
    assert acme.principals == {"acmeKey00001", "acmeKey00002", "acmeKey00003"}
    assert acme.extraction_flags == ["extraction:prada"]
    assert any(a.startswith("rows_outlier:900") for a in acme.anomalies)
    assert "flagged_across_keys:3" in acme.anomalies
    assert per_owner["owner:b"].rows == 50 and not per_owner["owner:b"].anomalies


def test_the_owner_is_in_the_record_and_the_cli_groups_by_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _owner_records().getvalue()
    records = [json.loads(line) for line in text.splitlines()]
    assert {r.get("owner") for r in records if r.get("event") == "request"} == {
        "acme",
        "b",
        "c",
        "d",
    }
    log = tmp_path / "audit.log"
    log.write_text(text)
    assert audit_cli.main([str(log), "--by", "owner", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["anomalous"] == ["owner:acme"]
    assert document["principals"][0]["principals"] == [
        "acmeKey00001",
        "acmeKey00002",
        "acmeKey00003",
    ]
