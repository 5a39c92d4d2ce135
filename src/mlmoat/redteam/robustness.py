"""The robustness table: HopSkipJump success and clean accuracy per defence, with 95% intervals.

Each configuration serves one model (the recipe as trained, or its adversarially trained
``<name>-adv`` from ``models-adv/``) through ``ServedTarget`` (the handler's squeezing, smoothing
and output-policy code) with label output, and is measured on the same attacked rows: HopSkipJump
(L-inf, the query cap per row of ``attacks.hsj_query_cap``) succeeds on a row when the answer
changes within 5% of each feature's range. Clean accuracy is over every held-out row, one row per
request, so a row the ``refuse`` policy refuses counts as a wrong answer (that is its cost).

Rates carry 95% Wilson score intervals (Wilson, 1927): unlike the normal approximation they stay
inside [0, 1] and are usable at 0 successes, which is where a good defence lands. The attacked
rows are the held-out rows, topped up with noisy copies of held-out rows (``traffic.benign_rows``)
when a model has fewer held-out rows than the plan asks for; the table says how many of each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from mlmoat.redteam import attacks
from mlmoat.redteam.cases import ModelCase
from mlmoat.redteam.target import ServedTarget
from mlmoat.redteam.traffic import benign_rows
from security.defences import SqueezeConfig
from security.smoothing import SmoothingConfig

Z95 = NormalDist().inv_cdf(0.975)
BUDGET = 0.05
MAX_ACCURACY_COST = 0.02
# The target is judged on at least this many attacked rows (the full run); fewer (``--quick``)
# are reported with their intervals but decide nothing.
MIN_TARGET_ROWS = 200


@dataclass(frozen=True)
class Config:
    """One defence configuration: which model, the squeeze policy, smoothing on or off."""

    adversarial: bool
    squeeze: str
    smoothing: bool


CONFIGS: dict[str, Config] = {
    "none": Config(False, "off", False),
    "squeeze flag": Config(False, "flag", False),
    "squeeze refuse": Config(False, "refuse", False),
    "smoothing": Config(False, "off", True),
    "smoothing + squeeze flag": Config(False, "flag", True),
    "smoothing + squeeze refuse": Config(False, "refuse", True),
    "adversarial training": Config(True, "off", False),
    "adversarial training + squeeze flag": Config(True, "flag", False),
    "adversarial training + squeeze refuse": Config(True, "refuse", False),
    "adversarial training + smoothing": Config(True, "off", True),
}


@dataclass(frozen=True)
class Arms:
    """One model's calibrated input defences (from its ``defences.json``)."""

    squeeze: SqueezeConfig
    smoothing: SmoothingConfig | None


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for ``successes`` out of ``trials`` (95% by default)."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError("need trials > 0 and 0 <= successes <= trials")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def attacked_rows(case: ModelCase, count: int, seed: int) -> tuple[np.ndarray, int]:
    """``count`` rows to attack: held-out rows first, then noisy held-out copies; (rows, real)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(case.x_test.shape[0])
    real = case.x_test[order[:count]]
    missing = count - real.shape[0]
    if missing <= 0:
        return real, real.shape[0]
    extra = benign_rows(case.x_test, case.domain, missing, rng)
    return np.vstack([real, extra]), real.shape[0]


def _target(case: ModelCase, arms: Arms, config: Config, *, batch_rows: int) -> ServedTarget:
    return ServedTarget(
        case,
        "label",
        squeeze_policy=config.squeeze,
        squeeze=arms.squeeze,
        smoothing=arms.smoothing if config.smoothing else None,
        batch_rows=batch_rows,
    )


def measure(
    base: ModelCase,
    base_arms: Arms,
    adversarial: tuple[ModelCase, Arms] | None,
    *,
    rows: int,
    seed: int,
    max_iter: int,
    configs: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Every configuration (of ``configs``, None: all) this model has the pieces for.

    All are measured on the same attacked rows; ``none`` is always measured.
    """
    x, real = attacked_rows(base, rows, seed)
    table: dict[str, Any] = {}
    for name, config in CONFIGS.items():
        if configs is not None and name != "none" and name not in configs:
            continue
        if config.adversarial and adversarial is None:
            continue
        case, arms = adversarial if config.adversarial and adversarial else (base, base_arms)
        if config.smoothing and arms.smoothing is None:
            continue
        hsj = attacks.hopskipjump(
            _target(case, arms, config, batch_rows=100),
            rows=rows,
            seed=seed,
            budget=BUDGET,
            max_iter=max_iter,
            x=x,
        )
        accuracy_target = _target(case, arms, config, batch_rows=1)
        seen, served = accuracy_target.query(case.x_test)
        correct = int(((seen.argmax(axis=1) == case.label_index(case.y_test)) & served).sum())
        n_test = int(case.x_test.shape[0])
        table[name] = {
            **hsj,
            "model": case.name,
            "rows": int(x.shape[0]),
            "held_out_rows": real,
            "successes": hsj["successes"],
            "success_rate": hsj["success_rate"],
            "success_ci": wilson(hsj["successes"], int(x.shape[0])),
            "queries": hsj["queries"],
            "query_cap_per_row": hsj["query_cap_per_row"],
            "capped_rows": hsj["capped_rows"],
            "accuracy": correct / n_test,
            "accuracy_ci": wilson(correct, n_test),
            "accuracy_rows": n_test,
            "sigma": arms.smoothing.sigma if config.smoothing and arms.smoothing else None,
            "n": arms.smoothing.n if config.smoothing and arms.smoothing else None,
        }
    return table


def best(table: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The configuration with the lowest success among those within the accuracy cost."""
    undefended = table["none"]
    allowed = [
        (name, row)
        for name, row in table.items()
        if name != "none" and row["accuracy"] >= undefended["accuracy"] - MAX_ACCURACY_COST
    ]
    if not allowed:
        return None
    return min(allowed, key=lambda item: (item[1]["success_rate"], -item[1]["accuracy"]))


def target(name: str, table: dict[str, Any]) -> dict[str, Any]:
    """Issue 16's target, judged on the intervals, for one model's table."""
    undefended = table["none"]
    base, (low, _) = undefended["success_rate"], undefended["success_ci"]
    chosen = best(table)
    if chosen is None:
        return _row(name, "no defence within 2 points of clean accuracy", False)
    config, row = chosen
    high = row["success_ci"][1]
    figure = (
        f"{config}: {row['success_rate']:.3f} [{row['success_ci'][0]:.3f}, {high:.3f}] vs none "
        f"{base:.3f} [{low:.3f}, {undefended['success_ci'][1]:.3f}]; accuracy "
        f"{row['accuracy']:.3f} vs {undefended['accuracy']:.3f}"
    )
    if base == 0 or undefended["rows"] < MIN_TARGET_ROWS:
        return _row(name, figure, None)
    return _row(name, figure, high < low and row["success_rate"] <= base / 2)


def _row(model: str, figure: str, met: bool | None) -> dict[str, Any]:
    return {
        "model": model,
        "target": "best defence: HopSkipJump CI upper < undefended CI lower, <= half the rate, "
        "accuracy within 2 points",
        "measured": figure,
        "met": met,
    }


def markdown(table: dict[str, Any]) -> list[str]:
    """The robustness table of one model, in Markdown lines."""
    first = next(iter(table.values()))
    lines = [
        f"HopSkipJump (L-inf, label output) on {first['rows']} rows "
        f"({first['held_out_rows']} held-out, the rest noisy held-out copies), success = answer "
        f"changed within {BUDGET:.0%} of each feature's range; query budget "
        f"{first['query_cap_per_row']} per row; clean accuracy on {first['accuracy_rows']} "
        "held-out rows, one per request; 95% Wilson intervals.",
        "",
        "| defence | model | success within 5% | 95% CI | clean accuracy | 95% CI | queries |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        lo, hi = row["success_ci"]
        alo, ahi = row["accuracy_ci"]
        smoothing = f" (sigma {row['sigma']}, n {row['n']})" if row["sigma"] is not None else ""
        lines.append(
            f"| {name}{smoothing} | {row['model']} | {row['successes']}/{row['rows']} = "
            f"{row['success_rate']:.3f} | [{lo:.3f}, {hi:.3f}] | {row['accuracy']:.3f} | "
            f"[{alo:.3f}, {ahi:.3f}] | {row['queries']} |"
        )
    return lines
