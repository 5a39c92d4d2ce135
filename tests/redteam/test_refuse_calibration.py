"""The shipped squeezing thresholds keep the ``refuse`` policy's accuracy cost within 2 points.

Calibration (``mlmoat.redteam.calibrate.calibrate_squeeze``) picks each model's detection
threshold as the lowest benign-score quantile at which refusing costs at most
``MAX_ACCURACY_DROP`` of held-out accuracy. Checked here through the serving code itself (the
real ``Squeezer`` under ``refuse``, one row per request as a client sends them): a refused row
counts as a wrong answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlmoat.redteam.calibrate import MAX_ACCURACY_DROP
from mlmoat.redteam.cases import load_cases
from mlmoat.redteam.target import ServedTarget
from security.defences import load_defences

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("name", ["iris", "breast-cancer", "breast-cancer-forest"])
def test_refusing_disagreeing_rows_costs_at_most_two_points_of_accuracy(name: str) -> None:
    (case,) = load_cases(MODELS, [name])
    squeeze = load_defences(MODELS / name / "defences.json").squeeze
    raw = ServedTarget(case, "label", batch_rows=1)
    refuse = ServedTarget(case, "label", squeeze_policy="refuse", squeeze=squeeze, batch_rows=1)
    truth = case.label_index(case.y_test)
    raw_accuracy = float((raw.labels(case.x_test) == truth).mean())
    refuse_accuracy = float((refuse.labels(case.x_test) == truth).mean())
    assert refuse_accuracy >= raw_accuracy - MAX_ACCURACY_DROP, (raw_accuracy, refuse_accuracy)
    # and the detector still refuses something: a threshold above every score would pass this
    assert refuse.refused > 0 or name == "iris"
