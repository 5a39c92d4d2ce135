"""The monitor: ``ExtractionMonitor.process`` applies one queued message to a principal's state.

It keeps a bounded ``DetectorState`` per principal and model in DynamoDB (item
``mon#<principal>#<model>``) and flags or suspends the principal when a detector fires
(``Settings.extraction_action``), writing an audit record (``flag_audit_sink``) and a metric.
A message for a model with no reference (none shipped, or it failed to load at init) is
acknowledged with an ``unmonitored`` audit record and an ``UnmonitoredQueries`` metric: never
retried until it lands in the dead-letter queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from security.audit import AUDIT_MESSAGE, METRICS_NAMESPACE, AuditLog
from security.extraction.detectors import (
    DetectorState,
    ExtractionDetector,
    Verdict,
    _push,
    observe_request,
)
from security.extraction.message import QueryMessage
from security.extraction.reference import MonitorReference

EXTRACTION_ACTIONS = ("flag", "suspend")
#: The audit event of a message the monitor could not apply: its model has no reference.
UNMONITORED_EVENT = "unmonitored"


class MonitorStateStore(Protocol):
    """The DynamoDB operations the monitor needs (implemented by ``store.PrincipalStore``)."""

    def load_monitor_state(self, principal_id: str, model: str) -> tuple[bytes | None, int]:
        """The serialised state and its version (0 when there is none)."""
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
        """Apply one message; raise (so the record is retried) if the state write conflicts.

        Raises:
            StoreUnavailableError: the store failed (the record is retried).
            RuntimeConfigUnavailableError: a detection fired and the runtime document is
                malformed or unreadable (the record is retried).
        """
        detector = self._detectors.get(message.model)
        if detector is None:
            return self._unmonitored(message)
        blob, version = self._store.load_monitor_state(message.principal_id, message.model)
        state = DetectorState.from_bytes(blob) if blob else DetectorState()
        token = f"{message.request_id}/{message.part}"
        if token in state.recent_requests:
            return MonitorOutcome(message.principal_id, message.model, state.rows_seen, True, None)
        _push(state.recent_requests, token, 64)
        if message.refusal:
            verdict = self._refused(state)
        else:
            if message.part == 0:
                observe_request(state, refused=False)
            verdict = detector.observe(
                state, message.rows, labels=message.labels, confidences=message.confidences
            )
        if verdict.newly_flagged:
            # Asked only now: a runtime document that cannot be read raises here, before the
            # flag and the state are written, so the record is redelivered and flagged again.
            action = self._action if self._action_for is None else self._action_for(message.model)
            if action not in EXTRACTION_ACTIONS:
                raise ValueError("extraction action must be flag or suspend")
            suspend = action == "suspend"
            self._store.flag_principal(
                message.principal_id,
                reason=f"extraction:{verdict.reason}",
                suspend=suspend,
                now=int(self._clock()),
            )
            self._audit(
                {
                    "event": "extraction_flag",
                    "principal_id": message.principal_id,
                    "model": message.model,
                    "request_id": message.request_id,
                    "decision": "suspend" if suspend else "flag",
                    "reason": f"extraction:{verdict.reason}",
                    "rows_seen": state.rows_seen,
                    "flagged_at_row": verdict.flagged_at_row,
                    "scores": dict(verdict.scores),
                }
            )
        # Saved after the flag: if the save fails, redelivery flags again (idempotent) rather
        # than losing the flag behind a state that already says flagged.
        self._store.save_monitor_state(
            message.principal_id,
            message.model,
            state.to_bytes(),
            expected_version=version,
            now=int(self._clock()),
        )
        return MonitorOutcome(message.principal_id, message.model, state.rows_seen, False, verdict)

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

    @staticmethod
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
