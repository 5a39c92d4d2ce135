"""The adaptive attacker and the budget that keeps its clone below a fidelity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlmoat.redteam.budget import recommend
from mlmoat.redteam.cases import load_cases
from mlmoat.redteam.traffic import data_rows

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def iris():  # type: ignore[no-untyped-def]
    (case,) = load_cases(MODELS, ["iris"])
    return case


def test_adaptive_rows_follow_the_data_inside_what_validation_accepts(iris) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    rows = data_rows(iris.x_test, iris.y_test, iris.domain, 3000, rng)
    domain = iris.domain
    assert (rows >= domain.lower - domain.margin * domain.width - 1e-12).all()
    assert (rows <= domain.upper + domain.margin * domain.width + 1e-12).all()
    # near the data: each feature's mean and spread close to the held-out rows', unlike uniform
    assert np.abs(rows.mean(axis=0) - iris.x_test.mean(axis=0)).max() < 0.25 * domain.width.max()
    served = iris.predict_proba(rows).argmax(axis=1)
    shares = np.bincount(served, minlength=3) / len(served)
    held_out = np.bincount(iris.label_index(iris.y_test), minlength=3) / len(iris.y_test)
    assert np.abs(shares - held_out).max() < 0.08


def test_the_budget_is_the_largest_count_whose_clone_stays_below_the_goal(iris) -> None:  # type: ignore[no-untyped-def]
    result = recommend(iris, max_fidelity=0.9, policy="label", seeds=3)
    curve = {int(k): v for k, v in result["curve"].items()}
    counts = sorted(curve)
    budget = result["budget"]
    assert budget is not None and "at most" in result["note"]
    below = [c for c in counts if c <= budget]
    assert all(curve[c] < 0.9 for c in below)
    above = [c for c in counts if c > budget]
    assert above and curve[above[0]] >= 0.9
    # a goal no count reaches below: no budget protects, and the answer says so
    hopeless = recommend(iris, max_fidelity=min(curve.values()) - 0.01, policy="label", seeds=3)
    assert hopeless["budget"] is None and "no budget protects" in hopeless["note"]
    with pytest.raises(ValueError):
        recommend(iris, max_fidelity=1.5)
