"""The load test's exactness checks catch each violation they exist for (no network).

A load test that cannot fail proves nothing, so each test below feeds ``check_run`` the records
of a run that broke one invariant (an extra row over a budget, a lost audit record, a counter
that disagrees with the audit trail...) and asserts the report says so; the first test shows
the same records without the defect pass.
"""

from __future__ import annotations

import dataclasses
import json

from mlmoat.load.checks import Report, check_run
from mlmoat.load.plan import KeyPlan, LoadKey
from mlmoat.load.traffic import Sample
from mlmoat.local.stack import read_audit

KEY = LoadKey("K" * 12, "mlmoat_unused", KeyPlan("budget", rate=100, window_s=60, budget=3))
T0 = 1_800_000_000.0  # inside one minute window: 1_799_999_980 .. 1_800_000_040


def _sample(n: int, *, status: int = 200, rows: int = 1, at: float = T0) -> Sample:
    return Sample(
        key_id=KEY.key_id,
        instance=n % 2,
        rows=rows,
        sent=at + n * 0.01,
        received=at + n * 0.01 + 0.005,
        status=status,
        request_id=f"req-{n}",
        error_code=None if status == 200 else "rate_limited",
        returned_rows=rows if status == 200 else 0,
    )


def _audit(sample: Sample, *, reason: str | None = None) -> dict:
    allowed = sample.status == 200
    return {
        "message": "audit",
        "event": "request",
        "request_id": sample.request_id,
        "key_id": KEY.key_id,
        "status": sample.status,
        "decision": "allow" if allowed else "deny",
        "reason": reason or ("ok" if allowed else "budget_exhausted"),
        "rows": sample.rows,
    }


def _run(samples, audit, item) -> Report:
    report = Report(instances=2, clients=1, keys=1, duration_s=1.0)
    check_run([KEY], samples, audit, {KEY.pk: item}, report)
    return report


def _exact_run():
    samples = [_sample(0), _sample(1, rows=2), _sample(2, status=429)]
    audit = [_audit(s) for s in samples]
    window = int(T0) - int(T0) % 60
    item = {"rows_used": 3, "requests": 2, f"rw_{window}": 3}
    return samples, audit, item


def test_an_exact_run_passes() -> None:
    report = _run(*_exact_run())
    assert report.ok, report.failures
    assert (report.allowed_rows, report.budgets_exhausted) == (3, 1)


def test_a_row_served_over_the_budget_is_caught() -> None:
    samples, audit, item = _exact_run()
    extra = _sample(3)
    samples.append(extra)
    audit.append(_audit(extra))
    item = {**item, "rows_used": 4, "requests": 3}
    report = _run(samples, audit, item)
    assert any("over a budget of 3" in f for f in report.failures), report.failures


def test_a_budget_refusal_while_rows_were_left_is_caught() -> None:
    samples, audit, item = _exact_run()
    samples = samples[:1] + samples[2:]  # the 2-row request never happened: 2 rows were left
    audit = [_audit(s) for s in samples]
    item = {**item, "rows_used": 1, "requests": 1}
    report = _run(samples, audit, {k: v for k, v in item.items() if not k.startswith("rw_")})
    assert any("rows left" in f for f in report.failures), report.failures


def test_a_lost_audit_record_is_caught() -> None:
    samples, audit, item = _exact_run()
    report = _run(samples, audit[1:], item)
    assert any("no audit record" in f for f in report.failures), report.failures


def test_a_duplicated_audit_record_is_caught() -> None:
    samples, audit, item = _exact_run()
    report = _run(samples, [*audit, dict(audit[0])], item)
    assert any("more than one audit record" in f for f in report.failures), report.failures


def test_an_audit_record_without_a_request_is_caught() -> None:
    samples, audit, item = _exact_run()
    report = _run(samples, [*audit, {**audit[0], "request_id": "ghost"}], item)
    assert any("match no request" in f for f in report.failures), report.failures


def test_a_counter_that_disagrees_with_the_audit_trail_is_caught() -> None:
    samples, audit, item = _exact_run()
    report = _run(samples, audit, {**item, "rows_used": 2})
    assert any("rows_used 2" in f for f in report.failures), report.failures


def test_a_double_counted_request_is_caught() -> None:
    samples, audit, item = _exact_run()
    report = _run(samples, audit, {**item, "requests": 3})
    assert any("requests 3" in f for f in report.failures), report.failures


def test_a_server_error_is_caught() -> None:
    samples, audit, item = _exact_run()
    samples[2] = dataclasses.replace(samples[2], status=503)
    audit[2] = _audit(samples[2], reason="store_unavailable")
    report = _run(samples, audit, item)
    assert any("5xx" in f for f in report.failures), report.failures


def test_a_rate_window_over_its_limit_is_caught() -> None:
    key = LoadKey("R" * 12, "mlmoat_unused", KeyPlan("minute", rate=2, window_s=60, budget=99))
    samples = [dataclasses.replace(_sample(n), key_id=key.key_id) for n in range(3)]
    audit = [{**_audit(s), "key_id": key.key_id} for s in samples]
    report = Report(instances=1, clients=1, keys=1, duration_s=1.0)
    check_run([key], samples, audit, {key.pk: {"rows_used": 3, "requests": 3}}, report)
    assert any("3 rows in a window of 2" in f for f in report.failures), report.failures


def test_a_rate_refusal_with_room_left_in_the_window_is_caught() -> None:
    key = LoadKey("R" * 12, "mlmoat_unused", KeyPlan("minute", rate=5, window_s=60, budget=99))
    samples = [
        dataclasses.replace(_sample(0), key_id=key.key_id),
        dataclasses.replace(_sample(1, status=429), key_id=key.key_id),
    ]
    audit = [
        {**_audit(samples[0]), "key_id": key.key_id},
        {**_audit(samples[1], reason="rate_limited"), "key_id": key.key_id},
    ]
    report = Report(instances=1, clients=1, keys=1, duration_s=1.0)
    check_run([key], samples, audit, {key.pk: {"rows_used": 1, "requests": 1}}, report)
    assert any("refused 1 rows for the rate" in f for f in report.failures), report.failures


def test_an_audit_line_glued_behind_another_processes_text_is_still_read(tmp_path) -> None:
    # given a log where start-api's REPORT text landed in front of the function's JSON line
    record = {"message": "audit", "event": "request", "request_id": "req-9", "status": 200}
    log = tmp_path / "instance.log"
    log.write_text(
        "REPORT RequestId: x\tDuration: 1.00 ms\tMax Memory Used: 140 MB"
        + json.dumps(record)
        + "\n\n"
        + json.dumps({**record, "request_id": "req-10"})
        + "\nnot json {\n"
    )
    # when the audit trail is read / then both records are found, nothing else
    assert [r["request_id"] for r in read_audit([log])] == ["req-9", "req-10"]
