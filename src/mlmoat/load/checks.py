"""The load test's exactness checks: responses, audit records and DynamoDB items agree."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mlmoat.load.plan import LoadKey
from mlmoat.load.traffic import Sample


@dataclass
class Report:
    """What the run did and whether every exactness check held."""

    instances: int
    clients: int
    keys: int
    duration_s: float
    jwt_subjects: int = 0
    requests: int = 0
    allowed_requests: int = 0
    allowed_rows: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    routes: dict[str, int] = field(default_factory=dict)
    audit_records: int = 0
    extraction_flags: int = 0
    warmup_requests: int = 0
    failed_inits: int = 0
    windows_checked: int = 0
    windows_saturated: int = 0
    budgets_checked: int = 0
    budgets_exhausted: int = 0
    requests_per_second: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check held and there was traffic to check."""
        return not self.failures and self.requests > 0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {**asdict(self), "ok": self.ok}


def check_run(
    keys: Sequence[LoadKey],
    samples: Sequence[Sample],
    audit: Sequence[Mapping[str, Any]],
    items: Mapping[str, Mapping[str, Any]],
    report: Report,
) -> None:
    """Cross-check responses, audit records and DynamoDB items; record every failure."""
    fail = report.failures.append
    report.requests = len(samples)
    # The extraction monitor (served by the same start-api, off the hot path) writes its own
    # audit records for flags; the per-request records are the PredictFunction's.
    report.extraction_flags = sum(1 for r in audit if r.get("event") == "extraction_flag")
    audit = [r for r in audit if r.get("event", "request") == "request"]
    report.audit_records = len(audit)
    statuses: dict[str, int] = defaultdict(int)
    for sample in samples:
        statuses[str(sample.status) if not sample.transport_error else sample.transport_error] += 1
    report.statuses = dict(sorted(statuses.items()))
    routes: dict[str, int] = defaultdict(int)
    for sample in samples:
        routes[sample.route] += 1
    report.routes = dict(sorted(routes.items()))

    transport = [s for s in samples if s.transport_error]
    if transport:
        fail(f"{len(transport)} requests failed at the transport level")
    server_errors = [s for s in samples if s.status >= 500]
    if server_errors:
        fail(f"{len(server_errors)} responses were 5xx")
    unexpected = [s for s in samples if s.status not in (200, 429) and not s.transport_error]
    if unexpected:
        fail(f"{len(unexpected)} responses had a status other than 200/429")
    short = [s for s in samples if s.status == 200 and s.returned_rows != s.rows]
    if short:
        fail(f"{len(short)} allowed responses did not return one prediction per row")

    # Exactly one audit record per request, and none without a request.
    by_id: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in audit:
        by_id[str(record.get("request_id"))].append(record)
    missing_id = [s for s in samples if not s.request_id and not s.transport_error]
    if missing_id:
        fail(f"{len(missing_id)} responses carried no X-Request-Id")
    answered = {s.request_id for s in samples if s.request_id}
    no_record = [rid for rid in answered if len(by_id.get(rid, [])) == 0]
    duplicated = [rid for rid, recs in by_id.items() if len(recs) > 1]
    orphans = [rid for rid in by_id if rid not in answered]
    if no_record:
        fail(f"{len(no_record)} requests have no audit record")
    if duplicated:
        fail(f"{len(duplicated)} requests have more than one audit record")
    if orphans:
        fail(f"{len(orphans)} audit records match no request")
    pk_of = {key.key_id: key.pk for key in keys}
    for sample in samples:
        records = by_id.get(sample.request_id or "", [])
        if len(records) != 1:
            continue
        record = records[0]
        if int(record.get("status", -1)) != sample.status:
            fail(f"audit status {record.get('status')} != response {sample.status}")
        elif _principal(record) != pk_of.get(sample.key_id):
            fail("an audit record names another principal than the request's")
        elif sample.status == 200 and (
            record.get("decision") != "allow" or int(record.get("rows", -1)) != sample.rows
        ):
            fail("an allowed request's audit record is not allow with its rows")

    refused: dict[str, int] = defaultdict(int)
    for sample in samples:
        if sample.status == 429:
            refused[_refusal_reason(sample, by_id)] += 1
    report.refused = dict(sorted(refused.items()))
    allowed = [s for s in samples if s.status == 200]
    report.allowed_requests = len(allowed)
    report.allowed_rows = sum(s.rows for s in allowed)

    for key in keys:
        _check_key(key, samples, by_id, audit, items.get(key.pk), report)


def _principal(record: Mapping[str, Any]) -> str | None:
    """The principal an audit record names: ``principal_id``, or ``key#<key_id>``."""
    if record.get("principal_id"):
        return str(record["principal_id"])
    return f"key#{record['key_id']}" if record.get("key_id") else None


def _refusal_reason(sample: Sample, by_id: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    records = by_id.get(sample.request_id or "", [])
    if len(records) == 1 and records[0].get("reason"):
        return str(records[0]["reason"])
    return sample.error_code or "unknown"


def _is_budget(reason: str) -> bool:
    return "budget" in reason or "quota" in reason


def _check_key(
    key: LoadKey,
    samples: Sequence[Sample],
    by_id: Mapping[str, Sequence[Mapping[str, Any]]],
    audit: Sequence[Mapping[str, Any]],
    item: Mapping[str, Any] | None,
    report: Report,
) -> None:
    fail = report.failures.append
    mine = [s for s in samples if s.key_id == key.key_id and not s.transport_error]
    allowed = [s for s in mine if s.status == 200]
    refusals = [(s, _refusal_reason(s, by_id)) for s in mine if s.status == 429]
    served_rows = sum(s.rows for s in allowed)
    audited = [r for r in audit if _principal(r) == key.pk and r.get("decision") == "allow"]
    audit_rows = sum(int(r.get("rows", 0)) for r in audited)
    if item is None:
        fail(f"key {key.key_id}: no DynamoDB item after the run")
        return
    used = int(item.get("rows_used", 0))
    counted_requests = int(item.get("requests", 0))
    # Counters == audit trail == responses.
    if not used == audit_rows == served_rows:
        fail(f"key {key.key_id}: rows_used {used}, audit {audit_rows}, served {served_rows}")
    if counted_requests != len(audited) or len(audited) != len(allowed):
        fail(
            f"key {key.key_id}: requests {counted_requests}, audit {len(audited)}, "
            f"served {len(allowed)}"
        )
    # Budget: never over; a refusal for the budget only when the rows no longer fitted.
    report.budgets_checked += 1
    if used > key.plan.budget:
        fail(f"key {key.key_id}: {used} rows used over a budget of {key.plan.budget}")
    budget_refusals = [s for s, reason in refusals if _is_budget(reason)]
    for sample in budget_refusals:
        if used + sample.rows <= key.plan.budget:
            fail(
                f"key {key.key_id}: refused {sample.rows} rows for the budget with "
                f"{key.plan.budget - used} rows left"
            )
    if budget_refusals:
        report.budgets_exhausted += 1
    # Rate windows: attribute each request to its window when its send/receive interval lies
    # inside one window (the server's clock is this machine's); otherwise it is ambiguous.
    window = key.plan.window_s
    certain: dict[int, int] = defaultdict(int)
    maybe: dict[int, int] = defaultdict(int)
    for sample in allowed:
        first, last = int(sample.sent) // window, int(sample.received) // window
        if first == last:
            certain[first * window] += sample.rows
        else:
            for w in range(first, last + 1):
                maybe[w * window] += sample.rows
    for start in sorted(set(certain) | set(maybe)):
        report.windows_checked += 1
        if certain[start] > key.plan.rate:
            fail(f"key {key.key_id}: {certain[start]} rows in a window of {key.plan.rate}")
    saturated: set[int] = set()
    for sample, reason in refusals:
        if _is_budget(reason):
            continue
        first, last = int(sample.sent) // window, int(sample.received) // window
        if first != last:
            continue
        start = first * window
        if certain[start] + maybe[start] + sample.rows <= key.plan.rate:
            fail(
                f"key {key.key_id}: refused {sample.rows} rows for the rate with at most "
                f"{certain[start] + maybe[start]} of {key.plan.rate} used in the window"
            )
        saturated.add(start)
    report.windows_saturated += len(saturated)
    # The live window's counter in DynamoDB equals the rows attributed to that window.
    for name, value in item.items():
        if not name.startswith("rw_"):
            continue
        start = int(name[3:])
        low, high = certain.get(start, 0), certain.get(start, 0) + maybe.get(start, 0)
        if not low <= int(value) <= high:
            fail(f"key {key.key_id}: window {start} counter {value} outside [{low}, {high}]")
