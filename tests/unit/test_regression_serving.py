"""Squeezing a regressor by value (``security.regression.serve_values``): scores relative to the
training target's range, flag serves the squeezed value, refuse refuses, no calibration fails."""

from __future__ import annotations

import numpy as np
import pytest

from security.defences import SqueezeConfig, Squeezer
from security.errors import AdversarialInputError, ModelIntegrityError
from security.regression import serve_values


class StepModel:
    """A regressor that jumps by 100 where the first feature crosses 0.5."""

    name = "step"

    def predict_values(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(rows)
        return 10.0 * rows[:, 1] + 100.0 * (rows[:, 0] > 0.5)


CONFIG = SqueezeConfig.from_envelope(
    model="step",
    model_version="step-1",
    lower=[0.0, 0.0],
    upper=[1.0, 1.0],
    levels=4,
    threshold=0.1,
)
RANGE = (0.0, 110.0)
# the first row squeezes across the jump (0.52 -> 0.5); the second only moves its second feature
ROWS = np.asarray([[0.52, 0.30], [0.9, 0.30]])


def test_off_serves_the_raw_values() -> None:
    served = serve_values(
        StepModel(), ROWS, squeezer=Squeezer({}, policy="off"), target_range=RANGE
    )
    assert served.values.tolist() == pytest.approx([103.0, 103.0])
    assert served.flagged == 0 and served.target_range == RANGE


def test_flag_serves_squeezed_values_and_scores_relative_to_the_range() -> None:
    squeezer = Squeezer({"step": CONFIG}, policy="flag")
    served = serve_values(StepModel(), ROWS, squeezer=squeezer, target_range=RANGE)
    # squeezed: (0.5, 0.25) -> 2.5 and (1.0, 0.25) -> 102.5
    assert served.values.tolist() == pytest.approx([2.5, 102.5])
    assert served.scores.tolist() == pytest.approx([100.5 / 110.0, 0.5 / 110.0])
    assert served.flagged == 1


def test_refuse_refuses_a_request_with_a_flagged_row_and_no_calibration_fails() -> None:
    with pytest.raises(AdversarialInputError):
        serve_values(
            StepModel(),
            ROWS,
            squeezer=Squeezer({"step": CONFIG}, policy="refuse"),
            target_range=RANGE,
        )
    served = serve_values(
        StepModel(),
        ROWS[1:],
        squeezer=Squeezer({"step": CONFIG}, policy="refuse"),
        target_range=RANGE,
    )
    assert served.flagged == 0
    with pytest.raises(ModelIntegrityError, match="defences_missing"):
        serve_values(StepModel(), ROWS, squeezer=Squeezer({}, policy="flag"), target_range=RANGE)


def test_a_non_finite_value_is_the_models_fault() -> None:
    class Broken(StepModel):
        def predict_values(self, rows: np.ndarray) -> np.ndarray:
            return np.full(np.atleast_2d(rows).shape[0], np.inf)

    with pytest.raises(ModelIntegrityError, match="model_output_invalid"):
        serve_values(Broken(), ROWS, squeezer=None, target_range=RANGE)
