"""The benchmark's plan and constants: rows, batch sizes, goals, what one repetition collects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Iris rows inside the training envelope (the seed's 4-feature schema).
ROWS: tuple[tuple[float, float, float, float], ...] = (
    (5.1, 3.5, 1.4, 0.2),
    (6.2, 2.9, 4.3, 1.3),
    (6.3, 3.3, 6.0, 2.5),
    (5.0, 3.4, 1.5, 0.2),
    (5.7, 2.8, 4.1, 1.3),
    (7.2, 3.0, 5.8, 1.6),
    (4.9, 3.1, 1.5, 0.1),
    (6.7, 3.1, 4.7, 1.5),
)
BATCH_SIZES = (1, 10, 100)
LAMBDA_MB_PER_VCPU = 1769
MIB = 1024 * 1024
GOAL_COLD_RATIO = 0.5
GOAL_IN_PROCESS_MS = 1.0
GOAL_PACKAGE_MB = 180.0
LAMBDA_LIMIT_BYTES = 262_144_000  # "250 MB" unzipped, function plus all its layers


@dataclass(frozen=True)
class Plan:
    """How much to run."""

    repeat: int
    warm: int
    batch: int
    no_bytecode_repeat: int


@dataclass
class Samples:
    """Everything measured for one stack, across repetitions."""

    cold: list[float] = field(default_factory=list)
    cold_no_bytecode: list[float] = field(default_factory=list)
    import_s: list[float] = field(default_factory=list)
    first_invoke_s: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    in_p50_ms: list[float] = field(default_factory=list)
    in_p99_ms: list[float] = field(default_factory=list)
    layer_p50_ms: list[float] = field(default_factory=list)
    layer_p99_ms: list[float] = field(default_factory=list)
    wire_ms_by_service: dict[str, list[float]] = field(default_factory=dict)
    steady_rss_kb: list[int] = field(default_factory=list)
    max_rss_kb: list[int] = field(default_factory=list)
    allowed: int = 0
    dynamodb_sends_allowed: int = 0
    other_sends: dict[str, int] = field(default_factory=dict)
    operations: dict[str, int] = field(default_factory=dict)
    non_200: dict[str, int] = field(default_factory=dict)
    rows_served: int = 0
    scaling: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    first_wire: list[dict[str, Any]] = field(default_factory=list)
    #: The function's stdout (CloudWatch Logs): each single-row 200's audit record's bytes,
    #: the other lines' bytes and the invocations they came from; the warm phase's SQS sends.
    audit_record_bytes: list[int] = field(default_factory=list)
    other_log_bytes: int = 0
    invocations: int = 0
    sqs_sends: int = 0
    sqs_bytes: int = 0
