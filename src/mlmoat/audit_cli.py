"""``mlmoat audit``: summarise audit records per principal and flag the anomalous ones.

Reads any of:

* a log file of JSON lines (what the functions write, e.g. ``sam logs`` / ``mlmoat local``);
* a CloudWatch Logs export: ``aws logs filter-log-events --output json`` (one JSON document with
  ``events[].message``), or the lines of an export to S3 (``<timestamp> <message>``, ``.gz`` too);
* Lambda's plain-text lines (``<time>\\t<request id>\\tINFO\\t{...}``): the JSON part is used.

Only audit records (``"message": "audit"``) count: per-request records (``event == "request"``)
and the extraction monitor's flags (``event == "extraction_flag"``). Per principal (key id, token
subject, or ``ip:<source>`` for requests that never authenticated) it reports requests, rows
predicted, refusals by reason, models, first and last seen, and flags principals whose refusal
ratio, authentication failures, throttling, adversarial-input refusals, extraction flags or
row volume stand out. Usage::

    mlmoat audit [FILE|-]... [--principal ID] [--since ISO] [--until ISO] [--by owner] [--json]

``--by owner`` groups the records of every key of one owner (the ``owner`` field of admitted
requests; a key's refusals and the monitor's flags join its owner once any of its requests
names it): budgets and the extraction monitor are per key, so an owner spreading an
extraction over many keys shows only here, as one owner's rows, models and flags.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

AUTH_FAILURE_STATUSES = frozenset({401})
# Flags: thresholds chosen so that one bad request never flags; documented in docs/audit.md.
MIN_REQUESTS_FOR_RATIO = 5
REFUSAL_RATIO = 0.5
AUTH_FAILURES = 5
THROTTLED = 3
ROWS_FACTOR = 10.0
ROWS_FLOOR = 100


@dataclass
class PrincipalSummary:
    """What one principal did in the records read."""

    principal: str
    requests: int = 0
    allowed: int = 0
    denied: int = 0
    rows: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    models: set[str] = field(default_factory=set)
    source_ips: set[str] = field(default_factory=set)
    extraction_flags: list[str] = field(default_factory=list)
    squeeze_flagged: int = 0
    first_seen: float | None = None
    last_seen: float | None = None
    anomalies: list[str] = field(default_factory=list)
    principals: set[str] = field(default_factory=set)

    def seen(self, when: float | None) -> None:
        """Widen the first/last-seen interval to include ``when``."""
        if when is None:
            return
        self.first_seen = when if self.first_seen is None else min(self.first_seen, when)
        self.last_seen = when if self.last_seen is None else max(self.last_seen, when)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "principal": self.principal,
            "requests": self.requests,
            "allowed": self.allowed,
            "denied": self.denied,
            "rows": self.rows,
            "refusals": dict(self.refusals.most_common()),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "models": sorted(self.models),
            "source_ips": sorted(self.source_ips),
            "extraction_flags": self.extraction_flags,
            "squeeze_flagged": self.squeeze_flagged,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "anomalies": self.anomalies,
            "principals": sorted(self.principals),
        }


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """Parse an ISO 8601 time (``Z`` or an offset; naive means UTC) to epoch seconds.

    Raises:
        ValueError: the text is not an ISO 8601 time.
    """
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _record_time(record: dict[str, Any], fallback: float | None) -> float | None:
    aws = record.get("_aws")
    if isinstance(aws, dict) and isinstance(aws.get("Timestamp"), int | float):
        return float(aws["Timestamp"]) / 1000.0
    stamp = record.get("timestamp")
    if isinstance(stamp, str):
        for pattern in ("%Y-%m-%d %H:%M:%S,%f%z", "%Y-%m-%dT%H:%M:%S.%f%z"):
            try:
                return datetime.strptime(stamp, pattern).timestamp()
            except ValueError:
                continue
        try:
            return parse_time(stamp)
        except ValueError:
            pass
    return fallback


def _json_object(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    if start < 0:
        return None
    try:
        value = json.loads(text[start:])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _lines_of(handle: IO[bytes]) -> Iterator[str]:
    head = handle.read(2)
    rest = handle.read()
    raw = head + rest
    if head == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8", errors="replace")
    stripped = text.lstrip()
    if stripped.startswith("{") and '"events"' in stripped[:4096]:
        # One `aws logs filter-log-events --output json` document (or several, concatenated).
        decoder = json.JSONDecoder()
        position = 0
        while position < len(text):
            while position < len(text) and text[position].isspace():
                position += 1
            if position >= len(text):
                return
            try:
                document, position = decoder.raw_decode(text, position)
            except ValueError:
                break
            for event in document.get("events", []) if isinstance(document, dict) else []:
                if isinstance(event, dict) and isinstance(event.get("message"), str):
                    stamp = event.get("timestamp")
                    yield json.dumps({"__cw_timestamp": stamp, "__message": event["message"]})
        return
    yield from io.StringIO(text)


@dataclass
class AuditReader:
    """Reads audit records from log sources; counts what it skipped."""

    records: int = 0
    skipped_lines: int = 0

    def read(self, sources: Iterable[IO[bytes]]) -> Iterator[tuple[dict[str, Any], float | None]]:
        """Yield ``(record, epoch seconds)`` for every audit record in ``sources``."""
        for handle in sources:
            for line in _lines_of(handle):
                if not line.strip():
                    continue
                fallback: float | None = None
                record = _json_object(line)
                if record is not None and "__message" in record:
                    stamp = record.get("__cw_timestamp")
                    fallback = float(stamp) / 1000.0 if isinstance(stamp, int | float) else None
                    record = _json_object(str(record["__message"]))
                if record is None:
                    self.skipped_lines += 1
                    continue
                if record.get("message") != "audit":
                    continue
                self.records += 1
                yield record, _record_time(record, fallback)


def principal_of(record: dict[str, Any]) -> str:
    """The principal a record belongs to: key id, token subject, or the source IP."""
    for name in ("key_id", "subject"):
        value = record.get(name)
        if isinstance(value, str) and value:
            return value
    principal_id = record.get("principal_id")
    if isinstance(principal_id, str) and principal_id:
        return principal_id.removeprefix("key#")
    return f"ip:{record.get('source_ip') or 'unknown'}"


def _matches(record: dict[str, Any], wanted: str) -> bool:
    candidates = {principal_of(record)}
    for name in ("key_id", "subject", "principal_id"):
        value = record.get(name)
        if isinstance(value, str):
            candidates.add(value)
    return wanted in candidates


def owners_of(records: Iterable[tuple[dict[str, Any], float | None]]) -> dict[str, str]:
    """Principal -> owner, from the records that name one (admitted API-key requests)."""
    owners: dict[str, str] = {}
    for record, _ in records:
        owner = record.get("owner")
        if isinstance(owner, str) and owner:
            owners.setdefault(principal_of(record), owner)
    return owners


def summarise(
    records: Iterable[tuple[dict[str, Any], float | None]],
    *,
    principal: str | None = None,
    since: float | None = None,
    until: float | None = None,
    by: str = "principal",
) -> list[PrincipalSummary]:
    """Aggregate records per principal, or per owner with ``by="owner"`` (filtered), then flag
    the anomalous ones."""
    owners: dict[str, str] = {}
    if by == "owner":
        records = list(records)
        owners = owners_of(records)
    summaries: dict[str, PrincipalSummary] = {}
    for record, when in records:
        if principal is not None and not _matches(record, principal):
            continue
        if since is not None and (when is None or when < since):
            continue
        if until is not None and (when is None or when > until):
            continue
        who = principal_of(record)
        name = f"owner:{owners[who]}" if who in owners else who
        summary = summaries.setdefault(name, PrincipalSummary(principal=name))
        summary.principals.add(who)
        summary.seen(when)
        if record.get("event") == "extraction_flag":
            summary.extraction_flags.append(str(record.get("reason", "extraction")))
            if record.get("model"):
                summary.models.add(str(record["model"]))
            continue
        summary.requests += 1
        status = record.get("status")
        if isinstance(status, int):
            summary.statuses[status] += 1
        if record.get("model"):
            summary.models.add(str(record["model"]))
        if record.get("source_ip"):
            summary.source_ips.add(str(record["source_ip"]))
        flags = record.get("flags") or []
        if any(str(flag).startswith("squeeze_flagged") for flag in flags):
            summary.squeeze_flagged += 1
        if record.get("decision") == "allow":
            summary.allowed += 1
            rows = record.get("rows")
            summary.rows += rows if isinstance(rows, int) else 0
        else:
            summary.denied += 1
            summary.refusals[str(record.get("reason", "unknown"))] += 1
    result = sorted(summaries.values(), key=lambda s: (-s.requests, s.principal))
    flag_anomalies(result)
    return result


def flag_anomalies(summaries: list[PrincipalSummary]) -> None:
    """Set ``anomalies`` on each summary (see the thresholds at the top of this module)."""
    volumes = [s.rows for s in summaries if s.rows > 0]
    for summary in summaries:
        notes: list[str] = []
        if summary.requests >= MIN_REQUESTS_FOR_RATIO:
            ratio = summary.denied / summary.requests
            if ratio > REFUSAL_RATIO:
                notes.append(f"refusal_ratio:{ratio:.2f}")
        auth_failures = sum(summary.statuses[s] for s in AUTH_FAILURE_STATUSES)
        if auth_failures >= AUTH_FAILURES:
            notes.append(f"auth_failures:{auth_failures}")
        throttled = summary.statuses[429]
        if throttled >= THROTTLED:
            notes.append(f"throttled:{throttled}")
        if summary.refusals["adversarial_input"] or summary.squeeze_flagged:
            notes.append(
                f"adversarial:{summary.refusals['adversarial_input'] + summary.squeeze_flagged}"
            )
        if summary.extraction_flags:
            notes.append("extraction:" + ",".join(sorted(set(summary.extraction_flags))))
        if len(summary.principals) > 1 and (summary.extraction_flags or summary.squeeze_flagged):
            notes.append(f"flagged_across_keys:{len(summary.principals)}")
        others = list(volumes)
        if summary.rows in others:
            others.remove(summary.rows)
        if others and summary.rows >= ROWS_FLOOR:
            typical = statistics.median(others)
            if summary.rows > ROWS_FACTOR * max(typical, 1):
                notes.append(f"rows_outlier:{summary.rows}>{ROWS_FACTOR:g}x{typical:g}")
        summary.anomalies = notes


def _table(summaries: list[PrincipalSummary], reader: AuditReader) -> str:
    header = (
        f"{'principal':<24} {'requests':>8} {'allowed':>7} {'denied':>6} {'rows':>8}  "
        f"{'first seen':<24} {'last seen':<24} refusals / anomalies"
    )
    lines = [header, "-" * len(header)]
    for s in summaries:
        refusals = ", ".join(f"{reason}={count}" for reason, count in s.refusals.most_common())
        lines.append(
            f"{s.principal[:24]:<24} {s.requests:>8} {s.allowed:>7} {s.denied:>6} {s.rows:>8}  "
            f"{_iso(s.first_seen) or '-':<24} {_iso(s.last_seen) or '-':<24} {refusals or '-'}"
        )
        if s.anomalies:
            lines.append(f"{'':<24} ANOMALOUS: {'; '.join(s.anomalies)}")
    flagged = [s.principal for s in summaries if s.anomalies]
    lines.append("")
    lines.append(
        f"{reader.records} audit records, {len(summaries)} principals, "
        f"{len(flagged)} anomalous{': ' + ', '.join(flagged) if flagged else ''}"
    )
    if reader.skipped_lines:
        lines.append(f"{reader.skipped_lines} non-JSON lines skipped")
    return "\n".join(lines)


def _open(paths: list[str]) -> Iterator[IO[bytes]]:
    for path in paths:
        if path == "-":
            yield sys.stdin.buffer
        else:
            with Path(path).open("rb") as handle:
                yield handle


def main(argv: list[str]) -> int:
    """Run ``mlmoat audit``."""
    parser = argparse.ArgumentParser(
        prog="mlmoat audit", description="Summarise audit records per principal."
    )
    parser.add_argument("files", nargs="*", default=["-"], help="log files, or - for stdin")
    parser.add_argument("--principal", help="only this key id, subject, principal id or ip:ADDR")
    parser.add_argument("--since", help="only records at or after this ISO 8601 time")
    parser.add_argument("--until", help="only records at or before this ISO 8601 time")
    parser.add_argument(
        "--by",
        choices=("principal", "owner"),
        default="principal",
        help="group by principal (default) or by the owner of the keys",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError:
        parser.error("--since/--until must be ISO 8601 times, e.g. 2026-11-26T00:00:00Z")
    reader = AuditReader()
    try:
        summaries = summarise(
            reader.read(_open(args.files)),
            principal=args.principal,
            since=since,
            until=until,
            by=args.by,
        )
    except OSError as exc:
        print(f"mlmoat audit: {exc}", file=sys.stderr)
        return 2
    if args.json:
        document = {
            "records": reader.records,
            "skipped_lines": reader.skipped_lines,
            "principals": [s.to_dict() for s in summaries],
            "anomalous": [s.principal for s in summaries if s.anomalies],
        }
        print(json.dumps(document, indent=2))
    else:
        print(_table(summaries, reader))
    return 0
