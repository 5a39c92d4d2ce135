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
    ) -> None:
        """Wire the store, the per-model references, the action and the audit sink.

        ``action_for(model)``, when given, is asked for the action at each detection (the
        runtime document of ``security.runtime_config``; ``action`` is its deploy-time default).
        ``unavailable`` names the models whose reference failed to load, with the reason (for
        the audit record of their messages).

        Raises:
            ValueError: the action is not ``flag`` or ``suspend``.
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
        """Apply a batch of ``(item id, message)``, grouped by principal and model.

        Each group's state is read once, every message of the group is applied to it in batch
        order, and it is written once (with the flag, if one fired, before it). A group that
        fails (the store, the runtime document, a state that does not parse) fails alone: its
        item ids are returned for redelivery and every other group is kept.
        """
        groups: dict[tuple[str, str], list[tuple[str, QueryMessage]]] = {}
        for item_id, message in items:
            groups.setdefault((message.principal_id, message.model), []).append((item_id, message))
        outcomes: dict[str, MonitorOutcome] = {}
        failed: list[str] = []
        for (principal, model), members in groups.items():
            try:
                results = self._group(principal, model, [message for _, message in members])
            except Exception as exc:  # noqa: BLE001 - the group is redelivered, the rest kept
                _LOG.warning(
                    "monitor_group_failed",
                    extra={
                        "principal_id": principal,
                        "model": model[:64],
                        "messages": len(members),
                        "error": type(exc).__name__,
                        "reason": str(getattr(exc, "reason", ""))[:64],
                    },
                )
                failed.extend(item_id for item_id, _ in members)
                continue
            outcomes.update((item_id, r) for (item_id, _), r in zip(members, results, strict=True))
        return BatchResult(outcomes, failed)

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
    ``ExtractionFlags``, an unmonitored message with ``UnmonitoredQueries``."""

    def emit(record: Mapping[str, Any]) -> None:
        metrics = EphemeralMetrics(namespace=METRICS_NAMESPACE, service=service)
        if record.get("event") == UNMONITORED_EVENT:
            metrics.add_dimension(name="model", value=str(record["model"]))
            # The alarm counts them over every model.
            metrics.add_dimensions(service=service)
            metrics.add_metric(name="UnmonitoredQueries", unit=MetricUnit.Count, value=1)
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
