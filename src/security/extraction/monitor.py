"""The monitor: ``ExtractionMonitor.process_batch`` applies a batch of queued messages.

It keeps a bounded ``DetectorState`` per principal and model in DynamoDB (item
``mon#<principal>#<model>``, under 4 KB: ``security.extraction.state``), read and written once
per batch for all of that principal's messages in it, and flags or suspends the principal when a
detector fires (``Settings.extraction_action``), writing an audit record (``flag_audit_sink``)
and a metric.
A message for a model with no reference (none shipped, or it failed to load at init) is
acknowledged with an ``unmonitored`` audit record and an ``UnmonitoredQueries`` metric: never
retried until it lands in the dead-letter queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from security.audit import AUDIT_MESSAGE, METRICS_NAMESPACE, AuditLog
from security.errors import StoreUnavailableError
from security.extraction.buffer import (
    BUFFER_LOST_EVENT,
    FLUSH_MESSAGES,
    LOST_LOG_FIELDS,
    MAX_PENDING_BYTES,
    GroupKey,
    PendingBuffer,
)
from security.extraction.detectors import (
    ExtractionDetector,
    Verdict,
    _push,
    observe_request,
)
from security.extraction.message import QueryMessage
from security.extraction.reference import MonitorReference
from security.extraction.state import RECENT_TOKENS, DetectorState, token_digest

EXTRACTION_ACTIONS = ("flag", "suspend")
#: Times a group is applied to a freshly read state when another writer keeps winning the race.
CONFLICT_ATTEMPTS = 3
_LOG = logging.getLogger(__name__)
#: The audit event of a message the monitor could not apply: its model has no reference.
UNMONITORED_EVENT = "unmonitored"


class MonitorStateStore(Protocol):
    """The DynamoDB operations the monitor needs (implemented by ``store.PrincipalStore``)."""

    def load_monitor_state(
        self, principal_id: str, model: str, *, consistent: bool = True
    ) -> tuple[bytes | None, int]:
        """The serialised state and its version (0 when there is none); ``consistent=False``
        may return an older one (the save's version check then refuses the write)."""
        ...

    def save_monitor_state(
        self, principal_id: str, model: str, blob: bytes, *, expected_version: int, now: int
    ) -> None:
        """Write the state if its version is still ``expected_version``."""
        ...

    def flag_principal(self, principal_id: str, *, reason: str, suspend: bool, now: int) -> Any:
        """Mark the principal flagged (and suspended when asked)."""
        ...


class AuditSink(Protocol):
    """Where the monitor writes its audit record and metric for a flag."""

    def __call__(self, record: Mapping[str, Any]) -> None:
        """Emit one flag record."""
        ...


@dataclass(frozen=True, slots=True)
class MonitorOutcome:
    """The result of processing one message."""

    principal_id: str
    model: str
    rows_seen: int
    duplicate: bool
    verdict: Verdict | None
    # The model has no reference: the message was acknowledged and audited, not applied.
    unmonitored: bool = False
    # Buffered (acknowledged, applied at its group's flush): no state was read for it yet.
    pending: bool = False


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A batch's outcomes by item id, and the item ids to redeliver (their group failed)."""

    outcomes: Mapping[str, MonitorOutcome]
    failed: list[str]


class ExtractionMonitor:
    """Processes query messages: update a principal's state, flag or suspend when it fires."""

    def __init__(
        self,
        *,
        store: MonitorStateStore,
        references: Mapping[str, MonitorReference],
        action: str,
        audit: AuditSink,
        clock: Callable[[], float] = time.time,
        action_for: Callable[[str], str] | None = None,
        unavailable: Mapping[str, str] | None = None,
        flush_seconds: float = 0.0,
        flush_messages: int = FLUSH_MESSAGES,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        report: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        """Wire the store, the per-model references, the action and the audit sink.

        ``flush_seconds``, ``flush_messages`` and ``max_pending_bytes`` are the write-behind
        buffer's rule (``security.extraction.buffer``; ``flush_seconds=0``, the default here,
        applies every group in the invocation that received it). ``report``, when given,
        receives the buffer's position after each batch and each flush.

        ``action_for(model)``, when given, is asked for the action at each detection (the
        runtime document of ``security.runtime_config``; ``action`` is its deploy-time default).
        ``unavailable`` names the models whose reference failed to load, with the reason (for
        the audit record of their messages).

        Raises:
            ValueError: the action is not ``flag`` or ``suspend``, or a buffer bound is out of
                range.
        """
        if action not in EXTRACTION_ACTIONS:
            raise ValueError("extraction action must be flag or suspend")
        self._store = store
        self._detectors = {name: ExtractionDetector(ref) for name, ref in references.items()}
        self._action = action
        self._action_for = action_for
        self._audit = audit
        self._clock = clock
        self._unavailable = dict(unavailable or {})
        self.buffer = PendingBuffer(flush_messages=flush_messages, flush_seconds=flush_seconds,
                                    max_bytes=max_pending_bytes)  # fmt: skip
        self._report = report

    def process(self, message: QueryMessage) -> MonitorOutcome:
        """Apply one message (a batch of one); raise (so it is retried) when it cannot be.

        Raises:
            StoreUnavailableError: the store failed, or the state kept moving under this
                writer (``monitor_state_conflict``): the message is retried.
            RuntimeConfigUnavailableError: a detection fired and the runtime document is
                malformed or unreadable (the message is retried).
        """
        return self._group(message.principal_id, message.model, [message])[0]

    def process_batch(self, items: Sequence[tuple[str, QueryMessage]]) -> BatchResult:
        """Buffer a batch of ``(item id, message)`` by principal and model, and flush the groups
        that are due (``PendingBuffer.due``): every one when ``flush_seconds`` is 0.

        A flushed group's state is read once, its pending messages are applied in the order
        received, and it is written once (with the flag, if one fired, before it). A group that
        fails (the store, the runtime document, a state that does not parse) fails alone: its
        item ids of this batch are returned for redelivery, its messages of earlier batches
        stay pending (retried after ``flush_seconds``), and every other group is kept. Once the
        store has failed in a batch, no group without a message of this batch is tried again in
        it. The messages held for later are acknowledged (``MonitorOutcome.pending``).
        """
        buffer = self.buffer
        now = self._clock()
        invocation = buffer.begin()
        outcomes: dict[str, MonitorOutcome] = {}
        for item_id, message in items:
            if message.model in self._detectors:
                buffer.add(item_id, message, now)
            else:
                outcomes[item_id] = self._unmonitored(message)
        failed: list[str] = []
        store_down = False
        for key, forced in buffer.due(now):
            entries = buffer.take(key)
            current = [e for e in entries if e.invocation == invocation]
            earlier = [e for e in entries if e.invocation != invocation]
            if store_down and not current:
                self._lost(buffer.hold(key, earlier, forced, retry_at=now, why="store_unavailable"))
                continue
            try:
                results = self._group(*key, [e.message for e in entries])
            except Exception as exc:  # noqa: BLE001 - the group is redelivered, the rest kept
                self._group_failed(key, len(entries), exc)
                store_down = store_down or _store_failure(exc)
                failed.extend(e.item_id for e in current)
                buffer.flushed += len(current)
                retry_at = now + buffer.flush_seconds
                self._lost(buffer.hold(key, earlier, forced, retry_at=retry_at, why="flush_failed"))
                continue
            buffer.flushed += len(entries)
            outcomes.update(
                (e.item_id, r)
                for e, r in zip(entries, results, strict=True)
                if e.invocation == invocation
            )
        refused = set(failed)
        for item_id, message in items:
            if item_id not in outcomes and item_id not in refused:
                outcomes[item_id] = MonitorOutcome(
                    message.principal_id, message.model, 0, False, None, pending=True
                )
        if self._report is not None:
            self._report(buffer.position())
        return BatchResult(outcomes, failed)

    def flush(self) -> None:
        """Apply every pending group now (at shutdown, at the end of a replay). The messages of
        a group whose flush fails are lost, and reported (``MonitorBufferLost``); after a
        failure of the store, the remaining groups are lost without another try."""
        buffer = self.buffer
        groups = buffer.groups()
        if not groups:
            return
        store_down = False
        for key in groups:
            entries = buffer.take(key)
            if store_down:
                self._lost(buffer.give_up(key, entries, "shutdown_store_unavailable"))
                continue
            try:
                self._group(*key, [e.message for e in entries])
            except Exception as exc:  # noqa: BLE001 - reported as lost, the rest flushed
                self._group_failed(key, len(entries), exc)
                store_down = _store_failure(exc)
                self._lost(buffer.give_up(key, entries, "shutdown_flush_failed"))
                continue
            buffer.flushed += len(entries)
        if self._report is not None:
            self._report(buffer.position())

    def _lost(self, record: dict[str, Any] | None) -> None:
        if record is not None:
            _LOG.warning(BUFFER_LOST_EVENT, extra={k: record[k] for k in LOST_LOG_FIELDS})
            self._audit(record)

    def _group_failed(self, key: GroupKey, messages: int, exc: Exception) -> None:
        _LOG.warning(
            "monitor_group_failed",
            extra={
                "principal_id": key[0],
                "model": key[1][:64],
                "messages": messages,
                "error": type(exc).__name__,
                "reason": str(getattr(exc, "reason", ""))[:64],
            },
        )

    def process_sqs_event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """MonitorFunction's batch: an SQS event in, ``batchItemFailures`` out.

        A record whose body is not a query message fails alone (SQS redelivers it, then moves
        it to the dead-letter queue).
        """
        items: list[tuple[str, QueryMessage]] = []
        failed: list[str] = []
        for record in event.get("Records", []):
            item_id = str(record["messageId"])
            try:
                items.append((item_id, QueryMessage.from_json(str(record["body"]))))
            except ValueError:
                _LOG.warning("monitor_message_malformed", extra={"message_id": item_id})
                failed.append(item_id)
        failed += self.process_batch(items).failed
        return {"batchItemFailures": [{"itemIdentifier": item_id} for item_id in failed]}

    def _group(
        self, principal_id: str, model: str, messages: Sequence[QueryMessage]
    ) -> list[MonitorOutcome]:
        detector = self._detectors.get(model)
        if detector is None:
            return [self._unmonitored(message) for message in messages]
        flagged = False
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            # The first read is eventually consistent (half the read units); a stale one only
            # costs a refused write and a strongly consistent read again.
            blob, version = self._store.load_monitor_state(
                principal_id, model, consistent=attempt > 1
            )
            state = DetectorState.from_bytes(blob) if blob else DetectorState()
            outcomes, detection = _apply(detector, state, messages)
            if detection is not None and not flagged:
                # Flagged before the state is saved: if the save fails, redelivery flags again
                # (idempotent) rather than losing the flag behind a state that says flagged.
                self._flag(principal_id, model, *detection)
                flagged = True
            if all(outcome.duplicate for outcome in outcomes):
                return outcomes  # nothing new: nothing to write
            try:
                self._store.save_monitor_state(
                    principal_id,
                    model,
                    state.to_bytes(),
                    expected_version=version,
                    now=int(self._clock()),
                )
            except StoreUnavailableError as exc:
                # Another monitor instance wrote this state since it was read, or the read was
                # stale: apply the messages again to the state as it is.
                if exc.reason != "monitor_state_conflict" or attempt == CONFLICT_ATTEMPTS:
                    raise
                continue
            return outcomes
        raise AssertionError("unreachable")  # pragma: no cover

    def _flag(self, principal_id: str, model: str, message: QueryMessage, verdict: Verdict,
              rows_seen: int) -> None:  # fmt: skip
        # Asked only now: a runtime document that cannot be read raises here, before the flag
        # and the state are written, so the group is redelivered and flagged again.
        action = self._action if self._action_for is None else self._action_for(model)
        if action not in EXTRACTION_ACTIONS:
            raise ValueError("extraction action must be flag or suspend")
        suspend = action == "suspend"
        self._store.flag_principal(
            principal_id,
            reason=f"extraction:{verdict.reason}",
            suspend=suspend,
            now=int(self._clock()),
        )
        self._audit(
            {
                "event": "extraction_flag",
                "principal_id": principal_id,
                "model": model,
                "request_id": message.request_id,
                "decision": "suspend" if suspend else "flag",
                "reason": f"extraction:{verdict.reason}",
                "rows_seen": rows_seen,
                "flagged_at_row": verdict.flagged_at_row,
                "scores": dict(verdict.scores),
            }
        )

    def _unmonitored(self, message: QueryMessage) -> MonitorOutcome:
        # Retrying cannot give the model a reference: acknowledge, audit and count the gap.
        cause = self._unavailable.get(message.model, "no_reference")
        self._audit(
            {
                "event": UNMONITORED_EVENT,
                "principal_id": message.principal_id,
                "model": message.model[:64],
                "request_id": message.request_id,
                "decision": "skip",
                "reason": "no_monitor_reference",
                "rows": len(message.rows),
                "flags": [f"detail:{cause}"],
            }
        )
        return MonitorOutcome(message.principal_id, message.model, 0, False, None, True)


def _apply(
    detector: ExtractionDetector, state: DetectorState, messages: Sequence[QueryMessage]
) -> tuple[list[MonitorOutcome], tuple[QueryMessage, Verdict, int] | None]:
    """Apply messages to a state in order: their outcomes, and the detection if one fired
    (the message, its verdict and the rows seen then)."""
    outcomes: list[MonitorOutcome] = []
    detection: tuple[QueryMessage, Verdict, int] | None = None
    applied: set[bytes] = set()
    for message in messages:
        digest = token_digest(f"{message.request_id}/{message.part}")
        if digest in applied or digest in state.recent_requests:
            outcomes.append(
                MonitorOutcome(message.principal_id, message.model, state.rows_seen, True, None)
            )
            continue
        applied.add(digest)
        _push(state.recent_requests, digest, RECENT_TOKENS)
        if message.refusal:
            verdict = _refused(state)
        else:
            if message.part == 0:
                observe_request(state, refused=False)
            verdict = detector.observe(
                state, message.rows, labels=message.labels, confidences=message.confidences
            )
        if verdict.newly_flagged:
            detection = (message, verdict, state.rows_seen)
        outcomes.append(
            MonitorOutcome(message.principal_id, message.model, state.rows_seen, False, verdict)
        )
    return outcomes, detection


def _store_failure(exc: Exception) -> bool:
    """The store itself failed (not a lost race, a runtime document or a malformed state)."""
    return isinstance(exc, StoreUnavailableError) and exc.reason != "monitor_state_conflict"


def _refused(state: DetectorState) -> Verdict:
    fires = observe_request(state, refused=True)
    refusals = sum(state.refusal_bits)
    scores = {"refusals": float(refusals), "requests": float(len(state.refusal_bits))}
    if fires and not state.flagged:
        state.flagged = True
        state.flagged_at_row = state.rows_seen
        state.flag_reason = "refusals"
        return Verdict(True, state.rows_seen, "refusals", scores)
    return Verdict(False, state.flagged_at_row, "", scores)


def flag_audit_sink(audit_log: AuditLog, *, service: str) -> AuditSink:
    """An audit sink writing each monitor record as one audit line with its metric: a flag with
    ``ExtractionFlags``, an unmonitored message with ``UnmonitoredQueries``, buffered messages
    given up with ``MonitorBufferLost`` (their count)."""

    def emit(record: Mapping[str, Any]) -> None:
        metrics = EphemeralMetrics(namespace=METRICS_NAMESPACE, service=service)
        if record.get("event") == UNMONITORED_EVENT:
            metrics.add_dimension(name="model", value=str(record["model"]))
            # The alarm counts them over every model.
            metrics.add_dimensions(service=service)
            metrics.add_metric(name="UnmonitoredQueries", unit=MetricUnit.Count, value=1)
        elif record.get("event") == BUFFER_LOST_EVENT:
            metrics.add_dimensions(service=service)
            metrics.add_metric(
                name="MonitorBufferLost", unit=MetricUnit.Count, value=int(record["messages"])
            )
        else:
            metrics.add_dimension(name="decision", value=str(record["decision"]))
            metrics.add_dimension(name="model", value=str(record["model"]))
            # Alarms count flags and suspensions over every model (a model per alarm would miss
            # the models operators add).
            metrics.add_dimensions(decision=str(record["decision"]), service=service)
            metrics.add_metric(name="ExtractionFlags", unit=MetricUnit.Count, value=1)
        audit_log.logger.set_correlation_id(str(record["request_id"]))
        audit_log.logger.info(
            AUDIT_MESSAGE,
            extra={
                **dict(metrics.serialize_metric_set()),
                **audit_log.invocation.fields(),
                **record,
            },
        )

    return emit
