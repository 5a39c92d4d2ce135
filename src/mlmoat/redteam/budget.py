"""The per-principal budget that keeps an adaptive extraction below a fidelity the operator accepts.

The adaptive attacker (``traffic.data_rows``) queries rows like the model's own data, so the
monitor's off-manifold detectors see nothing unusual and only the budget (rows a principal may
ever predict) limits it. ``recommend`` measures the attacker's surrogate fidelity (label agreement
with the served model on held-out rows) after each row count, over several seeds, under the
output policy the operator serves, and returns the largest count at which the worst seed's
fidelity is still below ``max_fidelity``: a budget no higher than that keeps a one-key clone
below it. When even the smallest count reaches it, no budget protects the model (its decision
rule is learnt from a handful of rows) and the answer says so.
"""

from __future__ import annotations

from typing import Any

from mlmoat.redteam import attacks
from mlmoat.redteam.cases import ModelCase
from mlmoat.redteam.target import ServedTarget

COUNTS = (5, 10, 20, 50, 100, 200, 500, 1000, 2000)
SEEDS = 5
POLICIES = ("label", "probabilities:2")


def adaptive_curve(
    case: ModelCase, *, policy: str, seeds: int, seed: int, counts: tuple[int, ...] = COUNTS
) -> dict[str, Any]:
    """Worst-seed surrogate fidelity after each of ``counts`` adaptive queries."""
    counts_list = list(counts)
    key = "label" if policy == "label" else "probabilities"
    runs = [
        attacks.extraction_curve(ServedTarget(case, policy), "adaptive", counts_list, seed + s)[key]
        for s in range(seeds)
    ]
    worst = [max(run[i] for run in runs) for i in range(len(counts_list))]
    return {"counts": counts_list, "worst_fidelity": worst, "seeds": seeds, "policy": policy}


def recommend(
    case: ModelCase,
    *,
    max_fidelity: float,
    policy: str = "label",
    seeds: int = SEEDS,
    seed: int = 0,
) -> dict[str, Any]:
    """The budget (rows per principal) below which the adaptive clone stays under
    ``max_fidelity``; ``budget`` None when no measured count keeps it there."""
    if not 0 < max_fidelity <= 1:
        raise ValueError("max_fidelity must be in (0, 1]")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}")
    curve = adaptive_curve(case, policy=policy, seeds=seeds, seed=seed)
    # The largest count below the goal such that every smaller count is below it too.
    budget = None
    for count, fid in zip(curve["counts"], curve["worst_fidelity"], strict=True):
        if fid >= max_fidelity:
            break
        budget = count
    return {
        "model": case.name,
        "max_fidelity": max_fidelity,
        "output_policy": policy,
        "budget": budget,
        "curve": dict(zip(map(str, curve["counts"]), curve["worst_fidelity"], strict=True)),
        "seeds": seeds,
        "note": (
            f"a budget of at most {budget} rows per principal keeps an adaptive clone below "
            f"{max_fidelity:.0%} agreement (worst of {seeds} seeds)"
            if budget is not None
            else f"no budget protects this model: {curve['counts'][0]} adaptive rows already give "
            f"a clone {curve['worst_fidelity'][0]:.0%} agreement (label-only output and the "
            "extraction monitor do not stop an attacker with in-distribution data)"
        ),
    }
