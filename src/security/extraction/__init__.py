"""Per-principal model-extraction detection, off the hot path.

The predict path hands each served request to ``QuerySink.send``, which queues one SQS message
(``QueryMessage``: principal, model, request id, time, rows, predicted labels and top-1
confidences) for the extraction queue and never raises. ``MonitorFunction`` feeds each SQS batch
to ``ExtractionMonitor.process_sqs_event``, which buffers it by principal and model
(``PendingBuffer``: a group waits in the execution environment until enough of its messages are
pending, its oldest is old enough, memory runs short or the environment shuts down) and, per
group flushed, reads the principal's bounded ``DetectorState`` once from DynamoDB (item
``mon#<principal>#<model>``), applies the group's messages in order, writes it back once, and
flags or suspends the principal when a detector fires (``Settings.extraction_action``), writing
an audit record and a metric.

Three detectors run on every row, all in the space of the manifest envelope
(``z = (x - min) / (max - min)``), each calibrated per model on benign held-out traffic by
``mlmoat redteam calibrate`` and shipped in ``defences.json`` (section ``monitor``):

- ``off_manifold``: the standardised distance from the row to the nearest of a few k-means
  prototypes of the training data. Benign rows are close; uniform-random and synthetic probes are
  not. A sliding window of exceedances is tested against the benign exceedance rate (binomial
  tail below ``alpha``).
- ``low_confidence``: the share of rows the model answers with a top-1 probability under a cut.
  Boundary-probing attacks live where the model is unsure; benign traffic mostly does not. Same
  windowed binomial test.
- ``prada``: PRADA's test (Juuti et al., 2019). For each predicted class a growing set of past
  queries; each new query's minimum distance to its class's set joins a distance window, and the
  query joins the set when that distance exceeds the class's mean minus one standard deviation.
  Benign distances are close to normal; Shapiro-Wilk's W below the calibrated ``delta`` flags.

State stays bounded whatever the traffic and the model's feature count: growing sets are capped
FIFO per class within a byte budget, windows are fixed-length, running statistics are O(1), and
the binary layout (``security.extraction.state``) keeps a state item under 4 KB on the shipped
models: one strongly consistent read unit and at most four write units per batch.

The package, by concern:

- ``message``: the wire format, ``QueryMessage`` (versions ``MESSAGE_VERSION`` and
  ``PACKED_VERSION``) and its packed floats.
- ``sink``: ``QuerySink``, the predict path's producer (its client: ``security.wiring``).
- ``stats``: Shapiro-Wilk's W (``shapiro_w``) and the binomial critical counts.
- ``reference``: ``MonitorReference`` and ``load_monitor_references`` (defences.json).
- ``state``: ``DetectorState`` and its compact binary layout.
- ``detectors``: ``ExtractionDetector`` and its ``Verdict``.
- ``buffer``: ``PendingBuffer``, the monitor's write-behind buffer, and ``BUFFER_LOST_EVENT``.
- ``monitor``: ``ExtractionMonitor``, ``MonitorOutcome``, ``BatchResult``, the store and audit
  protocols, and ``flag_audit_sink``.

Every public name is re-exported here. The predict path's names (``message``, ``sink``) are
imported eagerly; the monitor's side is imported on first use (PEP 562), so the predict hot path
does not load the statistics, the detectors or the metrics it never runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from security.extraction.message import MESSAGE_VERSION, PACKED_VERSION, FloatArray, QueryMessage
from security.extraction.sink import QuerySink

if TYPE_CHECKING:
    from security.extraction.buffer import BUFFER_LOST_EVENT, PendingBuffer
    from security.extraction.detectors import ExtractionDetector, Verdict
    from security.extraction.monitor import (
        EXTRACTION_ACTIONS,
        UNMONITORED_EVENT,
        AuditSink,
        BatchResult,
        ExtractionMonitor,
        MonitorOutcome,
        MonitorStateStore,
        flag_audit_sink,
    )
    from security.extraction.reference import MonitorReference, load_monitor_references
    from security.extraction.state import DetectorState
    from security.extraction.stats import shapiro_w

_LAZY: dict[str, str] = {
    "shapiro_w": "security.extraction.stats",
    "MonitorReference": "security.extraction.reference",
    "load_monitor_references": "security.extraction.reference",
    "DetectorState": "security.extraction.state",
    "ExtractionDetector": "security.extraction.detectors",
    "Verdict": "security.extraction.detectors",
    "BUFFER_LOST_EVENT": "security.extraction.buffer",
    "PendingBuffer": "security.extraction.buffer",
    "EXTRACTION_ACTIONS": "security.extraction.monitor",
    "UNMONITORED_EVENT": "security.extraction.monitor",
    "AuditSink": "security.extraction.monitor",
    "BatchResult": "security.extraction.monitor",
    "ExtractionMonitor": "security.extraction.monitor",
    "MonitorOutcome": "security.extraction.monitor",
    "MonitorStateStore": "security.extraction.monitor",
    "flag_audit_sink": "security.extraction.monitor",
}

__all__ = [
    "BUFFER_LOST_EVENT",
    "EXTRACTION_ACTIONS",
    "MESSAGE_VERSION",
    "PACKED_VERSION",
    "UNMONITORED_EVENT",
    "AuditSink",
    "BatchResult",
    "DetectorState",
    "ExtractionDetector",
    "ExtractionMonitor",
    "FloatArray",
    "MonitorOutcome",
    "MonitorReference",
    "MonitorStateStore",
    "PendingBuffer",
    "QueryMessage",
    "QuerySink",
    "Verdict",
    "flag_audit_sink",
    "load_monitor_references",
    "shapiro_w",
]


def __getattr__(name: str) -> Any:
    """Import a lazily re-exported name on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'security.extraction' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
