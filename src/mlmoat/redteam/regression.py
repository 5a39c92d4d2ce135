"""Regressors under attack: their defences' calibration, extraction fidelity as R^2, MIA, budget.

* **Calibration** (``calibrate_regressor``, run by ``mlmoat models import``): squeezing on the
  coarsest grid whose squeezed values keep held-out R^2 within ``MAX_ACCURACY_DROP`` of the raw
  model's (it and every finer candidate); the threshold on ``|f(x) - f(squeeze(x))| /
  target range`` (``security.regression``) is the lowest of ``SQUEEZE_QUANTILES`` of the scores
  of benign calibration traffic at which ``refuse`` refuses at most ``MAX_ACCURACY_DROP`` of the
  held-out rows. The monitor's reference is fitted on the rows alone (``calibrate_monitor`` with
  one class: its off-manifold and PRADA detectors need no answer; a regressor's queue messages
  carry no label or confidence, so the low-confidence detector never runs). Smoothing is not
  applicable (a vote over classes).
* **Extraction** (``extraction``): a uniform attacker (rows uniform in the envelope) and an
  adaptive one (rows from one Gaussian fitted to the held-out rows) query ``ValueTarget`` (the
  serving code: squeezing, the output policy, the monitor's detector) and fit two surrogates
  (ridge regression and extra trees) on what they see (a bucket's midpoint under ``buckets:K``);
  the fidelity is the better surrogate's R^2 against the served model's values on the held-out
  rows, with a 95% bootstrap interval over those rows, and the monitor's flag row is recorded.
* **Membership inference** (``membership``): the loss attack on squared error (members have
  smaller residuals): AUC of ``-(y - seen)^2`` on training vs held-out rows, with a 95% bootstrap
  interval; 0.5 is chance.
* HopSkipJump is a decision-based attack on classifiers: not applicable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlmoat.redteam.cases import ModelCase
from mlmoat.redteam.traffic import Domain, benign_rows, data_rows, uniform_rows
from security.defences import DEFENCES_FILE, SqueezeConfig, Squeezer, load_defences
from security.errors import AdversarialInputError
from security.extraction import DetectorState, ExtractionDetector, MonitorReference
from security.policy import OutputPolicy
from security.regression import apply_value_policy, relative_scores, serve_values

ValueFn = Callable[[np.ndarray], np.ndarray]
COUNTS = (5, 10, 20, 50, 100, 200, 500, 1000)
QUICK_COUNTS = (10, 50, 200, 500)
BOOTSTRAP = 1000
HOPSKIPJUMP_NOTE = (
    "not applicable: HopSkipJump is a decision-based attack on classifiers (it walks a decision "
    "boundary); a regressor has none, and smoothing (a vote over classes) is off for it"
)


@dataclass(frozen=True)
class RegressorCase:
    """One served regressor, its envelope, target range and the split it was imported with."""

    name: str
    version: str
    lower: np.ndarray
    upper: np.ndarray
    target_range: tuple[float, float]
    predict_values: ValueFn
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    # Indices of the categorical features (values are category indices 0..k-1).
    categorical: tuple[int, ...] = ()

    @property
    def domain(self) -> Domain:
        """The input space as the callers see it (valid category indices only)."""
        std = self.x_train.std(axis=0) + 1e-12
        return Domain(self.lower, self.upper, std, categorical=self.categorical)

    @property
    def category_counts(self) -> dict[int, int]:
        """Each categorical feature's index -> its number of categories."""
        return {j: int(self.upper[j]) + 1 for j in self.categorical}

    def rows_only(self) -> ModelCase:
        """The case as the monitor and the squeezing grid see it: rows, no answers (one class,
        every row "certain"), the same envelope and categorical features."""
        return ModelCase(
            name=self.name,
            version=self.version,
            classes=("_",),
            lower=self.lower,
            upper=self.upper,
            predict_proba=lambda rows: np.ones((np.atleast_2d(rows).shape[0], 1)),
            x_train=self.x_train,
            y_train=np.full(self.x_train.shape[0], "_"),
            x_test=self.x_test,
            y_test=np.full(self.x_test.shape[0], "_"),
            categorical=self.categorical,
        )

    @property
    def spread(self) -> float:
        """The training target's range (squeezing scores are relative to it)."""
        low, high = self.target_range
        return high - low


def r2(reference: np.ndarray, predicted: np.ndarray) -> float:
    """R^2 of ``predicted`` against ``reference``."""
    total = float(((reference - reference.mean()) ** 2).sum())
    if total <= 0:
        return 0.0
    return 1.0 - float(((reference - predicted) ** 2).sum()) / total


def r2_interval(reference: np.ndarray, predicted: np.ndarray, seed: int) -> list[float]:
    """A 95% percentile-bootstrap interval for R^2 over the rows (``BOOTSTRAP`` resamples)."""
    rng = np.random.default_rng(seed)
    n = reference.shape[0]
    picks = rng.integers(0, n, size=(BOOTSTRAP, n))
    values = [r2(reference[p], predicted[p]) for p in picks]
    return [
        round(float(np.quantile(values, 0.025)), 4),
        round(float(np.quantile(values, 0.975)), 4),
    ]


def calibrate_squeeze(case: RegressorCase, *, seed: int) -> tuple[SqueezeConfig, dict[str, Any]]:
    """The grid and the value-disagreement threshold for one regressor (module docstring)."""
    from mlmoat.redteam.calibrate import (
        LEVEL_CANDIDATES,
        MAX_ACCURACY_DROP,
        SQUEEZE_QUANTILES,
        squeeze_grid,
    )

    rows_only = case.rows_only()

    def grid(levels: int, threshold: float = 2.0) -> SqueezeConfig:
        # A categorical feature keeps its category (origin 0, step 1).
        return dataclasses.replace(squeeze_grid(rows_only, levels), threshold=threshold)

    raw_test = case.predict_values(case.x_test)
    raw_r2 = r2(case.y_test, raw_test)
    by_levels = {
        levels: r2(case.y_test, case.predict_values(grid(levels).squeeze(case.x_test)))
        for levels in LEVEL_CANDIDATES
    }
    chosen = LEVEL_CANDIDATES[-1]
    for index, levels in enumerate(LEVEL_CANDIDATES):
        if all(by_levels[f] >= raw_r2 - MAX_ACCURACY_DROP for f in LEVEL_CANDIDATES[index:]):
            chosen = levels
            break
    config = grid(chosen)
    rng = np.random.default_rng(seed)
    calib = np.vstack([case.x_test, benign_rows(case.x_test, case.domain, 2000, rng)])
    scores = relative_scores(
        case.predict_values(calib), case.predict_values(config.squeeze(calib)), case.spread
    )
    test_scores = relative_scores(
        raw_test, case.predict_values(config.squeeze(case.x_test)), case.spread
    )
    refused: dict[str, float] = {}
    quantile = SQUEEZE_QUANTILES[-1]
    threshold = float(min(2.0, np.quantile(scores, quantile) + 1e-6))
    for candidate in SQUEEZE_QUANTILES:
        cut = float(min(2.0, np.quantile(scores, candidate) + 1e-6))
        refused[str(candidate)] = float((test_scores > cut).mean())
        if refused[str(candidate)] <= MAX_ACCURACY_DROP:
            quantile, threshold = candidate, cut
            break
    info = {
        "levels": chosen,
        "score": "|value - squeezed value| / training target range",
        "raw_r2": raw_r2,
        "squeezed_r2_by_levels": {str(k): v for k, v in by_levels.items()},
        "threshold_quantile": quantile,
        "refused_held_out_by_quantile": refused,
    }
    return grid(chosen, threshold), info


def calibrate_regressor(case: RegressorCase) -> dict[str, Any]:
    """The full ``defences.json`` document for one regressor."""
    from mlmoat.redteam.calibrate import CALIBRATION_SEED, _rounded, calibrate_monitor

    squeeze, squeeze_info = calibrate_squeeze(case, seed=CALIBRATION_SEED)
    # The monitor sees a regressor's rows only: one class, every row "certain".
    monitor, monitor_info = calibrate_monitor(case.rows_only(), squeeze=squeeze)
    return {
        "schema_version": 1,
        "model": case.name,
        "model_version": case.version,
        "kind": "regressor",
        "squeeze": squeeze.to_dict(),
        "monitor": _rounded(monitor.to_dict()),
        "calibration": {
            "seed": CALIBRATION_SEED,
            "squeeze": squeeze_info,
            "smoothing": "not applicable to a regressor (a vote over classes)",
            "monitor": {**monitor_info, "detectors": "off_manifold and prada (rows only)"},
        },
    }


@dataclass
class ValueTarget:
    """One regressor behind one output policy and squeeze policy, with its extraction monitor."""

    case: RegressorCase
    policy: str
    squeeze_policy: str = "off"
    squeeze: SqueezeConfig | None = None
    monitor: MonitorReference | None = None
    batch_rows: int = 100
    queries: int = 0
    refused: int = 0
    state: DetectorState = field(default_factory=DetectorState)

    def __post_init__(self) -> None:
        configs = {self.case.name: self.squeeze} if self.squeeze is not None else {}
        self._squeezer = Squeezer(configs, policy=self.squeeze_policy)
        self._policy = OutputPolicy.parse(self.policy)
        self._detector = ExtractionDetector(self.monitor) if self.monitor is not None else None

    @property
    def name(self) -> str:
        """The served model's name."""
        return self.case.name

    def predict_values(self, rows: np.ndarray) -> np.ndarray:
        """The model's raw values (what squeezing needs from a served model)."""
        return self.case.predict_values(rows)

    def query(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Send rows in requests of ``batch_rows``; return (what the attacker sees: the value
        or the bucket's midpoint, served mask)."""
        rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
        seen = np.zeros(rows.shape[0])
        served = np.ones(rows.shape[0], dtype=bool)
        for start in range(0, rows.shape[0], self.batch_rows):
            chunk = rows[start : start + self.batch_rows]
            self.queries += chunk.shape[0]
            try:
                result = serve_values(
                    self, chunk, squeezer=self._squeezer, target_range=self.case.target_range
                )
            except AdversarialInputError:
                self.refused += chunk.shape[0]
                served[start : start + chunk.shape[0]] = False
                continue
            answers = apply_value_policy(self._policy, result.values, self.case.target_range)
            for offset, answer in enumerate(answers):
                bucket = answer.get("bucket")
                seen[start + offset] = (
                    (bucket["low"] + bucket["high"]) / 2 if bucket else answer["value"]
                )
            if self._detector is not None:
                self._detector.observe(self.state, chunk)
        return seen, served


def _clone(case: RegressorCase, rows: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """The better surrogate's values on the held-out rows (ridge or extra trees, whichever
    agrees more with the served model: the attacker's best case)."""
    from sklearn.ensemble import ExtraTreesRegressor  # type: ignore[import-untyped]
    from sklearn.linear_model import Ridge  # type: ignore[import-untyped]
    from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]

    from mlmoat.redteam.attacks import surrogate_encoder

    reference = case.predict_values(case.x_test)
    if rows.shape[0] < 2:
        return np.full(reference.shape, float(seen.mean()) if seen.size else 0.0)
    predictions = []
    for model in (
        # Ridge on one-hot categories and standardised numbers; the trees split on the indices.
        make_pipeline(surrogate_encoder(rows.shape[1], case.category_counts), Ridge(alpha=1e-3)),
        ExtraTreesRegressor(n_estimators=50, random_state=0, n_jobs=1),
    ):
        model.fit(rows, seen)
        predictions.append(np.asarray(model.predict(case.x_test), dtype=np.float64))
    return max(predictions, key=lambda p: r2(reference, p))


def attacker_rows(case: RegressorCase, kind: str, count: int, seed: int) -> np.ndarray:
    """The uniform or the adaptive attacker's ``count`` queries."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return uniform_rows(case.domain, count, rng)
    return data_rows(case.x_test, np.zeros(case.x_test.shape[0]), case.domain, count, rng)


def extraction(
    case: RegressorCase,
    kind: str,
    *,
    policy: str,
    counts: tuple[int, ...],
    seed: int,
    squeeze: SqueezeConfig | None = None,
    monitor: MonitorReference | None = None,
) -> dict[str, Any]:
    """Surrogate R^2 (and its 95% interval) after each count of one attacker's queries."""
    target = ValueTarget(case, policy, "flag" if squeeze else "off", squeeze, monitor)
    rows = attacker_rows(case, kind, max(counts), seed)
    seen, served = target.query(rows)
    reference = case.predict_values(case.x_test)
    curve = []
    for count in counts:
        keep = served[:count]
        curve.append(r2(reference, _clone(case, rows[:count][keep], seen[:count][keep])))
    last = _clone(case, rows[served], seen[served])
    return {
        "attacker": kind,
        "policy": policy,
        "counts": list(counts),
        "r2": [round(v, 4) for v in curve],
        "r2_ci_at_max": r2_interval(reference, last, seed),
        "held_out_rows": int(case.x_test.shape[0]),
        "flagged_at_row": target.state.flagged_at_row if target.state.flagged else None,
        "flag_reason": target.state.flag_reason or None,
        "rows_sent": int(rows.shape[0]),
    }


def membership(case: RegressorCase, *, policy: str, seed: int) -> dict[str, Any]:
    """The squared-error loss attack: AUC of members vs non-members, with a 95% interval."""
    rng = np.random.default_rng(seed)
    n = int(min(case.x_train.shape[0], case.x_test.shape[0]))
    members = rng.choice(case.x_train.shape[0], size=n, replace=False)
    target = ValueTarget(case, policy)
    seen_in, _ = target.query(case.x_train[members])
    seen_out, _ = target.query(case.x_test[:n])
    scores = np.concatenate(
        [-((case.y_train[members] - seen_in) ** 2), -((case.y_test[:n] - seen_out) ** 2)]
    )
    truth = np.concatenate([np.ones(n), np.zeros(n)])
    auc = _auc(truth, scores)
    picks = rng.integers(0, 2 * n, size=(BOOTSTRAP, 2 * n))
    boots = [_auc(truth[p], scores[p]) for p in picks if 0 < truth[p].sum() < 2 * n]
    return {
        "attack": "loss (squared error)",
        "policy": policy,
        "members": n,
        "non_members": n,
        "auc": round(auc, 4),
        "auc_ci": [round(float(np.quantile(boots, q)), 4) for q in (0.025, 0.975)],
    }


def _auc(truth: np.ndarray, scores: np.ndarray) -> float:
    from scipy.stats import rankdata  # type: ignore[import-untyped]

    ranks = rankdata(scores)
    positives = truth == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recommend(
    case: RegressorCase, *, max_fidelity: float, policy: str, seeds: int, seed: int = 0
) -> dict[str, Any]:
    """The budget below which the adaptive clone's R^2 (worst of ``seeds``) stays under
    ``max_fidelity``; ``budget`` None when no measured count keeps it there."""
    if not 0 < max_fidelity <= 1:
        raise ValueError("max_fidelity must be in (0, 1]")
    OutputPolicy.parse(policy)
    runs = [
        extraction(case, "adaptive", policy=policy, counts=COUNTS, seed=seed + s)["r2"]
        for s in range(seeds)
    ]
    worst = [max(run[i] for run in runs) for i in range(len(COUNTS))]
    budget = None
    for count, fid in zip(COUNTS, worst, strict=True):
        if fid >= max_fidelity:
            break
        budget = count
    return {
        "model": case.name,
        "kind": "regressor",
        "fidelity": "R^2 of the clone against the served model on the held-out rows",
        "max_fidelity": max_fidelity,
        "output_policy": policy,
        "budget": budget,
        "curve": dict(zip(map(str, COUNTS), worst, strict=True)),
        "seeds": seeds,
        "note": (
            f"a budget of at most {budget} rows per principal keeps an adaptive clone below "
            f"R^2 {max_fidelity:g} (worst of {seeds} seeds)"
            if budget is not None
            else f"no budget protects this model: {COUNTS[0]} adaptive rows already give a "
            f"clone R^2 {worst[0]:.2f}"
        ),
    }


def run(cases: list[RegressorCase], model_dir: Path, *, quick: bool, seed: int) -> dict[str, Any]:
    """Every regressor's red-team figures (extraction, detection, MIA; HopSkipJump n/a)."""
    from security.extraction.reference import load_monitor_reference

    counts = QUICK_COUNTS if quick else COUNTS
    results: dict[str, Any] = {}
    for case in cases:
        path = model_dir / case.name / DEFENCES_FILE
        squeeze = load_defences(path).squeeze
        monitor = load_monitor_reference(path, case.name)
        out: dict[str, Any] = {"version": case.version, "kind": "regressor"}
        out["extraction"] = {
            f"{kind} {policy}": extraction(
                case,
                kind,
                policy=policy,
                counts=counts,
                seed=seed,
                squeeze=squeeze,
                monitor=monitor,
            )
            for kind in ("uniform", "adaptive")
            for policy in ("value:6", "value:2", "buckets:10")
        }
        out["membership_inference"] = membership(case, policy="value:6", seed=seed)
        out["hopskipjump"] = HOPSKIPJUMP_NOTE
        out["smoothing"] = "not applicable"
        results[case.name] = out
    return results


def markdown(results: dict[str, Any], seed: int) -> list[str]:
    """The regressors' section of the report."""
    parts = [f"## Regressors (seed {seed})", ""]
    for name, model in results.items():
        parts += [
            f"### {name}",
            "",
            "Extraction: surrogate R^2 against the served model on "
            "the held-out rows (the better of ridge and extra trees; 95% bootstrap "
            "interval at the largest count). Squeezing flag on, monitor watching.",
            "",
        ]
        parts += [
            "| attacker, policy | rows -> R^2 | 95% CI at max | held-out rows | flagged at row |",
            "|---|---|---|---|---|",
        ]
        for label, row in model["extraction"].items():
            curve = ", ".join(
                f"{c}: {v:.3f}" for c, v in zip(row["counts"], row["r2"], strict=True)
            )
            flagged = (
                row["flagged_at_row"]
                if row["flagged_at_row"] is not None
                else (f"never (of {row['rows_sent']})")
            )
            ci = row["r2_ci_at_max"]
            parts.append(
                f"| {label} | {curve} | [{ci[0]:.3f}, {ci[1]:.3f}] | {row['held_out_rows']} "
                f"| {flagged} |"
            )
        mia = model["membership_inference"]
        parts += [
            "",
            f"Membership inference ({mia['attack']}, {mia['policy']}): AUC {mia['auc']:.3f} "
            f"[{mia['auc_ci'][0]:.3f}, {mia['auc_ci'][1]:.3f}] on {mia['members']} members and "
            f"{mia['non_members']} non-members (0.5 is chance).",
            "",
            f"HopSkipJump: {model['hopskipjump']}.",
            "",
        ]
    return parts
