"""What a `refuse` refusal tells a label-only key: squeezing refusals as a boundary oracle.

Under ``SECURITY_SQUEEZE_POLICY=refuse`` a row whose raw and squeezed predictions disagree is
refused (422 ``input_refused``). A label-only key otherwise learns one label per row; the refusal
is a second signal, and it marks rows the model is unsure of. This module measures how much: for
each model, the attacker's candidate rows (the held-out rows and as many drawn uniformly inside
the feature envelope) are passed through the real ``security.defences.Squeezer`` with the
model's shipped calibration, and the refusal bit is set against the model's margin (top-1 minus
top-2 probability of the raw answer, the usual proxy for distance to the decision boundary).

Reported per model: the refusal rate; the rate among low-margin rows (margin < 0.2) and among the
rest, with Wilson 95% intervals; the ROC AUC of the refusal bit as a detector of low-margin rows
(0.5 leaks nothing, 1.0 is a perfect oracle); and the mutual information between the two bits
in bits per query. Run: ``mlmoat redteam leak [--quick]``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

LOW_MARGIN = 0.2


def wilson(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion (``(0, 1)`` for no trials)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    )
    return max(0.0, centre - half), min(1.0, centre + half)


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each row."""
    ordered = np.sort(np.asarray(probabilities, dtype=np.float64), axis=1)
    return np.asarray(ordered[:, -1] - ordered[:, -2])


def binary_auc(predicted: np.ndarray, actual: np.ndarray) -> float:
    """ROC AUC of a 0/1 detector: P(a positive scores above a negative), ties counted half."""
    predicted, actual = np.asarray(predicted, dtype=bool), np.asarray(actual, dtype=bool)
    positives, negatives = int(actual.sum()), int((~actual).sum())
    if positives == 0 or negatives == 0:
        return 0.5
    tpr = float((predicted & actual).sum()) / positives
    fpr = float((predicted & ~actual).sum()) / negatives
    return 0.5 * (1.0 + tpr - fpr)


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information of two bits, in bits, from their joint frequencies."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = a.size
    if total == 0:
        return 0.0
    information = 0.0
    for x in (False, True):
        for y in (False, True):
            joint = float(((a == x) & (b == y)).sum()) / total
            if joint > 0:
                information += joint * math.log2(joint / ((a == x).mean() * (b == y).mean()))
    return max(0.0, information)


def leak_figures(refused: np.ndarray, margin: np.ndarray) -> dict[str, Any]:
    """The report's figures for one model from the refusal bits and the margins."""
    refused = np.asarray(refused, dtype=bool)
    low = np.asarray(margin) < LOW_MARGIN

    def rate(mask: np.ndarray) -> dict[str, Any]:
        k, n = int((refused & mask).sum()), int(mask.sum())
        lo, hi = wilson(k, n)
        return {"refused": k, "rows": n, "rate": k / n if n else 0.0, "ci95": [lo, hi]}

    return {
        "rows": int(refused.size),
        "overall": rate(np.ones_like(refused)),
        "low_margin": rate(low),
        "other": rate(~low),
        "auc_low_margin": binary_auc(refused, low),
        "mutual_information_bits": mutual_information(refused, low),
    }


def measure(model_dir: Path, name: str, *, uniform_rows: int, seed: int) -> dict[str, Any]:
    """The figures for model ``name``: the real squeezer under its shipped calibration.

    Under ``refuse`` a one-row request is refused exactly when ``flag`` marks the row (the same
    ``Squeezer.check``), so the ``flag`` mask is the refusal bit of each row asked alone.
    """
    from mlmoat.redteam.cases import load_cases
    from security.defences import Squeezer
    from security.model import ModelRegistry

    registry = ModelRegistry.load(str(model_dir))
    served = registry.get(name)
    (case,) = load_cases(model_dir, [name])
    squeezer = Squeezer.from_manifest(model_dir, [(name, served.version)], policy="flag")
    rng = np.random.default_rng(seed)
    uniform = case.domain.snap(
        rng.uniform(case.lower, case.upper, size=(uniform_rows, case.lower.size))
    )
    rows = np.vstack([case.x_test, uniform])
    result = squeezer.check(served, rows)
    raw = np.asarray(served.predict_proba(rows), dtype=np.float64)
    figures = leak_figures(result.flagged_mask, margins(raw))
    figures["model"] = name
    figures["held_out_rows"] = int(case.x_test.shape[0])
    figures["uniform_rows"] = uniform_rows
    return figures


def render(results: list[dict[str, Any]], *, refusal_limit: int = 100) -> str:
    """The table, and what it means under the refusal allowance."""
    lines = [
        "Squeezing refusals as a boundary oracle (label-only keys, SqueezePolicy=refuse)",
        "",
        "| model | rows | refused | refused, margin < 0.2 | refused, margin >= 0.2 "
        "| AUC for low margin | bits per query |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(part: dict[str, Any]) -> str:
        lo, hi = part["ci95"]
        return f"{part['rate']:.3f} [{lo:.3f}, {hi:.3f}] ({part['refused']}/{part['rows']})"

    for r in results:
        lines.append(
            f"| {r['model']} | {r['rows']} | {cell(r['overall'])} | {cell(r['low_margin'])} "
            f"| {cell(r['other'])} | {r['auc_low_margin']:.3f} "
            f"| {r['mutual_information_bits']:.4f} |"
        )
    lines += [
        "",
        f"Each refusal spends one of {refusal_limit} per principal per hour "
        "(SECURITY_REFUSAL_LIMIT), and the extraction monitor flags a principal at 30 refused "
        "of its last 100 requests to a model.",
    ]
    return "\n".join(lines)
