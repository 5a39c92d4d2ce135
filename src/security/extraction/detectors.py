"""The three detectors over one principal's rows, and their bounded, serialisable state.

``ExtractionDetector.observe`` feeds rows through ``off_manifold``, ``low_confidence`` and
``prada`` (see the package docstring) and updates a ``DetectorState``
(``security.extraction.state``): growing sets capped FIFO per class within a byte budget,
fixed-length windows and O(1) running statistics, so a serialised state stays within the
reference's ``state_bytes`` (880 bytes: the item under 1 KB, one write unit) whatever the model's
feature count, unless it has so many classes and features that one row per class passes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from security.extraction.message import FloatArray
from security.extraction.reference import MonitorReference
from security.extraction.state import (
    DetectorState,
    plateau_bytes,
    quantise_distance,
    quantise_rows,
)
from security.extraction.stats import critical_count, shapiro_w


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
        _fit(state, ref)
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
            state.class_sets[label] = quantise_rows(z.reshape(1, -1))
            _trim_sets(state, ref)
            return False
        distance = float(np.sqrt(((known - z) ** 2).sum(axis=1)).min())
        _push(state.distances, quantise_distance(distance), ref.prada_window)
        count, mean, m2 = state.class_stats.get(label, [0.0, 0.0, 0.0])
        count += 1
        delta = distance - mean
        mean += delta / count
        m2 += delta * (distance - mean)
        state.class_stats[label] = [count, mean, m2]
        threshold = mean - math.sqrt(m2 / count)
        if distance > threshold:
            grown = np.vstack([known, quantise_rows(z.reshape(1, -1))])
            state.class_sets[label] = grown[-set_cap(ref, list(state.class_sets), z.size) :]
        if len(state.distances) < ref.prada_min_distances or ref.prada_stale:
            return False
        return shapiro_w(state.distances) < ref.prada_delta


def set_cap(reference: MonitorReference, labels: Sequence[str], width: int) -> int:
    """Rows each class's PRADA set keeps: ``prada_set_cap``, fewer when the sets of ``labels``
    would take the state past ``state_bytes`` once its windows are full (one byte a coordinate,
    ``state.plateau_bytes``); at least one row."""
    rest = plateau_bytes(window=reference.window, prada_window=reference.prada_window,
                         labels=labels)  # fmt: skip
    fits = (reference.state_bytes - rest) // max(1, len(labels) * width)
    return max(1, min(reference.prada_set_cap, fits))


def _trim_sets(state: DetectorState, reference: MonitorReference) -> None:
    # A new class shares the budget: every set keeps its newest rows within the new cap.
    width = next(iter(state.class_sets.values())).shape[1]
    cap = set_cap(reference, list(state.class_sets), width)
    for label, rows in state.class_sets.items():
        if rows.shape[0] > cap:
            state.class_sets[label] = rows[-cap:]


def _fit(state: DetectorState, reference: MonitorReference) -> None:
    # A state read from an earlier layout (or under a reference with other bounds) is brought
    # within this reference's windows and caps before it is used.
    for window, size in ((state.off_bits, reference.window), (state.low_bits, reference.window),
                         (state.distances, reference.prada_window)):  # fmt: skip
        if len(window) > size:
            del window[: len(window) - size]
    if state.class_sets:
        _trim_sets(state, reference)


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
