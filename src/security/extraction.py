"""Per-principal model-extraction detection, off the hot path.

The predict path hands each served request to ``QuerySink.send``, which puts one SQS message
(``QueryMessage``: principal, model, request id, time, rows, predicted labels and top-1
confidences) on the extraction queue and never raises. ``MonitorFunction`` feeds those messages
to ``ExtractionMonitor.process``, which keeps a bounded ``DetectorState`` per principal and model
in DynamoDB (item ``mon#<principal>#<model>``) and flags or suspends the principal when a detector
fires (``Settings.extraction_action``), writing an audit record and a metric.

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

State stays bounded whatever the traffic: growing sets are capped FIFO per class, windows are
fixed-length, and running statistics are O(1). A serialised state is a few tens of KB at most
(well under DynamoDB's 400 KB item limit).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from botocore.exceptions import BotoCoreError, ClientError

from security.audit import AUDIT_MESSAGE, METRICS_NAMESPACE, AuditLog
from security.errors import ModelIntegrityError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

_LOG = logging.getLogger(__name__)

MESSAGE_VERSION = 1
# Version 2 (what QuerySink sends): rows and confidences packed as little-endian float64,
# base64. The same bits as served (exact), encoded in one call instead of a Python loop per value.
PACKED_VERSION = 2
_FLOAT = np.dtype("<f8")
# SQS accepts 256 KiB per message; stay well under it once JSON-encoded.
_MAX_MESSAGE_BYTES = 200_000
EXTRACTION_ACTIONS = ("flag", "suspend")
DETECTORS = ("off_manifold", "low_confidence", "prada")

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- statistics


@lru_cache(maxsize=64)
def _shapiro_coefficients(n: int) -> tuple[float, ...]:
    """Royston's (1992) approximation of the Shapiro-Wilk coefficients for sample size n."""
    normal = NormalDist()
    m = [normal.inv_cdf((i - 0.375) / (n + 0.25)) for i in range(1, n + 1)]
    mm = sum(v * v for v in m)
    u = 1.0 / math.sqrt(n)
    c = [v / math.sqrt(mm) for v in m]
    a_n = (
        c[-1] + 0.221157 * u - 0.147981 * u**2 - 2.071190 * u**3 + 4.434685 * u**4 - 2.706056 * u**5
    )
    if n > 5:
        a_n1 = (
            c[-2]
            + 0.042981 * u
            - 0.293762 * u**2
            - 1.752461 * u**3
            + 5.682633 * u**4
            - 3.582633 * u**5
        )
        phi = (mm - 2 * m[-1] ** 2 - 2 * m[-2] ** 2) / (1 - 2 * a_n**2 - 2 * a_n1**2)
        a = [v / math.sqrt(phi) for v in m]
        a[-1], a[-2], a[0], a[1] = a_n, a_n1, -a_n, -a_n1
    else:
        phi = (mm - 2 * m[-1] ** 2) / (1 - 2 * a_n**2)
        a = [v / math.sqrt(phi) for v in m]
        a[-1], a[0] = a_n, -a_n
    return tuple(a)


def shapiro_w(sample: npt.ArrayLike) -> float:
    """Shapiro-Wilk's W statistic (Royston's approximation; numpy only, no scipy at run time).

    Raises:
        ValueError: fewer than three values.
    """
    values = np.sort(np.asarray(sample, dtype=np.float64).ravel())
    n = values.size
    if n < 3:
        raise ValueError("Shapiro-Wilk needs at least three values")
    spread = float(((values - values.mean()) ** 2).sum())
    if spread <= 0.0:
        return 1.0 if n == 3 else 0.0
    if n == 3:
        a = np.array([-math.sqrt(0.5), 0.0, math.sqrt(0.5)])
    else:
        a = np.asarray(_shapiro_coefficients(n))
    return float(min(1.0, float(a @ values) ** 2 / spread))


@lru_cache(maxsize=4096)
def _critical_count(n: int, p0: float, alpha: float) -> int:
    """The smallest k with P(Binomial(n, p0) >= k) < alpha (n + 1 when none is)."""
    log_p, log_q = math.log(p0), math.log1p(-p0)
    tail = 0.0
    for k in range(n, -1, -1):
        log_term = (
            math.lgamma(n + 1)
            - math.lgamma(k + 1)
            - math.lgamma(n - k + 1)
            + k * log_p
            + (n - k) * log_q
        )
        tail += math.exp(log_term)
        if tail >= alpha:
            return k + 1
    return n + 1


# --------------------------------------------------------------------------- message and sink


@dataclass(frozen=True, slots=True)
class QueryMessage:
    """One served request (or one part of a very large one) as the monitor receives it."""

    principal_id: str
    model: str
    request_id: str
    ts: float
    rows: tuple[tuple[float, ...], ...]
    labels: tuple[str, ...] = ()
    confidences: tuple[float, ...] = ()
    part: int = 0

    def to_json(self) -> str:
        """The SQS message body."""
        return json.dumps(
            {
                "v": MESSAGE_VERSION,
                "principal_id": self.principal_id,
                "model": self.model,
                "request_id": self.request_id,
                "ts": self.ts,
                "rows": [list(r) for r in self.rows],
                "labels": list(self.labels),
                "confidences": list(self.confidences),
                "part": self.part,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, body: str) -> QueryMessage:
        """Parse and validate an SQS message body (version 1, JSON numbers, or 2, packed).

        Raises:
            ValueError: the body is not a well-formed query message.
        """
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or data.get("v") not in (MESSAGE_VERSION, PACKED_VERSION):
                raise ValueError("unknown message version")
            if data["v"] == PACKED_VERSION:
                count, width = (int(v) for v in data["shape"])
                packed = _unpack_floats(data["rows"])
                if count < 1 or width < 1 or packed.size != count * width:
                    raise ValueError("rows do not match their shape")
                rows = tuple(tuple(row) for row in packed.reshape(count, width).tolist())
                confidences = tuple(_unpack_floats(data.get("confidences", "")).tolist())
            else:
                rows = tuple(tuple(float(v) for v in row) for row in data["rows"])
                confidences = tuple(float(v) for v in data.get("confidences", []))
            labels = tuple(str(v) for v in data.get("labels", []))
            message = cls(
                principal_id=str(data["principal_id"]),
                model=str(data["model"]),
                request_id=str(data["request_id"]),
                ts=float(data["ts"]),
                rows=rows,
                labels=labels,
                confidences=confidences,
                part=int(data.get("part", 0)),
            )
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"malformed query message: {exc}") from exc
        if not message.rows or len({len(r) for r in message.rows}) != 1:
            raise ValueError("rows must be a non-empty list of equal-length rows")
        if not all(math.isfinite(v) for r in message.rows for v in r):
            raise ValueError("rows must be finite")
        if message.labels and len(message.labels) != len(message.rows):
            raise ValueError("labels must match rows")
        if message.confidences and len(message.confidences) != len(message.rows):
            raise ValueError("confidences must match rows")
        return message


class QuerySink:
    """Sends one served request to the extraction queue; never raises.

    Give it an SQS client built with ``sink_client_config`` (short timeouts, one retry, TCP
    keepalive), so a failing queue costs serving at most two attempts (0.3 s connect, 0.5 s read)
    and one back-off, inside the function's timeout. A retried send that had in fact arrived is
    harmless: the monitor drops a repeated request id. A failed send is logged (reason only, no
    payload), counted in ``failures``, and reported by ``send``'s result so the caller can put
    it in the request's audit record and metrics.
    """

    def __init__(
        self, *, client: SQSClient, queue_url: str, clock: Callable[[], float] = time.time
    ) -> None:
        """Bind the sink to an SQS client and the queue URL from settings."""
        self._client = client
        self._queue_url = queue_url
        self._clock = clock
        self.failures = 0

    def send(
        self,
        *,
        principal_id: str,
        model: str,
        request_id: str,
        rows: Sequence[Sequence[float]] | npt.NDArray[Any],
        labels: Sequence[str] = (),
        confidences: Sequence[float] | npt.NDArray[Any] = (),
    ) -> bool:
        """Queue the request's rows with their predicted labels and top-1 confidences.

        Returns whether every part reached the queue.
        """
        now = self._clock()
        matrix = np.asarray(rows, dtype=_FLOAT)
        if matrix.ndim != 2:
            matrix = matrix.reshape(len(matrix), -1)
        label_list = [str(v) for v in labels]
        scores = np.asarray(confidences, dtype=_FLOAT).ravel()
        count, width = matrix.shape
        # base64 of 8 bytes per value, plus a confidence and a label per row: split only the
        # rare request too large for one message.
        row_bytes = 4 * -(-8 * width // 3) + 12 + max((len(v) + 3 for v in label_list), default=0)
        per_part = max(1, _MAX_MESSAGE_BYTES // row_bytes)
        ok = True
        for part, start in enumerate(range(0, count, per_part)):
            stop = start + per_part
            body = json.dumps(
                {
                    "v": PACKED_VERSION,
                    "principal_id": principal_id,
                    "model": model,
                    "request_id": request_id,
                    "ts": now,
                    "shape": [min(stop, count) - start, width],
                    "rows": _pack_floats(matrix[start:stop]),
                    "labels": label_list[start:stop],
                    "confidences": _pack_floats(scores[start:stop]),
                    "part": part,
                },
                separators=(",", ":"),
            )
            try:
                self._client.send_message(QueueUrl=self._queue_url, MessageBody=body)
            except (BotoCoreError, ClientError) as exc:
                self.failures += 1
                ok = False
                _LOG.warning(
                    "extraction_queue_send_failed",
                    extra={"request_id": request_id, "error": type(exc).__name__},
                )
        return ok


def _pack_floats(values: npt.NDArray[Any]) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=_FLOAT).tobytes()).decode("ascii")


def _unpack_floats(text: str) -> FloatArray:
    raw = base64.b64decode(text, validate=True)
    if len(raw) % _FLOAT.itemsize:
        raise ValueError("packed floats have a partial value")
    return np.frombuffer(raw, dtype=_FLOAT).astype(np.float64)


def sink_client_config() -> Any:
    """A botocore ``Config`` for the sink's SQS client: short timeouts, one retry, keepalive.

    One retry (standard mode: timeouts, throttling and 5xx only, within the retry quota) turns
    a single lost packet or slow response into a delivered message instead of a monitor gap;
    TCP keepalive keeps the pooled connection usable between requests of a warm instance.
    """
    from botocore.config import Config

    return Config(
        connect_timeout=0.3,
        read_timeout=0.5,
        retries={"mode": "standard", "total_max_attempts": 2},
        tcp_keepalive=True,
    )


# --------------------------------------------------------------------------- reference and state


@dataclass(frozen=True, slots=True)
class MonitorReference:
    """One model's calibrated detector parameters (the ``monitor`` section of defences.json)."""

    model: str
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    scale: tuple[float, ...]
    prototypes: tuple[tuple[float, ...], ...]
    off_manifold_threshold: float
    off_manifold_p0: float
    low_confidence_cut: float
    low_confidence_p0: float
    prada_delta: float
    prada_min_distances: int = 100
    prada_window: int = 400
    prada_set_cap: int = 128
    window: int = 200
    min_rows: int = 20
    alpha: float = 1e-7

    @classmethod
    def from_dict(cls, model: str, data: Mapping[str, Any]) -> MonitorReference:
        """Parse the ``monitor`` section of one model's defences.json.

        Raises:
            ValueError: a field is missing or malformed.
        """
        try:
            ref = cls(
                model=model,
                lower=tuple(float(v) for v in data["lower"]),
                upper=tuple(float(v) for v in data["upper"]),
                scale=tuple(float(v) for v in data["scale"]),
                prototypes=tuple(tuple(float(v) for v in p) for p in data["prototypes"]),
                off_manifold_threshold=float(data["off_manifold_threshold"]),
                off_manifold_p0=float(data["off_manifold_p0"]),
                low_confidence_cut=float(data["low_confidence_cut"]),
                low_confidence_p0=float(data["low_confidence_p0"]),
                prada_delta=float(data["prada_delta"]),
                prada_min_distances=int(data.get("prada_min_distances", 100)),
                prada_window=int(data.get("prada_window", 400)),
                prada_set_cap=int(data.get("prada_set_cap", 128)),
                window=int(data.get("window", 200)),
                min_rows=int(data.get("min_rows", 20)),
                alpha=float(data.get("alpha", 1e-7)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed monitor section: {exc}") from exc
        width = len(ref.lower)
        if not width or len(ref.upper) != width or len(ref.scale) != width:
            raise ValueError("lower, upper and scale must have the same, non-zero length")
        if not ref.prototypes or any(len(p) != width for p in ref.prototypes):
            raise ValueError("prototypes must be rows of the feature width")
        if not (
            0 < ref.off_manifold_p0 < 1 and 0 < ref.low_confidence_p0 < 1 and 0 < ref.alpha < 1
        ):
            raise ValueError("p0 and alpha must be probabilities")
        if ref.prada_window > 2000 or ref.prada_set_cap > 512 or ref.window > 1000:
            raise ValueError("state bounds too large")
        return ref

    def to_dict(self) -> dict[str, Any]:
        """The ``monitor`` section of defences.json."""
        return {
            "lower": list(self.lower),
            "upper": list(self.upper),
            "scale": list(self.scale),
            "prototypes": [list(p) for p in self.prototypes],
            "off_manifold_threshold": self.off_manifold_threshold,
            "off_manifold_p0": self.off_manifold_p0,
            "low_confidence_cut": self.low_confidence_cut,
            "low_confidence_p0": self.low_confidence_p0,
            "prada_delta": self.prada_delta,
            "prada_min_distances": self.prada_min_distances,
            "prada_window": self.prada_window,
            "prada_set_cap": self.prada_set_cap,
            "window": self.window,
            "min_rows": self.min_rows,
            "alpha": self.alpha,
        }

    def normalise(self, rows: npt.ArrayLike) -> FloatArray:
        """Rows in envelope units: 0 at the training minimum, 1 at the maximum."""
        lower = np.asarray(self.lower)
        width = np.asarray(self.upper) - lower
        width[width <= 0] = 1.0
        result: FloatArray = (np.asarray(rows, dtype=np.float64) - lower) / width
        return result

    def off_manifold_scores(self, rows: npt.ArrayLike) -> FloatArray:
        """Per row: RMS standardised distance to the nearest training prototype."""
        z = self.normalise(rows)
        protos = np.asarray(self.prototypes, dtype=np.float64)
        scale = np.asarray(self.scale, dtype=np.float64)
        diff = (z[:, None, :] - protos[None, :, :]) / scale
        result: FloatArray = np.sqrt((diff**2).mean(axis=2).min(axis=1))
        return result


def _pack(array: npt.NDArray[Any]) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _unpack(text: str, dtype: type[np.generic], width: int | None = None) -> npt.NDArray[Any]:
    flat = np.frombuffer(base64.b64decode(text), dtype=dtype).copy()
    return flat.reshape(-1, width) if width else flat


@dataclass(slots=True)
class DetectorState:
    """Bounded per-principal, per-model detector state (serialised into one DynamoDB item)."""

    rows_seen: int = 0
    flagged: bool = False
    flag_reason: str = ""
    flagged_at_row: int = 0
    off_bits: list[int] = field(default_factory=list)
    low_bits: list[int] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)
    class_sets: dict[str, FloatArray] = field(default_factory=dict)
    class_stats: dict[str, list[float]] = field(default_factory=dict)
    recent_requests: list[str] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """Compressed, versioned serialisation."""
        width = next((s.shape[1] for s in self.class_sets.values()), 0)
        doc = {
            "v": 1,
            "rows_seen": self.rows_seen,
            "flagged": self.flagged,
            "flag_reason": self.flag_reason,
            "flagged_at_row": self.flagged_at_row,
            "off_bits": _pack(np.asarray(self.off_bits, dtype=np.uint8)),
            "low_bits": _pack(np.asarray(self.low_bits, dtype=np.uint8)),
            "distances": _pack(np.asarray(self.distances, dtype=np.float32)),
            "width": width,
            "class_sets": {k: _pack(v.astype(np.float32)) for k, v in self.class_sets.items()},
            "class_stats": self.class_stats,
            "recent_requests": self.recent_requests,
        }
        return zlib.compress(json.dumps(doc, separators=(",", ":")).encode("utf-8"), 6)

    @classmethod
    def from_bytes(cls, blob: bytes) -> DetectorState:
        """Inverse of ``to_bytes``.

        Raises:
            ValueError: the blob is not a serialised state.
        """
        try:
            doc = json.loads(zlib.decompress(blob).decode("utf-8"))
            if doc.get("v") != 1:
                raise ValueError("unknown state version")
            width = int(doc["width"])
            return cls(
                rows_seen=int(doc["rows_seen"]),
                flagged=bool(doc["flagged"]),
                flag_reason=str(doc["flag_reason"]),
                flagged_at_row=int(doc["flagged_at_row"]),
                off_bits=[int(v) for v in _unpack(doc["off_bits"], np.uint8)],
                low_bits=[int(v) for v in _unpack(doc["low_bits"], np.uint8)],
                distances=[float(v) for v in _unpack(doc["distances"], np.float32)],
                class_sets={
                    k: _unpack(v, np.float32, width).astype(np.float64)
                    for k, v in doc["class_sets"].items()
                },
                class_stats={k: [float(x) for x in v] for k, v in doc["class_stats"].items()},
                recent_requests=[str(v) for v in doc["recent_requests"]],
            )
        except (zlib.error, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed detector state: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one observation did: whether it newly flagged the principal, at which row, why."""

    newly_flagged: bool
    flagged_at_row: int
    reason: str
    scores: Mapping[str, float]


class ExtractionDetector:
    """Runs the three detectors of one model over a principal's rows, one row at a time."""

    def __init__(self, reference: MonitorReference) -> None:
        """Bind the detector to one model's calibrated reference."""
        self.reference = reference

    def observe(
        self,
        state: DetectorState,
        rows: npt.ArrayLike,
        *,
        labels: Sequence[str] = (),
        confidences: Sequence[float] = (),
    ) -> Verdict:
        """Feed rows (with their served labels and top-1 confidences) through the detectors."""
        ref = self.reference
        values = np.asarray(rows, dtype=np.float64)
        if values.ndim == 1:
            values = values.reshape(1, -1)
        z_rows = ref.normalise(values)
        off = ref.off_manifold_scores(values) > ref.off_manifold_threshold
        newly = False
        reason = ""
        scores: dict[str, float] = {}
        for i in range(values.shape[0]):
            state.rows_seen += 1
            _push(state.off_bits, int(off[i]), ref.window)
            if confidences:
                _push(state.low_bits, int(confidences[i] < ref.low_confidence_cut), ref.window)
            label = labels[i] if labels else "_"
            distance_fired = self._prada_step(state, z_rows[i], label)
            fired = []
            if self._window_fires(state.off_bits, ref.off_manifold_p0):
                fired.append("off_manifold")
            if confidences and self._window_fires(state.low_bits, ref.low_confidence_p0):
                fired.append("low_confidence")
            if distance_fired:
                fired.append("prada")
            if fired and not state.flagged:
                state.flagged = True
                state.flagged_at_row = state.rows_seen
                state.flag_reason = "+".join(fired)
                newly, reason = True, state.flag_reason
        scores["off_manifold_rate"] = float(np.mean(state.off_bits)) if state.off_bits else 0.0
        scores["low_confidence_rate"] = float(np.mean(state.low_bits)) if state.low_bits else 0.0
        if len(state.distances) >= 3:
            scores["prada_w"] = shapiro_w(state.distances)
        return Verdict(newly, state.flagged_at_row, reason, scores)

    def _window_fires(self, bits: list[int], p0: float) -> bool:
        ref = self.reference
        n = len(bits)
        return n >= ref.min_rows and sum(bits) >= _critical_count(n, p0, ref.alpha)

    def _prada_step(self, state: DetectorState, z: FloatArray, label: str) -> bool:
        ref = self.reference
        known = state.class_sets.get(label)
        if known is None or known.shape[0] == 0:
            state.class_sets[label] = z.reshape(1, -1).copy()
            return False
        distance = float(np.sqrt(((known - z) ** 2).sum(axis=1)).min())
        _push(state.distances, distance, ref.prada_window)
        count, mean, m2 = state.class_stats.get(label, [0.0, 0.0, 0.0])
        count += 1
        delta = distance - mean
        mean += delta / count
        m2 += delta * (distance - mean)
        state.class_stats[label] = [count, mean, m2]
        threshold = mean - math.sqrt(m2 / count)
        if distance > threshold:
            grown = np.vstack([known, z.reshape(1, -1)])
            state.class_sets[label] = grown[-ref.prada_set_cap :]
        if len(state.distances) < ref.prada_min_distances:
            return False
        return shapiro_w(state.distances) < ref.prada_delta


def _push(window: list[Any], value: Any, size: int) -> None:
    window.append(value)
    if len(window) > size:
        del window[: len(window) - size]


# --------------------------------------------------------------------------- the monitor


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
    ) -> None:
        """Wire the store, the per-model references, the action and the audit sink.

        Raises:
            ValueError: the action is not ``flag`` or ``suspend``.
        """
        if action not in EXTRACTION_ACTIONS:
            raise ValueError("extraction action must be flag or suspend")
        self._store = store
        self._detectors = {name: ExtractionDetector(ref) for name, ref in references.items()}
        self._action = action
        self._audit = audit
        self._clock = clock

    def process(self, message: QueryMessage) -> MonitorOutcome:
        """Apply one message; raise (so the record is retried) if the state write conflicts.

        Raises:
            StoreUnavailableError: the store failed (the record is retried).
            ValueError: the message names a model with no reference (a poison message).
        """
        detector = self._detectors.get(message.model)
        if detector is None:
            raise ValueError("no monitor reference for the message's model")
        blob, version = self._store.load_monitor_state(message.principal_id, message.model)
        state = DetectorState.from_bytes(blob) if blob else DetectorState()
        token = f"{message.request_id}/{message.part}"
        if token in state.recent_requests:
            return MonitorOutcome(message.principal_id, message.model, state.rows_seen, True, None)
        _push(state.recent_requests, token, 64)
        verdict = detector.observe(
            state, message.rows, labels=message.labels, confidences=message.confidences
        )
        if verdict.newly_flagged:
            suspend = self._action == "suspend"
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


def load_references(
    defences: Mapping[str, Mapping[str, Any]],
) -> dict[str, MonitorReference]:
    """Monitor references from each model's parsed defences ``monitor`` section.

    Raises:
        ValueError: a section is malformed.
    """
    return {name: MonitorReference.from_dict(name, section) for name, section in defences.items()}


def load_monitor_references(model_dir: str | Path) -> dict[str, MonitorReference]:
    """The monitor reference of every model in ``model_dir`` that ships a defences.json.

    Raises:
        ModelIntegrityError: a defences.json is malformed or calibrated for another version of
            its model than the manifest beside it.
    """
    from security.defences import DEFENCES_FILE, load_defences

    references: dict[str, MonitorReference] = {}
    for path in sorted(Path(model_dir).glob(f"*/{DEFENCES_FILE}")):
        name = path.parent.name
        defences = load_defences(path)
        try:
            manifest = json.loads((path.parent / "manifest.json").read_text(encoding="utf-8"))
            version = str(manifest["version"])
            references[name] = MonitorReference.from_dict(name, defences.monitor)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ModelIntegrityError("defences_malformed", detail=f"model={name}") from exc
        if defences.squeeze.model_version != version:
            raise ModelIntegrityError("defences_version_mismatch", detail=f"model={name}")
    return references


def flag_audit_sink(audit_log: AuditLog, *, service: str) -> AuditSink:
    """An audit sink writing each flag as one audit record with an ``ExtractionFlags`` metric."""

    def emit(record: Mapping[str, Any]) -> None:
        metrics = EphemeralMetrics(namespace=METRICS_NAMESPACE, service=service)
        metrics.add_dimension(name="decision", value=str(record["decision"]))
        metrics.add_dimension(name="model", value=str(record["model"]))
        metrics.add_metric(name="ExtractionFlags", unit=MetricUnit.Count, value=1)
        audit_log.logger.set_correlation_id(str(record["request_id"]))
        audit_log.logger.info(
            AUDIT_MESSAGE, extra={**dict(metrics.serialize_metric_set()), **record}
        )

    return emit
