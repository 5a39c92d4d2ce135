"""HopSkipJump ends on a target whose answers change mid-attack (no endless step-size search).

ART's step-size search halves the step until the point it reaches is adversarial, with no bound.
When the target's answer for a point changes between two queries (a key suspended mid-attack,
a refusal, a clipped point that was not the one queried) the search never ends: a red-team run
would query for ever. ``hopskipjump`` gives each row a query allowance and counts the rows that
ran out of it as failed attacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mlmoat.redteam.attacks import hopskipjump, hsj_query_cap
from mlmoat.redteam.cases import load_cases
from mlmoat.redteam.target import ServedTarget

MODELS = Path(__file__).resolve().parents[2] / "models"


@dataclass
class SuspendedMidAttack(ServedTarget):
    """Serves the first ``serve_rows`` rows, then refuses every request (the key was suspended)."""

    serve_rows: int = 0

    def query(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen, served = super().query(rows)
        if self.queries > self.serve_rows:
            served[:] = False
            seen[:] = 0.0
        return seen, served


@pytest.mark.timeout(300)
def test_an_attack_whose_target_stops_answering_ends_with_its_rows_counted_as_capped() -> None:
    # given iris behind probabilities, and a target that stops answering after 150 rows (an
    # attack on one row sends about 250): past the initialisation and into the iterations,
    # where ART's step search has no bound
    (case,) = load_cases(MODELS, ["iris"])
    target = SuspendedMidAttack(case=case, policy="probabilities:2", serve_rows=150)
    # when HopSkipJump attacks one row
    result = hopskipjump(target, rows=1, seed=3, max_iter=3)
    # then it returns: the row ran out of its allowance, it was not fooled, and it sent no more
    # than its cap (and the clean and final queries)
    assert result["capped_rows"] == 1
    assert result["fooled_any_distance"] == 0.0
    assert result["queries"] <= hsj_query_cap(max_iter=3, max_eval=500, init_size=50) + 2


def test_an_attack_on_a_consistent_target_is_never_capped() -> None:
    # given iris behind probabilities with no change of answers
    (case,) = load_cases(MODELS, ["iris"])
    target = ServedTarget(case=case, policy="probabilities:2")
    # when HopSkipJump attacks three rows, then no row reaches its cap
    result = hopskipjump(target, rows=3, seed=3, max_iter=3)
    assert result["capped_rows"] == 0
