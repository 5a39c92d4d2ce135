"""HopSkipJump with a seed gives the same figures every time (the red team is reproducible).

ART's HopSkipJump draws its starting point from ``np.random.RandomState()``, seeded by the
operating system on each call, so the same seed gave other figures on every run (issue: iris
HopSkipJump under ``flag`` 0.07 one run, 0.03 the next). ``attacks.hopskipjump`` draws the start
itself from the seed, for the label ART sees for the row (a smoothed answer can differ between a
float64 row and ART's float32 copy of it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mlmoat.redteam.attacks import hopskipjump
from mlmoat.redteam.cases import load_cases
from mlmoat.redteam.target import ServedTarget
from security.smoothing import load_smoothing

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("smoothed", [False, True], ids=["plain", "smoothed"])
def test_the_same_seed_gives_the_same_attack_twice(smoothed: bool) -> None:
    # given iris served plainly, and with input smoothing (its calibrated sigma and n)
    (case,) = load_cases(MODELS, ["iris"])
    smoothing = load_smoothing(MODELS / "iris" / "defences.json") if smoothed else None
    if smoothing is not None:
        smoothing = dataclasses.replace(smoothing, enabled=True)

    def attack(seed: int) -> dict[str, object]:
        target = ServedTarget(case, "label", smoothing=smoothing)
        return hopskipjump(target, rows=12, seed=seed, max_iter=3)

    # when the same seeded attack runs twice, then every figure is the same
    first, second = attack(5), attack(5)
    assert first == second
    assert first["queries"] > 12  # it did attack
