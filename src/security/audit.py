"""The audit trail: the ``AuditEvent`` shape, the one Powertools ``Logger`` that writes it, metrics.

Exactly one audit record is written per request, allowed or refused. The record is a single
JSON line (Powertools Logger, ``message == "audit"``) carrying the request id both as
``request_id`` and as Powertools' ``correlation_id``. The same line is also a CloudWatch
Embedded Metric Format document (Powertools Metrics, EMF): ``Requests``, ``RowsPredicted``,
``Latency`` and ``MonitorQueueFailures`` (served queries that did not reach the extraction
queue, counted on the record of the request whose send found out), each by ``decision`` and
``reason``, by ``http_status`` and by ``service`` alone (the series the template's alarms and
dashboard read), so metrics and audit can never disagree.
Each record also says which Lambda invocation wrote it (``function_request_id``) and whether
that was the execution environment's first (``cold_start``); Powertools adds ``xray_trace_id``
from the trace header Lambda sets for every invocation.

Every record goes through ``sanitize.redact`` in the formatter: no field, message or stack
trace written by this logger can carry key material, whatever a caller put in it. Features are
logged as a fingerprint (SHA-256 of their canonical form) unless ``audit_raw_features`` is on.
The fields are documented in ``docs/audit.md``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from security.sanitize import redact, redact_text
from security.validation import canonical_rows

if TYPE_CHECKING:
    from security.auth import Credentials, Principal

AUDIT_MESSAGE = "audit"
#: The flag on a request whose send to the extraction queue lost queries (its own or earlier
#: ones of its execution environment, listed in ``monitor_queue_lost``; counted in the
#: ``MonitorQueueFailures`` metric).
MONITOR_QUEUE_FAILED = "monitor_queue_failed"
METRICS_NAMESPACE = "mlmoat"
_FINGERPRINT_DOMAIN = b"mlmoat-input-v1:"


class RedactingFormatter(LambdaPowertoolsFormatter):
    """Powertools' JSON formatter with every field passed through ``sanitize.redact``."""

    def serialize(self, log: dict[str, Any]) -> str:  # type: ignore[override]
        """Redact, then serialise the structured record."""
        return super().serialize(log=redact(log))


class RedactingFilter(logging.Filter):
    """Masks key material in any record's message and traceback (for handlers we do not own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drop it."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: the handler reports it as usual
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def install_log_redaction() -> None:
    """Attach ``RedactingFilter`` to every root handler (Lambda's own included), once each.

    The audit logger redacts in its formatter; this extends the choke point to every other
    logger that propagates to the root (botocore, Mangum, the extraction sink).
    """
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(RedactingFilter())


def input_fingerprint(rows: np.ndarray) -> str:
    """SHA-256 (hex, 32 characters) of the canonical feature values: equal inputs, equal prints."""
    return hashlib.sha256(_FINGERPRINT_DOMAIN + canonical_rows(rows)).hexdigest()[:32]


@dataclass(slots=True)
class AuditEvent:
    """One request's audit record, filled in as the request goes through the layer."""

    request_id: str
    route: str
    event: str = "request"
    method: str = "POST"
    source_ip: str | None = None
    model: str | None = None
    model_version: str | None = None
    credential_type: str | None = None
    principal_id: str | None = None
    key_id: str | None = None
    subject: str | None = None
    owner: str | None = None
    principal_fingerprint: str | None = None
    rows: int = 0
    decision: str = "deny"
    reason: str = "internal_error"
    status: int = 500
    latency_ms: float = 0.0
    input_fingerprint: str | None = None
    features: list[list[float]] | None = None
    output_policy: str | None = None
    # Input smoothing's certified L2 radius per served row (normalised units): audit only.
    certified_radius: list[float] | None = None
    flags: list[str] = field(default_factory=list)
    # The request ids of served queries the extraction queue's send lost while this request
    # flushed the sink's buffer (this request's and those sent with it): with the
    # ``monitor_queue_failed`` flag, counted by ``MonitorQueueFailures``.
    monitor_queue_lost: list[str] | None = None
    # Where the execution environment's extraction queue buffer stood after this request:
    # {"env": id, "queued": entries so far, "flushed": of them sent or lost}.
    monitor_queue: dict[str, str | int] | None = None
    function_request_id: str | None = None
    cold_start: bool | None = None
    started: float = field(default_factory=time.perf_counter, repr=False)

    def record_input(self, rows: np.ndarray, *, raw: bool) -> None:
        """Record the validated input: a fingerprint always, raw values only when ``raw``."""
        self.rows = int(rows.shape[0])
        self.input_fingerprint = input_fingerprint(rows)
        if raw:
            self.features = [[float(value) for value in row] for row in rows.tolist()]

    def finish(self, *, status: int, reason: str | None = None) -> None:
        """Set the outcome: the decision follows from the status (2xx allow, else deny)."""
        self.status = status
        self.decision = "allow" if 200 <= status < 300 else "deny"
        if reason is not None:
            self.reason = reason
        elif self.decision == "allow":
            self.reason = "ok"
        self.latency_ms = round((time.perf_counter() - self.started) * 1000.0, 3)

    def identify(self, who: Credentials | Principal) -> None:
        """Record who made the request: ids and a fingerprint, never the secret."""
        self.credential_type = who.kind
        self.principal_id = who.principal_id
        self.key_id = who.key_id
        self.subject = who.subject
        fingerprint = getattr(who, "fingerprint", None)
        if isinstance(fingerprint, str):
            self.principal_fingerprint = fingerprint
        owner = getattr(who, "owner", None)
        if isinstance(owner, str) and owner:
            # The key's owner (an admission's principal): `mlmoat audit --by owner` adds up
            # an owner's keys, which each have their own budget and monitor state.
            self.owner = owner

    def fields(self) -> dict[str, Any]:
        """The record's fields as they are logged (``None`` fields left out)."""
        # Read the slots directly: ``asdict`` deep-copies recursively, a measurable share of the
        # record's cost; the two list fields are copied so the record is a snapshot.
        values: dict[str, Any] = {}
        for name in _LOGGED_FIELDS:
            value = getattr(self, name)
            if value is None or (name == "flags" and not value):
                continue
            if name == "features":
                value = [list(row) for row in value]
            elif name in ("flags", "certified_radius", "monitor_queue_lost"):
                value = list(value)
            elif name == "monitor_queue":
                value = dict(value)
            values[name] = value
        return values


_LOGGED_FIELDS = tuple(f.name for f in dataclass_fields(AuditEvent) if f.name != "started")


@dataclass(frozen=True, slots=True)
class Invocation:
    """The Lambda invocation records are written in: its request id, and whether it is the
    execution environment's first (the cold start)."""

    function_request_id: str | None
    cold_start: bool

    def fields(self) -> dict[str, Any]:
        """The record fields (``function_request_id`` left out when unknown)."""
        values: dict[str, Any] = {"cold_start": self.cold_start}
        if self.function_request_id is not None:
            values["function_request_id"] = self.function_request_id
        return values


class AuditLog:
    """Writes audit records and EMF metrics through one Powertools ``Logger``."""

    def __init__(self, *, service: str, stream: IO[str] | None = None) -> None:
        self.formatter = RedactingFormatter()
        self.logger = Logger(service=service, stream=stream, logger_formatter=self.formatter)
        # Records leave only through the redacting handler, never raw through the root logger.
        logging.getLogger(service).propagate = False
        self._service = service
        # One AuditLog per execution environment (built at init): the invocations it has seen.
        self._invocations = 0
        self._last_function_request_id: str | None = None
        self.invocation = Invocation(function_request_id=None, cold_start=True)

    def enter(self, context: object | None) -> Invocation:
        """Note the Lambda invocation of ``context`` (its ``aws_request_id``); return it.

        The first invocation an environment serves is its cold start (after a SnapStart
        restore too: the snapshot is taken before any invocation). Several requests of one
        invocation (an SQS batch) share it; without a context every call is a new invocation.
        """
        request_id = getattr(context, "aws_request_id", None)
        if not isinstance(request_id, str) or not request_id:
            request_id = None
        if request_id is None or request_id != self._last_function_request_id:
            self._invocations += 1
            self._last_function_request_id = request_id
        self.invocation = Invocation(request_id, cold_start=self._invocations == 1)
        return self.invocation

    def begin(self, request_id: str) -> None:
        """Start a request: every line logged until the next ``begin`` carries its id."""
        self.logger.set_correlation_id(request_id)

    def error(self, message: str, *, exc: BaseException) -> None:
        """Log an unexpected failure with its stack trace (redacted; never sent to a client)."""
        self.logger.error(message, exc_info=(type(exc), exc, exc.__traceback__))

    def model_unavailable(
        self, model: str, *, reason: str, detail: str | None, message: str = "model_unavailable"
    ) -> None:
        """Log, once at init, that ``model`` is not served (or not monitored) and why: one
        structured line naming the model, the failed check and its detail (file names and
        check names only; redacted like every line)."""
        fields = {"model": model[:64], "reason": reason, "detail": (detail or "")[:200]}
        self.logger.set_correlation_id(None)  # an init line belongs to no request
        self.logger.error(message, extra=fields)

    def metrics(self, event: AuditEvent) -> dict[str, Any]:
        """The EMF document for one request: Requests, rows, latency (and queue failures), by
        decision and reason, by HTTP status and by service alone."""
        metrics = EphemeralMetrics(namespace=METRICS_NAMESPACE, service=self._service)
        metrics.add_dimension(name="decision", value=event.decision)
        metrics.add_dimension(name="reason", value=event.reason)
        # Alarms need one series per question: every 5xx, 503 or 401 whatever its reason (a
        # CloudWatch alarm sums at most 10 series), and latency percentiles over all requests
        # (percentiles of separate series cannot be combined).
        metrics.add_dimensions(service=self._service)
        metrics.add_dimensions(http_status=str(event.status), service=self._service)
        metrics.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=event.latency_ms)
        if event.decision == "allow":
            metrics.add_metric(name="RowsPredicted", unit=MetricUnit.Count, value=event.rows)
        if MONITOR_QUEUE_FAILED in event.flags:
            lost = len(event.monitor_queue_lost or ()) or 1
            metrics.add_metric(name="MonitorQueueFailures", unit=MetricUnit.Count, value=lost)
        return dict(metrics.serialize_metric_set())

    def queue_flushed(self, lost: Sequence[str], position: Mapping[str, str | int]) -> None:
        """One record for the extraction sink's flush outside any request (at shutdown):
        ``event`` ``monitor_queue``, the buffer's final ``monitor_queue`` position, and the
        request ids lost with ``MonitorQueueFailures`` if any was."""
        record: dict[str, Any] = {
            "event": "monitor_queue",
            "decision": "skip",
            "reason": "monitor_queue_flushed",
            "monitor_queue": dict(position),
        }
        metrics: dict[str, Any] = {}
        if lost:
            emf = EphemeralMetrics(namespace=METRICS_NAMESPACE, service=self._service)
            emf.add_dimension(name="reason", value=MONITOR_QUEUE_FAILED)
            emf.add_dimensions(service=self._service)
            emf.add_metric(name="MonitorQueueFailures", unit=MetricUnit.Count, value=len(lost))
            metrics = dict(emf.serialize_metric_set())
            record.update(reason=MONITOR_QUEUE_FAILED, flags=[MONITOR_QUEUE_FAILED],
                          monitor_queue_lost=list(lost))  # fmt: skip
        self.logger.set_correlation_id(None)
        self.logger.info(AUDIT_MESSAGE, extra={**metrics, **self.invocation.fields(), **record})

    def monitor_buffer(self, position: Mapping[str, str | int]) -> None:
        """The monitor's buffer position after a batch or a flush: one ``monitor_buffer`` line
        (not an audit record) with ``env``, ``buffered``, ``flushed``, ``pending``, ``lost``."""
        self.logger.set_correlation_id(None)
        self.logger.info(
            "monitor_buffer", extra={**self.invocation.fields(), "monitor_buffer": dict(position)}
        )

    def emit(self, event: AuditEvent) -> dict[str, Any]:
        """Write the request's one audit record (with its metrics); return the logged fields."""
        self.logger.set_correlation_id(event.request_id)
        fields = {**self.metrics(event), **event.fields()}
        self.logger.info(AUDIT_MESSAGE, extra=fields)
        return fields
