"""The robustness table's statistics: Wilson intervals against published values, the target."""

from __future__ import annotations

from typing import Any

import pytest

from mlmoat.redteam.robustness import best, target, wilson


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I,
        # method 3 (Wilson score, no continuity correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0000, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_published_values(
    successes: int, trials: int, low: float, high: float
) -> None:
    interval = wilson(successes, trials)
    assert interval == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_is_inside_unit_range_and_refuses_nonsense() -> None:
    assert wilson(200, 200)[1] == 1.0 and wilson(0, 200)[0] == 0.0
    with pytest.raises(ValueError):
        wilson(3, 0)
    with pytest.raises(ValueError):
        wilson(5, 4)


def _row(successes: int, rows: int, accuracy: float) -> dict[str, Any]:
    return {
        "successes": successes,
        "rows": rows,
        "success_rate": successes / rows,
        "success_ci": wilson(successes, rows),
        "accuracy": accuracy,
    }


def test_target_is_judged_on_the_intervals_within_the_accuracy_cost() -> None:
    table = {
        "none": _row(50, 200, 0.98),
        # the lowest rate, but 4 points of accuracy: not eligible
        "squeeze refuse": _row(0, 200, 0.94),
        "adversarial training": _row(10, 200, 0.965),
    }
    chosen = best(table)
    assert chosen is not None and chosen[0] == "adversarial training"
    assert target("m", table)["met"] is True
    # an overlap of the intervals misses, even at half the rate
    table["none"] = _row(20, 200, 0.98)
    table["adversarial training"] = _row(5, 100, 0.98)
    assert table["adversarial training"]["success_ci"][1] > table["none"]["success_ci"][0]
    assert target("m", table)["met"] is False
    # fewer rows than the full run decide nothing
    small = {"none": _row(5, 30, 0.98), "smoothing": _row(0, 30, 0.98)}
    assert target("m", small)["met"] is None
