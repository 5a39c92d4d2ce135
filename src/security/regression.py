"""Regressors on the request path: squeezing by value, and the output policies that fit them.

A regressor (``Manifest.kind == "regressor"``) answers one value per row. What the input
defences and the output policy do with it:

* **Squeezing** (``serve_values``): the same per-feature grid as a classifier's
  (``security.defences.SqueezeConfig``), but a row's score is how far its value moves when the
  row is squeezed, relative to the spread of the training target (``|f(x) - f(squeeze(x))| /
  (max - min)``, capped at 2, so the defences file's ``[0, 2]`` threshold range holds). The
  threshold is calibrated on benign held-out rows (``mlmoat.models_regress``). ``flag`` serves
  the squeezed row's value and reports the row; ``refuse`` refuses the request.
* **Smoothing** does not apply: certified input smoothing is a vote over classes (HopSkipJump,
  the attack it answers, needs a decision boundary).
* **Output** (``apply_value_policy``): the regressor view of the caller's policy
  (``OutputPolicy.for_regressor``): ``value:N`` answers ``{"value": v}`` rounded at the N-th
  significant digit of the training target range (range 321: ``value:2`` rounds to tens,
  ``value:6`` to thousandths; one step for every value, so the order by resolution in
  ``security.policy`` holds on every model); ``buckets:K`` answers
  ``{"bucket": {"low": a, "high": b}}``, one of K equal-width buckets over the training target
  range (a value beyond the range answers the extreme bucket); ``label`` is ``buckets:1``, the
  training range itself.

numpy only; never raises for a row's content beyond the documented errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from security.errors import AdversarialInputError, ModelIntegrityError
from security.policy import OutputPolicy

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
#: A score is capped here: a value that moves by twice the target's range is as bad as it gets.
MAX_SCORE = 2.0


class ValueModel(Protocol):
    """What serving a regressor needs from a served model (``security.model.ServedModel``)."""

    @property
    def name(self) -> str:
        """The model's name."""
        ...

    def predict_values(self, rows: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """One value per row."""
        ...


class SqueezeGrid(Protocol):
    """What ``serve_values`` needs of the squeezer (``security.defences.Squeezer``)."""

    policy: str

    def config(self, model: str) -> Any:
        """The model's ``SqueezeConfig`` (None: not calibrated)."""
        ...


@dataclass(frozen=True, slots=True)
class ServedValues:
    """What the defences decided for one request's rows of a regressor."""

    values: FloatArray
    flagged: int
    scores: FloatArray
    #: The training target's (min, max): what the output policy answers over.
    target_range: tuple[float, float]


def relative_scores(raw: FloatArray, squeezed: FloatArray, spread: float) -> FloatArray:
    """``|raw - squeezed| / spread`` per row, capped at ``MAX_SCORE``."""
    width = spread if spread > 0 else 1.0
    result: FloatArray = np.minimum(np.abs(raw - squeezed) / width, MAX_SCORE)
    return result


def serve_values(
    model: ValueModel,
    rows: npt.NDArray[Any],
    *,
    squeezer: SqueezeGrid | None,
    target_range: tuple[float, float],
) -> ServedValues:
    """Run squeezing (when on) and the regressor on one request's rows: one model call.

    Raises:
        AdversarialInputError: the squeeze policy is ``refuse`` and a row is flagged.
        ModelIntegrityError: squeezing is on and the model has no calibration
            (``defences_missing``), or the graph answered a non-finite value.
    """
    raw = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    count = raw.shape[0]
    if squeezer is None or squeezer.policy == "off":
        values = _finite(model, np.asarray(model.predict_values(raw), dtype=np.float64))
        return ServedValues(values, 0, np.zeros(count), target_range)
    config = squeezer.config(model.name)
    if config is None:
        raise ModelIntegrityError("defences_missing", detail=f"model={model.name}")
    both = np.asarray(model.predict_values(np.vstack([raw, config.squeeze(raw)])), np.float64)
    raw_v, squeezed_v = both[:count], _finite(model, both[count:])
    scores = relative_scores(raw_v, squeezed_v, target_range[1] - target_range[0])
    flagged = scores > config.threshold
    if squeezer.policy == "refuse" and bool(flagged.any()):
        raise AdversarialInputError(detail=f"rows_flagged={int(flagged.sum())}")
    return ServedValues(squeezed_v, int(flagged.sum()), scores, target_range)


def _finite(model: ValueModel, values: FloatArray) -> FloatArray:
    # A graph that answers inf or NaN inside its envelope is broken, not the caller's fault.
    if not bool(np.isfinite(values).all()):
        raise ModelIntegrityError("model_output_invalid", detail=f"model={model.name}")
    return values


def significant(value: float, digits: int) -> float:
    """``value`` rounded to ``digits`` significant digits."""
    if value == 0:
        return 0.0
    return float(f"{value:.{digits}g}")


def rounding_step(digits: int, spread: float) -> float:
    """The step of ``value:N``: the N-th significant digit of the target range ``spread``."""
    magnitude = math.floor(math.log10(spread)) if spread > 0 else 0
    return float(10.0 ** (magnitude - digits + 1))


def round_value(value: float, digits: int, spread: float) -> float:
    """``value`` rounded to a multiple of ``rounding_step`` (as a float without binary noise)."""
    step = rounding_step(digits, spread)
    places = max(0, -math.floor(math.log10(step)))
    return round(round(value / step) * step, places) + 0.0


def bucket_bounds(value: float, buckets: int, low: float, high: float) -> tuple[float, float]:
    """The bounds of the one of ``buckets`` equal-width buckets over ``[low, high]`` holding
    ``value`` (clipped into the range), as floats rounded to 6 significant digits."""
    width = (high - low) / buckets
    index = min(buckets - 1, max(0, math.floor((value - low) / width))) if width > 0 else 0
    start = low + index * width
    end = high if index == buckets - 1 else low + (index + 1) * width
    return significant(start, 6), significant(end, 6)


def apply_value_policy(
    policy: OutputPolicy, values: FloatArray, target_range: tuple[float, float]
) -> list[dict[str, Any]]:
    """Turn a regressor's raw values into the predictions a caller may see (module docstring)."""
    view = policy.for_regressor()
    low, high = target_range
    predictions: list[dict[str, Any]] = []
    for value in np.asarray(values, dtype=np.float64).reshape(-1).tolist():
        if view.digits is not None:
            predictions.append({"value": round_value(value, view.digits, high - low)})
        else:
            start, end = bucket_bounds(value, view.buckets or 1, low, high)
            predictions.append({"bucket": {"low": start, "high": end}})
    return predictions
