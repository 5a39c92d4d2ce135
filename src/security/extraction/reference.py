"""The detectors' calibrated parameters: ``MonitorReference`` and ``load_monitor_references``.

Each model's reference is the ``monitor`` section of its defences.json, written by
``mlmoat redteam calibrate`` on benign held-out traffic and checked against the manifest beside it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from security.errors import ModelIntegrityError
from security.extraction.message import FloatArray
from security.extraction.state import STATE_VERSION

_LOG = logging.getLogger(__name__)


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
    prada_window: int = 200
    prada_set_cap: int = 128
    #: Bytes a principal's whole state may take at its plateau: PRADA's sets get what the rest
    #: leaves (one byte a coordinate; ``detectors.set_cap``), so the item stays under 1 KB.
    state_bytes: int = 880
    window: int = 200
    min_rows: int = 20
    alpha: float = 1e-7
    #: The state layout (``state.STATE_VERSION``) PRADA's delta was calibrated on. A reference
    #: calibrated on another one keeps its other detectors and runs PRADA disabled (its W on this
    #: layout's sets and distances is not what the delta was set below): ``prada_stale``.
    state_layout: int = STATE_VERSION

    @property
    def prada_stale(self) -> bool:
        """PRADA was calibrated on another state layout: it never fires until recalibrated."""
        return self.state_layout != STATE_VERSION

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
                prada_window=int(data.get("prada_window", 200)),
                prada_set_cap=int(data.get("prada_set_cap", 128)),
                state_bytes=int(data.get("state_bytes", 880)),
                window=int(data.get("window", 200)),
                min_rows=int(data.get("min_rows", 20)),
                alpha=float(data.get("alpha", 1e-7)),
                # Written since version 3; a section without it was calibrated on version 2.
                state_layout=int(data.get("state_layout", 2)),
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
        if not 256 <= ref.state_bytes <= 65536:
            raise ValueError("state_bytes must be between 256 and 65536")
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
            "state_bytes": self.state_bytes,
            "window": self.window,
            "min_rows": self.min_rows,
            "alpha": self.alpha,
            "state_layout": self.state_layout,
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


def load_monitor_references(
    model_dir: str | Path, *, unavailable: dict[str, ModelIntegrityError] | None = None
) -> dict[str, MonitorReference]:
    """The monitor reference of every model in ``model_dir`` that ships a defences.json.

    With ``unavailable``, each model directory is loaded on its own: one without a reference
    (no defences.json, ``defences_missing``) or whose reference fails (below) is recorded there
    and left out, and the others are loaded (the monitor acknowledges and audits that model's
    messages instead of failing them all).

    Raises:
        ModelIntegrityError: (without ``unavailable``) a defences.json is malformed or
            calibrated for another version of its model than the manifest beside it.
    """
    from security.defences import DEFENCES_FILE

    root = Path(model_dir)
    references: dict[str, MonitorReference] = {}
    directories = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for directory in directories:
        name, path = directory.name, directory / DEFENCES_FILE
        try:
            if not path.is_file():
                if unavailable is None:
                    continue
                raise ModelIntegrityError("defences_missing", detail=f"model={name}")
            references[name] = load_monitor_reference(path, name)
        except ModelIntegrityError as exc:
            if unavailable is None:
                raise
            unavailable[name] = exc
    return references


def load_monitor_reference(path: Path, name: str) -> MonitorReference:
    """The monitor reference in one model's defences.json, checked against its manifest.

    Raises:
        ModelIntegrityError: the file or its ``monitor`` section is malformed, or it was
            calibrated for another version of the model than the manifest beside it.
    """
    from security.defences import load_defences

    defences = load_defences(path)
    try:
        manifest = json.loads((path.parent / "manifest.json").read_text(encoding="utf-8"))
        version = str(manifest["version"])
        reference = MonitorReference.from_dict(name, defences.monitor)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ModelIntegrityError("defences_malformed", detail=f"model={name}") from exc
    if defences.squeeze.model_version != version:
        raise ModelIntegrityError("defences_version_mismatch", detail=f"model={name}")
    if reference.prada_stale:
        _LOG.warning(
            "monitor_reference_stale",
            extra={"model": name, "state_layout": reference.state_layout, "prada": "disabled"},
        )
    return reference
