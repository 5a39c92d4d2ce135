"""``mlmoat models import`` for a fitted scikit-learn regressor (or regressor pipeline).

The regressor's counterpart of ``mlmoat.models_import``'s classifier path, writing the same three
files:

* ``model.onnx``: skl2onnx at the pinned opsets, float32 input ``features``, one float output
  ``value`` of shape ``(n, 1)``, deterministic bytes (``mlmoat.train.deterministic_bytes``);
* ``manifest.json``: ``"kind": "regressor"``, no classes, the training target's range (``target``:
  min, max, mean, std of the training rows), held-out R^2 and MAE, and a parity sample (rows
  uniform in the envelope with the estimator's values, ``rtol`` and its ``scale``);
* ``defences.json``: squeezing calibrated by value (``mlmoat.redteam.regression``), the extraction
  monitor's reference, smoothing recorded as not applicable.

Parity: on every held-out row (as float32, the way the API feeds it) the graph's value must be
within ``PARITY_RTOL`` of the estimator's, relative to the value or, for values near zero, to the
training target's largest magnitude (``scale``): ``|onnx - sklearn| <= PARITY_RTOL * max(|sklearn|,
scale)``. The held-out split is a plain random one (no strata for a continuous target).

Categorical columns (a ``ColumnTransformer`` with ``OneHotEncoder`` / ``OrdinalEncoder``) work as
for a classifier (``mlmoat.models_columns``): converted per column behind the float-input prefix,
parity against the pipeline fed DataFrames (``FrameEstimator``), the manifest's ``categories`` and
``feature_types``, a category's envelope ``0 .. k-1``, parity rows with valid category indices,
and a ``RegressorCase`` whose categorical features squeezing and the red team keep valid.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlmoat.models_import import (
    CONVERSION_ERRORS,
    Dataset,
    ImportRefused,
    conversion_refused,
    describe,
)

PARITY_RTOL = 1e-5
VALUE_OUTPUT = "value"


def is_regressor(estimator: Any) -> bool:
    """Whether scikit-learn says the estimator (or pipeline) is a regressor."""
    from sklearn.base import is_regressor as sk_is_regressor  # type: ignore[import-untyped]

    return bool(sk_is_regressor(estimator))


def check_regressor(estimator: Any, x: np.ndarray, reference: Any) -> None:
    """Refuse what cannot be served as one value per row (``reference`` predicts float rows:
    the estimator, or its ``FrameEstimator`` when it has categorical columns).

    Raises:
        ImportRefused: fitted on another number of features, not fitted, or multi-output.
    """
    fitted = getattr(estimator, "n_features_in_", x.shape[1])
    if fitted != x.shape[1]:
        raise ImportRefused(
            f"the estimator was fitted on {fitted} features; the CSV gives {x.shape[1]}"
        )
    try:
        out = np.asarray(reference.predict(x[:2]))
    except Exception as exc:  # noqa: BLE001 - an unfitted or broken estimator raises anything
        raise ImportRefused(
            f"{describe(estimator)} does not predict: {type(exc).__name__}"
        ) from exc
    if out.ndim > 1 and out.shape[1] != 1:
        raise ImportRefused(
            f"{describe(estimator)} predicts {out.shape[1]} outputs per row: mlmoat serves "
            "single-output regressors (import one model per target)"
        )


def targets(data: Dataset) -> np.ndarray:
    """The target column as numbers.

    Raises:
        ImportRefused: a target value is not a finite number (its line is named).
    """
    values = np.empty(len(data.y), dtype=np.float64)
    for i, text in enumerate(data.y):
        try:
            values[i] = float(text)
        except ValueError:
            raise ImportRefused(
                f"{data.file_name}, line {i + 2}: the target of a regressor must be a number"
            ) from None
        if not np.isfinite(values[i]):
            raise ImportRefused(f"{data.file_name}, line {i + 2}: the target is not finite")
    return values


def convert(
    name: str,
    estimator: Any,
    columns: Sequence[str],
    description: str,
    categories: Mapping[int, Sequence[str]],
) -> bytes:
    """skl2onnx at the pinned opsets: input ``features``, output ``value`` ``(n, 1)``; with
    categorical columns, converted per column behind the float-input prefix that decodes the
    category indices (``mlmoat.models_columns.mixed_inputs``).

    Raises:
        ImportRefused: skl2onnx cannot convert a step (the message names it).
    """
    from skl2onnx import convert_sklearn  # type: ignore[import-untyped]
    from skl2onnx.common.data_types import FloatTensorType  # type: ignore[import-untyped]

    from mlmoat.models_columns import mixed_inputs
    from mlmoat.train import INPUT_NAME, ONNX_OPSETS, deterministic_bytes

    meta = {"description": description, "mlmoat.model": name}
    try:
        initial_types = [(INPUT_NAME, FloatTensorType([None, len(columns)]))]
        prepare = None
        if categories:
            initial_types, prepare = mixed_inputs(columns, categories)
        model = convert_sklearn(
            estimator,
            name=f"mlmoat_{name.replace('-', '_')}",
            initial_types=initial_types,
            final_types=[(VALUE_OUTPUT, FloatTensorType([None, 1]))],
            target_opset=dict(ONNX_OPSETS),
        )
        if prepare is not None:
            prepare(model)
        return deterministic_bytes(model, meta)
    except CONVERSION_ERRORS as exc:
        raise conversion_refused(estimator, exc) from exc


def onnx_values(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """The graph's value per row of ``x`` (fed as float32, the way the API feeds it)."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    from mlmoat.train import INPUT_NAME

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (out,) = session.run([VALUE_OUTPUT], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
    return np.asarray(out, dtype=np.float64).reshape(-1)


def estimator_values(estimator: Any, x: np.ndarray) -> np.ndarray:
    """The estimator's value per row, on the float32 rows the graph sees."""
    rows32 = np.asarray(x, dtype=np.float32).astype(np.float64)
    return np.asarray(estimator.predict(rows32), dtype=np.float64).reshape(-1)


def parity_failures(expected: np.ndarray, served: np.ndarray, scale: float) -> list[str]:
    """Rows where graph and estimator differ beyond tolerance, with the differences."""
    allowed = PARITY_RTOL * np.maximum(np.abs(expected), scale)
    diff = np.abs(served - expected)
    bad = np.flatnonzero(~(diff <= allowed))
    lines = [
        f"row {i}: {expected[i]:.9g} vs {served[i]:.9g}, relative difference "
        f"{diff[i] / max(abs(expected[i]), scale):.2e}"
        for i in bad[:10]
    ]
    return lines + ([f"... and {len(bad) - 10} more rows"] if len(bad) > 10 else [])


def parity_sample(
    estimator: Any,
    lower: np.ndarray,
    upper: np.ndarray,
    seed: int,
    scale: float,
    categorical: Sequence[int] = (),
) -> dict[str, Any]:
    """Rows uniform in the envelope (a categorical feature's index uniform among its
    categories, ``mlmoat.models_import.parity_rows``) with the estimator's values (``mlmoat
    models check``)."""
    from mlmoat.models_import import parity_rows

    rows = parity_rows(lower, upper, seed, categorical)
    values = estimator_values(estimator, rows)
    return {
        "rows": [[float(f"{v:.9g}") for v in row] for row in rows.tolist()],
        "values": [float(f"{v:.12g}") for v in values.tolist()],
        "rtol": PARITY_RTOL,
        "scale": float(f"{scale:.12g}"),
        "reference": "estimator",
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Held-out R^2 and mean absolute error."""
    residual = float(((y_true - y_pred) ** 2).sum())
    total = float(((y_true - y_true.mean()) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else 0.0
    return {"r2": r2, "mae": float(np.abs(y_true - y_pred).mean())}


def manifest(
    *,
    name: str,
    description: str,
    estimator: Any,
    onnx_bytes: bytes,
    feature_names: tuple[str, ...],
    categories: Mapping[int, Sequence[str]],
    lower: np.ndarray,
    upper: np.ndarray,
    y_train: np.ndarray,
    y_test: np.ndarray,
    served_test: np.ndarray,
) -> dict[str, Any]:
    """The regressor's manifest, without ``framework``, ``train_split``, ``imported``, ``parity``
    (the caller adds the sections it shares with classifiers)."""
    from mlmoat.models_columns import feature_sections
    from mlmoat.train import INPUT_NAME, ONNX_FILE, _round

    digest = hashlib.sha256(onnx_bytes).hexdigest()
    metrics = regression_metrics(y_test, served_test)
    return {
        "schema_version": 1,
        "name": name,
        "version": f"{name}-{digest[:12]}",
        "kind": "regressor",
        "description": description,
        "estimator": describe(estimator),
        "feature_names": list(feature_names),
        "classes": [],
        **feature_sections(feature_names, categories),
        "envelope": {
            feature: {"min": float(lower[i]), "max": float(upper[i])}
            for i, feature in enumerate(feature_names)
        },
        "target": {
            "min": float(y_train.min()),
            "max": float(y_train.max()),
            "mean": _round(float(y_train.mean())),
            "std": _round(float(y_train.std())),
        },
        "metrics": {
            "r2": _round(metrics["r2"]),
            "mae": _round(metrics["mae"]),
            "n_train": int(len(y_train)),
            "n_test": int(len(y_test)),
        },
        "dp_epsilon": None,
        "dp_data_norm": None,
        "onnx": {
            "file": ONNX_FILE,
            "sha256": digest,
            "size_bytes": len(onnx_bytes),
            "input": INPUT_NAME,
            "input_dtype": "float32",
            "outputs": {"value": VALUE_OUTPUT},
        },
    }


def import_regressor(
    args: Any, data: Dataset, test: Dataset | None, estimator: Any, fmt: str, own: Any
) -> dict[str, Any]:
    """``mlmoat models import`` of a regressor: refuse, or write ``models/NAME/`` and return the
    summary printed (``mlmoat.models_cli.import_model`` calls it once the estimator is loaded).

    Raises:
        ImportRefused: a check failed (multi-output, ``--adversarial``, conversion, parity, a
            non-numeric target); nothing is written.
    """
    import dataclasses
    import json

    from mlmoat import models_import as mi
    from mlmoat.models_cli import _framework, stage_model
    from mlmoat.models_columns import FrameEstimator, category_bounds
    from mlmoat.redteam.regression import RegressorCase, calibrate_regressor, recommend
    from mlmoat.train import ONNX_OPSETS, _opsets_of, manifest_bytes
    from security.model import Manifest, ServedModel
    from security.policy import OutputPolicy

    if args.adversarial:
        raise ImportRefused("--adversarial is for classifiers (HopSkipJump needs classes)")
    # The parity reference: the pipeline itself, fed DataFrames when it has categorical columns.
    reference = (
        FrameEstimator(estimator, data.columns, data.categories) if data.categories else estimator
    )
    check_regressor(estimator, data.x, reference)
    numeric = dataclasses.replace(data, y=targets(data))
    numeric_test = dataclasses.replace(test, y=targets(test)) if test is not None else None
    x_train, y_train, x_test, y_test = mi.split(
        numeric, test=numeric_test, test_fraction=args.test_fraction, seed=args.seed, stratify=False
    )
    y_train, y_test = y_train.astype(np.float64), y_test.astype(np.float64)
    lower, upper = category_bounds(x_train.min(axis=0), x_train.max(axis=0), data.categories)
    categorical = tuple(sorted(data.categories))
    description = args.description or f"Imported from {data.file_name} (target {args.target})."
    onnx_bytes = convert(args.name, estimator, data.columns, description, data.categories)
    served_test = onnx_values(onnx_bytes, x_test)
    scale = float(np.abs(y_train).max()) or 1.0
    expected_test = estimator_values(reference, x_test)
    failures = parity_failures(expected_test, served_test, scale)
    if failures:
        raise ImportRefused(
            f"the ONNX graph disagrees with the estimator on {len(failures)} held-out rows "
            f"(relative tolerance {PARITY_RTOL}); nothing written:\n  " + "\n  ".join(failures)
        )
    document = manifest(
        name=args.name,
        description=description,
        estimator=estimator,
        onnx_bytes=onnx_bytes,
        feature_names=data.feature_names,
        categories=data.categories,
        lower=lower,
        upper=upper,
        y_train=y_train,
        y_test=y_test,
        served_test=served_test,
    )
    document["framework"] = _framework(onnx_bytes, ONNX_OPSETS, _opsets_of, imported=fmt)
    document["train_split"] = mi.split_record(data, test, args, stratified=False)
    document["imported"] = {"source": args.estimator.name, "format": fmt}
    document["parity"] = parity_sample(reference, lower, upper, args.seed, scale, categorical)
    served = ServedModel(Manifest.from_dict(json.loads(manifest_bytes(document))), onnx_bytes)
    target_range = (float(y_train.min()), float(y_train.max()))
    case = RegressorCase(
        name=args.name,
        version=document["version"],
        lower=lower,
        upper=upper,
        target_range=target_range,
        predict_values=served.predict_values,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        categorical=categorical,
    )
    defences = calibrate_regressor(case)
    policy = own.narrowed(OutputPolicy.parse("probabilities:2")).for_regressor()
    budget = recommend(case, max_fidelity=args.max_fidelity, policy=str(policy), seeds=3)
    target_dir = stage_model(args, onnx_bytes, manifest_bytes(document), defences, own)
    return {
        "model": args.name,
        "kind": "regressor",
        "version": document["version"],
        "path": str(target_dir),
        "estimator": document["estimator"],
        "format": fmt,
        "features": [[n, c] for n, c in zip(data.feature_names, data.columns, strict=True)],
        "categorical": [data.feature_names[j] for j in categorical],
        "target": document["target"],
        "r2": document["metrics"]["r2"],
        "mae": document["metrics"]["mae"],
        "n_train": document["metrics"]["n_train"],
        "n_test": document["metrics"]["n_test"],
        "parity_rows": int(len(y_test)),
        "parity_max_relative_difference": float(
            f"{max_relative_difference(expected_test, served_test, scale):.3g}"
        ),
        "squeeze_levels": defences["calibration"]["squeeze"]["levels"],
        "settings": own.to_dict(args.name),
        "recommended_budget": {k: budget[k] for k in ("budget", "max_fidelity", "output_policy")},
        "budget_note": budget["note"],
        "smoothing": "not applicable",
    }


def max_relative_difference(expected: np.ndarray, served: np.ndarray, scale: float) -> float:
    """The largest ``|served - expected| / max(|expected|, scale)`` over the rows."""
    return float((np.abs(served - expected) / np.maximum(np.abs(expected), scale)).max())


def check_value_parity(model: Any, section: object) -> str:
    """A regressor's ``mlmoat models check`` parity: the served graph reproduces the recorded
    values within ``rtol`` (relative to the value, or ``scale`` near zero).

    Raises:
        ModelIntegrityError: the section is malformed (``parity_malformed``) or the graph does
            not reproduce it (``parity_mismatch``).
    """
    from security.errors import ModelIntegrityError

    name = model.name
    try:
        if not isinstance(section, dict):
            raise TypeError("parity is not an object")
        rows = np.asarray(section["rows"], dtype=np.float64)
        expected = np.asarray(section["values"], dtype=np.float64)
        rtol, scale = float(section["rtol"]), float(section["scale"])
        if rows.ndim != 2 or expected.shape != (rows.shape[0],):
            raise ValueError("rows and values do not agree in shape")
        if not (np.isfinite(rtol) and rtol > 0 and np.isfinite(scale) and scale > 0):
            raise ValueError("rtol and scale must be positive")
        if not np.isfinite(expected).all():
            raise ValueError("values not finite")
        served = model.predict_values(rows)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelIntegrityError("parity_malformed", detail=f"{name}: {exc}") from exc
    worst = max_relative_difference(expected, served, scale)
    if not worst <= rtol:
        raise ModelIntegrityError(
            "parity_mismatch", detail=f"{name}: max relative difference {worst:.3g} > {rtol:g}"
        )
    return f"parity on {rows.shape[0]} recorded values within {rtol:g} relative"
