"""Adversarial-input defence: feature squeezing and squeezed-vs-raw disagreement detection.

Every input row is snapped to a per-feature grid derived from the model's training envelope
(``step_j = (max_j - min_j) / levels``), and the model predicts on the squeezed row. A small
adversarial perturbation (HopSkipJump and friends move each feature by a few percent of its range)
usually lands in the same grid cell as the clean row, so the squeezed prediction ignores it. The
L1 distance between the raw and the squeezed probability vectors scores each row (Xu et al., 2018,
"Feature Squeezing"); a row scoring above the model's calibrated threshold is *flagged*.

The grid and the threshold are calibrated per model on held-out data by ``mlmoat redteam
calibrate`` and shipped beside the artifact as ``models/<name>/defences.json``. That file names the
model version it was calibrated for; a file for another version is refused at cold start
(``ModelIntegrityError``), so a retrained model cannot be served with a stale calibration.

Policy (``Settings.squeeze_policy``, overridden per request by the runtime document of
``security.runtime_config`` through ``Squeezer.with_policy``):

- ``off``: rows are predicted as sent, nothing is scored.
- ``flag``: squeezed rows are predicted; flagged rows are reported (the caller audits them).
- ``refuse``: as ``flag``, but a request with any flagged row raises ``AdversarialInputError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from security.errors import AdversarialInputError, ModelIntegrityError

DEFENCES_FILE = "defences.json"
SQUEEZE_POLICIES = ("off", "flag", "refuse")

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class ProbabilisticModel(Protocol):
    """What squeezing needs from a served model (``security.model.ServedModel`` fits)."""

    @property
    def name(self) -> str:
        """The model's name."""
        ...

    def predict_proba(self, rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Class probabilities, shape (n, k)."""
        ...


@dataclass(frozen=True, slots=True)
class SqueezeConfig:
    """One model's squeezing grid (origin and step per feature) and its detection threshold."""

    model: str
    model_version: str
    origin: tuple[float, ...]
    step: tuple[float, ...]
    threshold: float

    @property
    def n_features(self) -> int:
        """The number of features the grid covers."""
        return len(self.origin)

    @classmethod
    def from_envelope(
        cls,
        *,
        model: str,
        model_version: str,
        lower: Sequence[float],
        upper: Sequence[float],
        levels: int,
        threshold: float,
    ) -> SqueezeConfig:
        """A grid of ``levels`` cells per feature across the envelope ``[lower, upper]``.

        Raises:
            ValueError: the envelope or the level count is malformed.
        """
        if levels < 1 or len(lower) != len(upper) or not lower:
            raise ValueError("levels must be >= 1 and the envelope non-empty")
        steps = []
        for low, high in zip(lower, upper, strict=True):
            width = float(high) - float(low)
            if not math.isfinite(width) or width < 0:
                raise ValueError("envelope bounds must be finite with min <= max")
            # A constant feature keeps a unit step so snapping never divides by zero.
            steps.append(width / levels if width > 0 else 1.0)
        return cls(model, model_version, tuple(float(v) for v in lower), tuple(steps), threshold)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SqueezeConfig:
        """Parse the ``squeeze`` section of ``defences.json``.

        Raises:
            ValueError: a field is missing or malformed.
        """
        try:
            origin = tuple(float(v) for v in data["origin"])
            step = tuple(float(v) for v in data["step"])
            threshold = float(data["threshold"])
            model = str(data["model"])
            version = str(data["model_version"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed squeeze section: {exc}") from exc
        if len(origin) != len(step) or not origin:
            raise ValueError("origin and step must have the same, non-zero length")
        if not all(math.isfinite(v) for v in origin) or not all(
            math.isfinite(v) and v > 0 for v in step
        ):
            raise ValueError("origin must be finite and every step finite and positive")
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 2.0):
            raise ValueError("threshold must be an L1 distance in [0, 2]")
        return cls(model, version, origin, step, threshold)

    def to_dict(self) -> dict[str, Any]:
        """The ``squeeze`` section of ``defences.json``."""
        return {
            "model": self.model,
            "model_version": self.model_version,
            "origin": list(self.origin),
            "step": list(self.step),
            "threshold": self.threshold,
        }

    def squeeze(self, rows: npt.NDArray[Any]) -> FloatArray:
        """Snap each feature to the nearest grid point."""
        origin = np.asarray(self.origin, dtype=np.float64)
        step = np.asarray(self.step, dtype=np.float64)
        values = np.asarray(rows, dtype=np.float64)
        result: FloatArray = origin + np.round((values - origin) / step) * step
        return result


@dataclass(frozen=True, slots=True)
class SqueezeResult:
    """The outcome of ``Squeezer.check`` for one request.

    ``squeezed_rows`` are the rows to predict on (the raw rows when the policy is ``off``),
    ``probabilities`` the model's answer on them (so the caller need not predict again),
    ``scores`` the L1 raw-vs-squeezed disagreement per row and ``flagged_mask`` which rows
    scored above the threshold.
    """

    squeezed_rows: FloatArray
    flagged_mask: BoolArray
    scores: FloatArray
    probabilities: FloatArray

    @property
    def flagged(self) -> int:
        """How many rows were flagged."""
        return int(self.flagged_mask.sum())


class Squeezer:
    """Feature squeezing and disagreement detection for every served model."""

    def __init__(self, configs: Mapping[str, SqueezeConfig], *, policy: str) -> None:
        """Hold one calibrated ``SqueezeConfig`` per model name and the policy.

        Raises:
            ValueError: the policy is not one of ``off``, ``flag``, ``refuse``.
        """
        if policy not in SQUEEZE_POLICIES:
            raise ValueError(f"squeeze policy must be one of {', '.join(SQUEEZE_POLICIES)}")
        self._configs = dict(configs)
        self.policy = policy
        self._views: dict[str, Squeezer] = {}

    @classmethod
    def from_manifest(
        cls,
        model_dir: str | Path,
        models: Iterable[tuple[str, str]],
        *,
        policy: str,
        failures: dict[str, ModelIntegrityError] | None = None,
    ) -> Squeezer:
        """Load ``<model_dir>/<name>/defences.json`` for each ``(name, version)`` served.

        With ``failures``, a model whose file fails is recorded there (name -> the error) and
        left out, and the others are loaded: the caller stops serving that model alone.

        Raises:
            ModelIntegrityError: (without ``failures``) a model's file is missing (unless the
                policy is ``off``), is malformed, or was calibrated for another model version.
            ValueError: the policy is unknown.
        """
        if policy not in SQUEEZE_POLICIES:
            raise ValueError(f"squeeze policy must be one of {', '.join(SQUEEZE_POLICIES)}")
        configs: dict[str, SqueezeConfig] = {}
        for name, version in models:
            try:
                config = squeeze_config(model_dir, name, version, required=policy != "off")
            except ModelIntegrityError as exc:
                if failures is None:
                    raise
                failures[name] = exc
                continue
            if config is not None:
                configs[name] = config
        return cls(configs, policy=policy)

    def with_policy(self, policy: str) -> Squeezer:
        """This squeezer (same calibrations) under ``policy``: the runtime policy of a request.

        Raises:
            ValueError: the policy is not one of ``off``, ``flag``, ``refuse``.
        """
        if policy == self.policy:
            return self
        view = self._views.get(policy)
        if view is None:
            view = self._views[policy] = Squeezer(self._configs, policy=policy)
        return view

    def config(self, model: str) -> SqueezeConfig | None:
        """The squeezing configuration of ``model``, if it has one."""
        return self._configs.get(model)

    def check(self, model: ProbabilisticModel, rows: npt.NDArray[Any]) -> SqueezeResult:
        """Squeeze ``rows``, predict raw and squeezed in one call, score and flag each row.

        Raises:
            AdversarialInputError: the policy is ``refuse`` and at least one row is flagged.
            ModelIntegrityError: the policy is not ``off`` and the model has no calibration.
        """
        raw = np.asarray(rows, dtype=np.float64)
        if raw.ndim == 1:
            raw = raw.reshape(1, -1)
        count = raw.shape[0]
        if self.policy == "off":
            probabilities = np.asarray(model.predict_proba(raw), dtype=np.float64)
            return SqueezeResult(
                raw, np.zeros(count, dtype=np.bool_), np.zeros(count), probabilities
            )
        config = self._configs.get(model.name)
        if config is None:
            raise ModelIntegrityError("defences_missing", detail=f"model={model.name}")
        squeezed = config.squeeze(raw)
        both = np.asarray(model.predict_proba(np.vstack([raw, squeezed])), dtype=np.float64)
        raw_p, squeezed_p = both[:count], both[count:]
        scores = np.abs(raw_p - squeezed_p).sum(axis=1)
        flagged = scores > config.threshold
        if self.policy == "refuse" and bool(flagged.any()):
            raise AdversarialInputError(detail=f"rows_flagged={int(flagged.sum())}")
        return SqueezeResult(squeezed, flagged, scores, squeezed_p)


@dataclass(frozen=True, slots=True)
class Defences:
    """The parsed ``defences.json`` of one model: the squeezing grid and the monitor reference."""

    squeeze: SqueezeConfig
    monitor: Mapping[str, Any]
    calibration: Mapping[str, Any]


def load_defences(path: str | Path) -> Defences:
    """Read and validate one ``defences.json``.

    Raises:
        ModelIntegrityError: the file cannot be read or is malformed.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("root must be an object")
        squeeze = SqueezeConfig.from_dict(data["squeeze"])
        monitor = data.get("monitor", {})
        calibration = data.get("calibration", {})
        if not isinstance(monitor, dict) or not isinstance(calibration, dict):
            raise ValueError("monitor and calibration must be objects")
    except (OSError, KeyError, ValueError) as exc:
        raise ModelIntegrityError("defences_malformed", detail=str(Path(path).name)) from exc
    return Defences(squeeze, monitor, calibration)


def squeeze_config(
    model_dir: str | Path, name: str, version: str, *, required: bool
) -> SqueezeConfig | None:
    """The squeezing calibration of model ``name`` at ``version`` (None: no file, not required).

    Raises:
        ModelIntegrityError: the file is missing while ``required`` (``defences_missing``), is
            malformed (``defences_malformed``) or was calibrated for another model or version
            (``defences_version_mismatch``).
    """
    path = Path(model_dir) / name / DEFENCES_FILE
    if not path.is_file():
        if not required:
            return None
        raise ModelIntegrityError("defences_missing", detail=f"model={name}")
    config = load_defences(path).squeeze
    if config.model != name or config.model_version != version:
        raise ModelIntegrityError("defences_version_mismatch", detail=f"model={name}")
    return config
