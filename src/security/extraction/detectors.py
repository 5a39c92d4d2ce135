"""The three detectors over one principal's rows, and their bounded, serialisable state.

``ExtractionDetector.observe`` feeds rows through ``off_manifold``, ``low_confidence`` and
``prada`` (see the package docstring) and updates a ``DetectorState``: growing sets capped FIFO
per class, fixed-length windows and O(1) running statistics, so a serialised state stays a few
tens of KB at most (well under DynamoDB's 400 KB item limit).
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from security.extraction.message import FloatArray
from security.extraction.reference import MonitorReference
from security.extraction.stats import critical_count, shapiro_w


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
    #: The principal's last requests to this model: 1 refused, 0 served (``refusal_bits``).
    refusal_bits: list[int] = field(default_factory=list)

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
            "refusal_bits": _pack(np.asarray(self.refusal_bits, dtype=np.uint8)),
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
                # States written before refusals were sent have none.
                refusal_bits=[int(v) for v in _unpack(doc.get("refusal_bits", ""), np.uint8)],
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
        return n >= ref.min_rows and sum(bits) >= critical_count(n, p0, ref.alpha)

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


#: Requests per principal and model over which refusals are judged, and the signal: at least
#: ``REFUSAL_MIN`` refused among the last ``REFUSAL_WINDOW`` and at least half of them. Probing
#: an envelope or a boundary through refusals is mostly refusals; a client with a bug that
#: sends a few bad requests is not (docs/ml-defences.md).
REFUSAL_WINDOW = 100
REFUSAL_MIN = 30


def observe_request(state: DetectorState, *, refused: bool) -> bool:
    """Record one request as served or refused; whether refusals now flag the principal."""
    _push(state.refusal_bits, int(refused), REFUSAL_WINDOW)
    refusals = sum(state.refusal_bits)
    return refused and refusals >= REFUSAL_MIN and 2 * refusals >= len(state.refusal_bits)


def _push(window: list[Any], value: Any, size: int) -> None:
    window.append(value)
    if len(window) > size:
        del window[: len(window) - size]
