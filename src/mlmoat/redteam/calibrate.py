"""Calibrate each model's defences on held-out data and write ``models/<name>/defences.json``.

Squeezing: the coarsest grid (fewest levels per feature) whose squeezed predictions keep
held-out accuracy within ``MAX_ACCURACY_DROP`` of the raw model; the detection threshold is a
quantile of raw-vs-squeezed L1 scores on benign calibration traffic: the lowest of
``SQUEEZE_QUANTILES`` at which the ``refuse`` policy (squeezed answers, rows above the threshold
refused and counted as wrong) still keeps held-out accuracy within ``MAX_ACCURACY_DROP``, so
that refusing costs no more accuracy than the target allows (the last candidate otherwise).

Smoothing (``security.smoothing``): the largest noise scale ``sigma`` (envelope-normalised units)
whose smoothed predictions, and those of every smaller candidate, keep held-out accuracy within
``MAX_ACCURACY_DROP`` at the most copies; then the fewest copies ``n`` that keep it and agree
with the most copies' labels on ``MIN_N_AGREEMENT`` of the rows. Smoothing is enabled only when
it also helps: in a short HopSkipJump run on held-out rows (``HELP_ROWS`` rows, ``HELP_ITER``
iterations, label output) the smoothed model's success rate must be lower than the plain one's
beyond their 95% Wilson intervals; otherwise the section is written with ``enabled: false`` and
its measurements (``mlmoat redteam``'s robustness table measures smoothing either way).

Monitor: envelope, per-feature scale and k-means prototypes of the training rows; each detector's
per-row threshold and benign rate measured on benign calibration streams (held-out rows with
noise, seeds disjoint from the ones the red team evaluates with); PRADA's delta below the lowest
W those streams ever reach.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.cluster import KMeans  # type: ignore[import-untyped]

from mlmoat.redteam.cases import ModelCase
from mlmoat.redteam.traffic import benign_rows
from security.defences import DEFENCES_FILE, SqueezeConfig
from security.extraction import DetectorState, ExtractionDetector, MonitorReference
from security.smoothing import Smoother, SmoothingConfig, serve

LEVEL_CANDIDATES = (4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)
MAX_ACCURACY_DROP = 0.02
SQUEEZE_QUANTILES = (0.97, 0.98, 0.99, 0.995, 0.999)
CALIBRATION_SEED = 7_000_000
CALIBRATION_STREAMS = 6
CALIBRATION_ROWS = 2000
SIGMA_CANDIDATES = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
N_CANDIDATES = (16, 32, 64, 128)
MIN_N_AGREEMENT = 0.98
SMOOTHING_ALPHA = 0.001
HELP_ROWS = 40
HELP_ITER = 5


def _smoothed_labels(case: ModelCase, config: SmoothingConfig) -> np.ndarray:
    from mlmoat.redteam.target import ServedTarget

    return ServedTarget(case, "label", smoothing=config).labels(case.x_test)


def calibrate_smoothing(
    case: ModelCase, *, seed: int = CALIBRATION_SEED
) -> tuple[SmoothingConfig, dict[str, Any]]:
    """Pick sigma and n for one model, and whether smoothing is on (see the module docstring)."""
    from mlmoat.redteam import attacks
    from mlmoat.redteam.target import ServedTarget

    y_test = case.label_index(case.y_test)
    raw_accuracy = float((case.predict_proba(case.x_test).argmax(axis=1) == y_test).mean())
    floor = raw_accuracy - MAX_ACCURACY_DROP

    def config(sigma: float, n: int, enabled: bool = False) -> SmoothingConfig:
        width = tuple(float(w) for w in case.domain.width)
        return SmoothingConfig(
            case.name, case.version, enabled, n, sigma, SMOOTHING_ALPHA, width, case.categorical
        )

    most = N_CANDIDATES[-1]
    by_sigma: dict[float, float] = {}
    reference: dict[float, np.ndarray] = {}
    for sigma in SIGMA_CANDIDATES:
        reference[sigma] = _smoothed_labels(case, config(sigma, most))
        by_sigma[sigma] = float((reference[sigma] == y_test).mean())
    fitting = [
        s
        for i, s in enumerate(SIGMA_CANDIDATES)
        if all(by_sigma[t] >= floor for t in SIGMA_CANDIDATES[: i + 1])
    ]
    sigma = fitting[-1] if fitting else SIGMA_CANDIDATES[0]
    by_n: dict[int, float] = {}
    chosen_n = most
    for n in N_CANDIDATES:
        labels = _smoothed_labels(case, config(sigma, n))
        by_n[n] = float((labels == y_test).mean())
        agreement = float((labels == reference[sigma]).mean())
        if by_n[n] >= floor and agreement >= MIN_N_AGREEMENT:
            chosen_n = n
            break
    plain = attacks.hopskipjump(
        ServedTarget(case, "label"), rows=HELP_ROWS, seed=seed, max_iter=HELP_ITER
    )
    smoothed = attacks.hopskipjump(
        ServedTarget(case, "label", smoothing=config(sigma, chosen_n)),
        rows=HELP_ROWS,
        seed=seed,
        max_iter=HELP_ITER,
    )
    # "Helps" is judged on the intervals: the smoothed rate's 95% Wilson upper bound below the
    # plain rate's lower bound. A plain comparison of two 40-row rates flipped between runs of
    # the same seed (breast-cancer: 0.150 -> 0.075 once, 0.125 -> 0.125 the next time).
    from mlmoat.redteam.robustness import wilson

    plain_low = wilson(plain["successes"], HELP_ROWS)[0]
    smoothed_high = wilson(smoothed["successes"], HELP_ROWS)[1]
    helps = bool(fitting) and smoothed_high < plain_low
    info = {
        "raw_accuracy": raw_accuracy,
        "smoothed_accuracy_by_sigma": {str(k): v for k, v in by_sigma.items()},
        "smoothed_accuracy_by_n": {str(k): v for k, v in by_n.items()},
        "hopskipjump_check": {
            "rows": HELP_ROWS,
            "max_iter": HELP_ITER,
            "plain_success": plain["success_rate"],
            "smoothed_success": smoothed["success_rate"],
        },
        "enabled_because": (
            "fits the accuracy cost and lowers HopSkipJump success beyond the intervals"
            if helps
            else "off: no sigma fits the accuracy cost, or HopSkipJump success is not lower "
            "beyond the 95% intervals"
        ),
    }
    return config(sigma, chosen_n, enabled=helps), info


def squeeze_grid(case: ModelCase, levels: int) -> SqueezeConfig:
    """A grid of ``levels`` cells per numeric feature; a categorical feature keeps its
    category index (origin 0, step 1: squeezing never moves it to another category)."""
    config = SqueezeConfig.from_envelope(
        model=case.name,
        model_version=case.version,
        lower=case.lower.tolist(),
        upper=case.upper.tolist(),
        levels=levels,
        threshold=2.0,
    )
    if not case.categorical:
        return config
    origin, step = list(config.origin), list(config.step)
    for j in case.categorical:
        origin[j], step[j] = 0.0, 1.0
    return SqueezeConfig(case.name, case.version, tuple(origin), tuple(step), config.threshold)


def calibrate_squeeze(
    case: ModelCase, *, seed: int = CALIBRATION_SEED
) -> tuple[SqueezeConfig, dict[str, Any]]:
    """Pick the grid and the disagreement threshold for one model."""
    y_test = case.label_index(case.y_test)
    raw_accuracy = float((case.predict_proba(case.x_test).argmax(axis=1) == y_test).mean())
    chosen = LEVEL_CANDIDATES[-1]
    accuracies: dict[int, float] = {}
    for levels in LEVEL_CANDIDATES:
        config = squeeze_grid(case, levels)
        squeezed = case.predict_proba(config.squeeze(case.x_test)).argmax(axis=1)
        accuracies[levels] = float((squeezed == y_test).mean())
    # The coarsest grid such that it and every finer candidate keep accuracy: a single lucky
    # coarse grid is not trusted.
    for index, levels in enumerate(LEVEL_CANDIDATES):
        finer = LEVEL_CANDIDATES[index:]
        if all(accuracies[f] >= raw_accuracy - MAX_ACCURACY_DROP for f in finer):
            chosen = levels
            break
    rng = np.random.default_rng(seed)
    calib = np.vstack([case.x_test, benign_rows(case.x_test, case.domain, 2000, rng)])
    config = squeeze_grid(case, chosen)
    raw_p = case.predict_proba(calib)
    sq_p = case.predict_proba(config.squeeze(calib))
    scores = np.abs(raw_p - sq_p).sum(axis=1)
    # Held-out rows as the refuse policy answers them: the squeezed label, unless refused.
    raw_test = case.predict_proba(case.x_test)
    sq_test = case.predict_proba(config.squeeze(case.x_test))
    test_scores = np.abs(raw_test - sq_test).sum(axis=1)
    squeezed_right = sq_test.argmax(axis=1) == y_test
    refuse_accuracy: dict[str, float] = {}
    quantile, threshold = SQUEEZE_QUANTILES[-1], 2.0
    for candidate in SQUEEZE_QUANTILES:
        cut = float(min(2.0, np.quantile(scores, candidate) + 1e-6))
        refuse_accuracy[str(candidate)] = float((squeezed_right & (test_scores <= cut)).mean())
        if refuse_accuracy[str(candidate)] >= raw_accuracy - MAX_ACCURACY_DROP:
            quantile, threshold = candidate, cut
            break
    else:
        threshold = float(min(2.0, np.quantile(scores, quantile) + 1e-6))
    config = SqueezeConfig(case.name, case.version, config.origin, config.step, threshold)
    info = {
        "levels": chosen,
        "raw_accuracy": raw_accuracy,
        "squeezed_accuracy_by_levels": {str(k): v for k, v in accuracies.items()},
        "threshold_quantile": quantile,
        "refuse_accuracy_by_quantile": refuse_accuracy,
    }
    return config, info


def calibrate_monitor(
    case: ModelCase,
    *,
    squeeze: SqueezeConfig | None = None,
    smoothing: SmoothingConfig | None = None,
    seed: int = CALIBRATION_SEED,
) -> tuple[MonitorReference, dict[str, Any]]:
    """Fit the monitor reference for one model on training rows and benign calibration streams.

    Confidences are taken as the pipeline sends them with squeezing on (the default policy) and
    with the model's smoothing when it is enabled: squeezed and smoothed rows are less
    confident, so a reference fitted on them is also safe with either off. (Fitted on unsmoothed
    answers, the low-confidence detector flagged 20 of 20 benign keys of the smoothed
    breast-cancer model in the red team.)
    """
    from mlmoat.redteam.target import REDTEAM_SECRET

    smoother = Smoother({case.name: smoothing}, secret=REDTEAM_SECRET) if smoothing else None

    class _Model:
        name = case.name

        def predict_proba(self, rows: np.ndarray) -> np.ndarray:
            return case.predict_proba(rows)

    def served(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # (label index, confidence) as the queue message carries them: the served label (the
        # smoothed majority when smoothing is on) and its probability.
        squeezed = squeeze.squeeze(rows) if squeeze is not None else rows
        answer = serve(_Model(), squeezed, squeezer=None, smoother=smoother)
        best = answer.probabilities[np.arange(len(answer.labels)), answer.labels]
        return answer.labels, best

    lower, upper = case.lower, case.upper
    width = np.where(upper - lower > 0, upper - lower, 1.0)
    z_train = (case.x_train - lower) / width
    scale = z_train.std(axis=0) + 1e-6
    k = int(min(16, max(2, case.x_train.shape[0] // 10)))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(z_train / scale)
    prototypes = km.cluster_centers_ * scale
    rng = np.random.default_rng(seed + 1)
    domain = case.domain
    streams = [
        benign_rows(case.x_test, domain, CALIBRATION_ROWS, rng) for _ in range(CALIBRATION_STREAMS)
    ]
    draft = MonitorReference(
        model=case.name,
        lower=tuple(lower),
        upper=tuple(upper),
        scale=tuple(scale),
        prototypes=tuple(tuple(p) for p in prototypes),
        off_manifold_threshold=1.0,
        off_manifold_p0=0.5,
        low_confidence_cut=0.0,
        low_confidence_p0=0.5,
        prada_delta=0.0,
    )
    pooled = np.vstack(streams)
    off_scores = draft.off_manifold_scores(pooled)
    off_threshold = float(np.quantile(off_scores, 0.99))
    _, confidences = served(pooled)
    low_cut = float(min(0.9, np.quantile(confidences, 0.05)))
    off_rate = float((off_scores > off_threshold).mean())
    low_rate = float((confidences < low_cut).mean())
    # Benign rates are doubled (and floored) so a caller whose traffic drifts a little from the
    # calibration streams is not flagged by the windowed binomial test.
    draft = MonitorReference(
        model=case.name,
        lower=tuple(lower),
        upper=tuple(upper),
        scale=tuple(scale),
        prototypes=tuple(tuple(p) for p in prototypes),
        off_manifold_threshold=off_threshold,
        off_manifold_p0=max(0.03, 2 * off_rate),
        low_confidence_cut=low_cut,
        low_confidence_p0=max(0.1, 2 * low_rate),
        prada_delta=0.0,
    )
    lowest_w = 1.0
    for stream in streams:
        state = DetectorState()
        detector = ExtractionDetector(draft)
        label_index, conf = served(stream)
        labels = [case.classes[i] for i in label_index]
        for start in range(0, stream.shape[0], 50):
            verdict = detector.observe(
                state,
                stream[start : start + 50],
                labels=labels[start : start + 50],
                confidences=conf[start : start + 50].tolist(),
            )
            if len(state.distances) >= draft.prada_min_distances:
                lowest_w = min(lowest_w, verdict.scores.get("prada_w", 1.0))
    # Benign resampled tabular traffic reaches low W on its own; keep a wide margin below it.
    prada_delta = round(0.85 * lowest_w, 4)
    reference = MonitorReference(
        model=case.name,
        lower=tuple(lower),
        upper=tuple(upper),
        scale=tuple(scale),
        prototypes=tuple(tuple(p) for p in prototypes),
        off_manifold_threshold=off_threshold,
        off_manifold_p0=draft.off_manifold_p0,
        low_confidence_cut=low_cut,
        low_confidence_p0=draft.low_confidence_p0,
        prada_delta=prada_delta,
    )
    info = {
        "prototypes": k,
        "benign_off_manifold_rate": off_rate,
        "benign_low_confidence_rate": low_rate,
        "benign_lowest_prada_w": lowest_w,
        "streams": CALIBRATION_STREAMS,
        "rows_per_stream": CALIBRATION_ROWS,
    }
    return reference, info


def calibrate_case(case: ModelCase) -> dict[str, Any]:
    """The full ``defences.json`` document for one model."""
    squeeze, squeeze_info = calibrate_squeeze(case)
    smoothing, smoothing_info = calibrate_smoothing(case)
    monitor, monitor_info = calibrate_monitor(
        case, squeeze=squeeze, smoothing=smoothing if smoothing.enabled else None
    )
    return {
        "schema_version": 1,
        "model": case.name,
        "model_version": case.version,
        "squeeze": squeeze.to_dict(),
        "smoothing": smoothing.to_dict(),
        "monitor": _rounded(monitor.to_dict()),
        "calibration": {
            "seed": CALIBRATION_SEED,
            "squeeze": squeeze_info,
            "smoothing": smoothing_info,
            "monitor": monitor_info,
        },
    }


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def write_defences(document: dict[str, Any], model_dir: Path) -> Path:
    """Write one model's defences.json (sorted keys, stable floats)."""
    path = model_dir / str(document["model"]) / DEFENCES_FILE
    path.write_text(
        json.dumps(_rounded(document), indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    return path
