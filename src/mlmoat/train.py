"""``mlmoat train``: train the served models with scikit-learn and export them as ONNX.

Each model is trained with fixed seeds on a fixed stratified split, exported with skl2onnx
(float32 input ``features``, outputs ``label`` and ``probabilities``, pinned opsets, no ZipMap)
and written as ``<out>/<name>/model.onnx`` plus ``<out>/<name>/manifest.json``. Every byte is a
function of the code, the locked library versions and the bundled data sets: running the command
twice gives identical files, which ``tests/training`` checks against the committed ``models/``.

``--dp-epsilon E`` trains the logistic-regression models with diffprivlib's differentially private
``LogisticRegression`` instead and writes them as ``<name>-dp``, with epsilon and the row-norm
bound recorded in the manifest.

``--adversarial`` trains each recipe adversarially instead (``mlmoat.adversarial``: PGD for the
logistic pipelines, HopSkipJump for the forest, re-fit on the augmented rows) and writes it as
``<name>-adv`` into ``models-adv/`` by default, beside rather than inside the served ``models/``;
the manifest's ``adversarial_training`` records the attack, epsilon and rounds, and its metrics
the undefended recipe's accuracy beside the adversarially trained one's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import skl2onnx  # type: ignore[import-untyped]
import sklearn  # type: ignore[import-untyped]
from sklearn.datasets import load_breast_cancer, load_iris  # type: ignore[import-untyped]
from sklearn.ensemble import RandomForestClassifier  # type: ignore[import-untyped]
from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
from sklearn.metrics import accuracy_score, log_loss  # type: ignore[import-untyped]
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]
from sklearn.pipeline import Pipeline  # type: ignore[import-untyped]
from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

__all__ = [
    "DEFAULT_MODELS",
    "MODEL_SPECS",
    "ONNX_OPSETS",
    "ModelSpec",
    "TrainedModel",
    "default_data_norm",
    "export_onnx",
    "load_split",
    "main",
    "manifest_bytes",
    "train_model",
    "write_model",
]

# Pinned so the exported graph does not change with the converter's default; onnxruntime >= 1.14
# implements both.
ONNX_OPSETS: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME = "features"
LABEL_OUTPUT = "label"
PROBA_OUTPUT = "probabilities"
ONNX_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
# Metrics are rounded to this many significant digits so a last-bit difference in a BLAS reduction
# cannot change the manifest (the ONNX bytes are checked separately, exactly).
_METRIC_DIGITS = 10
# Inverse regularisation strength of the private logistic regression.
_DP_C = 0.01

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """How one served model is built: its data set, split and estimator."""

    name: str
    dataset: str
    description: str
    feature_names: tuple[str, ...]
    test_fraction: float
    seed: int
    estimator: str
    make_estimator: Callable[[int], Any]
    supports_dp: bool


def _iris_features() -> tuple[str, ...]:
    # "sepal length (cm)" -> "sepal_length_cm": names that are safe as JSON keys and log fields.
    return tuple(_slug(n) for n in load_iris().feature_names)


def _cancer_features() -> tuple[str, ...]:
    return tuple(_slug(n) for n in load_breast_cancer().feature_names)


def _slug(text: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in text.lower())
    return "_".join(part for part in cleaned.split("_") if part)


def _logistic_pipeline(seed: int) -> Pipeline:
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(max_iter=2000, random_state=seed)),
        ]
    )


def _overfit_forest(seed: int) -> RandomForestClassifier:
    # Deliberately overfit: unbounded depth and no bootstrap, so every tree memorises the whole
    # training half and members get confidence 1.0 while non-members do not. The red team
    # measures membership-inference defences on this model. Pure leaves and an odd number of
    # trees mean no 50/50 vote, so the label is the argmax of the probabilities in float32 too.
    return RandomForestClassifier(
        n_estimators=51, max_depth=None, bootstrap=False, max_features="sqrt", random_state=seed
    )


MODEL_SPECS: dict[str, ModelSpec] = {
    "iris": ModelSpec(
        name="iris",
        dataset="sklearn.datasets.load_iris",
        description="Iris species from 4 flower measurements (the seed's schema).",
        feature_names=_iris_features(),
        test_fraction=0.3,
        seed=20240601,
        estimator="Pipeline(StandardScaler, LogisticRegression)",
        make_estimator=_logistic_pipeline,
        supports_dp=True,
    ),
    "breast-cancer": ModelSpec(
        name="breast-cancer",
        dataset="sklearn.datasets.load_breast_cancer",
        description="Breast tumour diagnosis from 30 cell-nucleus measurements.",
        feature_names=_cancer_features(),
        test_fraction=0.3,
        seed=20240602,
        estimator="Pipeline(StandardScaler, LogisticRegression)",
        make_estimator=_logistic_pipeline,
        supports_dp=True,
    ),
    "breast-cancer-forest": ModelSpec(
        name="breast-cancer-forest",
        dataset="sklearn.datasets.load_breast_cancer",
        description=(
            "A deliberately overfit random forest on breast cancer (unbounded depth, no "
            "bootstrap, half the rows held out): the membership-inference target."
        ),
        feature_names=_cancer_features(),
        test_fraction=0.5,
        seed=20240603,
        estimator="RandomForestClassifier(n_estimators=51, max_depth=None, bootstrap=False)",
        make_estimator=_overfit_forest,
        supports_dp=False,
    ),
}
DEFAULT_MODELS: tuple[str, ...] = tuple(MODEL_SPECS)


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """A fitted estimator with its split, its ONNX bytes and its manifest."""

    spec: ModelSpec
    name: str
    estimator: Any
    split: Arrays
    onnx_bytes: bytes
    manifest: dict[str, Any]


def _base_spec(name: str) -> ModelSpec:
    base = name.removesuffix("-dp").removesuffix("-adv")
    if base not in MODEL_SPECS:
        known = ", ".join(sorted(MODEL_SPECS))
        raise KeyError(f"unknown model {name!r} (known: {known})")
    return MODEL_SPECS[base]


def load_split(name: str) -> Arrays:
    """Return ``(X_train, y_train, X_test, y_test)`` exactly as ``mlmoat train`` used them.

    ``X`` are float64 arrays in the manifest's feature order, ``y`` the class labels as strings.
    The training rows are the members and the test rows the non-members for membership
    inference. ``<name>-dp`` and ``<name>-adv`` give the split of their base model.

    Raises:
        KeyError: ``name`` is not a known model.
    """
    spec = _base_spec(name)
    loader = load_iris if spec.dataset.endswith("load_iris") else load_breast_cancer
    bunch = loader()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target_names, dtype=str)[np.asarray(bunch.target)]
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=spec.test_fraction, random_state=spec.seed, stratify=y
    )
    return (
        np.ascontiguousarray(x_train),
        np.asarray(y_train),
        np.ascontiguousarray(x_test),
        np.asarray(y_test),
    )


def _dp_pipeline(seed: int, epsilon: float, data_norm: float) -> Pipeline:
    # Imported here: diffprivlib is only needed for the private mode, and importing it is slow.
    from diffprivlib.models import LogisticRegression as DPLogisticRegression  # type: ignore[import-untyped]

    return Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "classify",
                DPLogisticRegression(
                    epsilon=epsilon,
                    data_norm=data_norm,
                    # Stronger regularisation shrinks the effect of the objective-perturbation
                    # noise (measured: C=0.01 beat 0.1 and 1.0 at epsilon=1 on both data sets).
                    C=_DP_C,
                    max_iter=2000,
                    random_state=seed,
                ),
            ),
        ]
    )


def default_data_norm(n_features: int) -> float:
    """Return the default L2 row-norm bound for DP training on standardised features."""
    # Data-independent (a function of the feature count only), so choosing it leaks nothing.
    # A standardised row has an expected norm of sqrt(n); clipping to half of that keeps each
    # row's direction and halves the sensitivity, hence the noise (measured at epsilon=1 on both
    # data sets: better held-out accuracy than sqrt(n) or 2*sqrt(n)).
    return round(0.5 * math.sqrt(n_features), 6)


def _fit(estimator: Any, x: np.ndarray, y: np.ndarray) -> None:
    with warnings.catch_warnings():
        # diffprivlib 0.6.6 passes scipy's deprecated ``iprint`` to L-BFGS-B; harmless here.
        warnings.filterwarnings(
            "ignore",
            message=r"scipy\.optimize: The `disp` and `iprint`",
            category=DeprecationWarning,
        )
        estimator.fit(x, y)


def _register_dp_converter() -> None:
    from diffprivlib.models import LogisticRegression as DPLogisticRegression
    from skl2onnx import update_registered_converter
    from skl2onnx.operator_converters.linear_classifier import (  # type: ignore[import-untyped]
        convert_sklearn_linear_classifier,
    )
    from skl2onnx.shape_calculators.linear_classifier import (  # type: ignore[import-untyped]
        calculate_linear_classifier_output_shapes,
    )

    # diffprivlib's model is a scikit-learn LogisticRegression subclass (one-vs-rest); the stock
    # linear-classifier converter reads the same fitted attributes, including ``multi_class``.
    update_registered_converter(
        DPLogisticRegression,
        "DiffprivlibLogisticRegression",
        calculate_linear_classifier_output_shapes,
        convert_sklearn_linear_classifier,
        options={
            "zipmap": [True, False, "columns"],
            "nocl": [True, False],
            "raw_scores": [True, False],
        },
    )


def export_onnx(
    name: str,
    estimator: Any,
    n_features: int,
    n_classes: int,
    meta: dict[str, str],
    *,
    initial_types: list[tuple[str, Any]] | None = None,
    prepare: Any = None,
) -> bytes:
    """Convert a fitted classifier with skl2onnx: float32 input ``features``, outputs ``label``
    (string or int64, as the classes) and ``probabilities``, pinned opsets, no ZipMap, and
    deterministic bytes (no producer timestamp, sorted opsets and metadata).

    ``initial_types`` replaces the one float input (one input per column of a pipeline with
    categorical columns); ``prepare(model)`` then rewrites the converted graph before it is
    checked and serialised (``mlmoat.models_columns`` puts the float input back in front)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import (  # type: ignore[import-untyped]
        FloatTensorType,
        Int64TensorType,
        StringTensorType,
    )

    classes = np.asarray(_classifier_of(estimator).classes_)
    label_type = Int64TensorType if classes.dtype.kind in "iub" else StringTensorType
    model = convert_sklearn(
        estimator,
        name=f"mlmoat_{name.replace('-', '_')}",
        initial_types=initial_types or [(INPUT_NAME, FloatTensorType([None, n_features]))],
        final_types=[
            (LABEL_OUTPUT, label_type([None])),
            (PROBA_OUTPUT, FloatTensorType([None, n_classes])),
        ],
        target_opset=dict(ONNX_OPSETS),
        options={id(estimator): {"zipmap": False}},
    )
    if prepare is not None:
        prepare(model)
    return deterministic_bytes(model, meta)


def deterministic_bytes(model: Any, meta: dict[str, str]) -> bytes:
    """A converted ``ModelProto`` as deterministic bytes: mlmoat as producer, sorted opsets and
    metadata, checked by ``onnx.checker``."""
    # Everything that identifies the producer is set here, explicitly, so no timestamp, host or
    # random identifier can reach the bytes.
    model.producer_name = "mlmoat"
    model.producer_version = f"skl2onnx {skl2onnx.__version__}"
    model.domain = "mlmoat"
    model.model_version = 1
    model.doc_string = meta["description"]
    model.graph.doc_string = ""
    # skl2onnx collects the opset imports in a set: order them, or the bytes vary run to run.
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    for domain, version in opsets:
        entry = model.opset_import.add()
        entry.domain = domain
        entry.version = version
    del model.metadata_props[:]
    for key in sorted(meta):
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = meta[key]
    onnx.checker.check_model(model)
    serialised: bytes = model.SerializeToString(deterministic=True)
    return serialised


def _opsets_of(onnx_bytes: bytes) -> dict[str, int]:
    model = onnx.load_from_string(onnx_bytes)
    return {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}


def _round(value: float) -> float:
    return float(f"{value:.{_METRIC_DIGITS}g}")


def _classifier_of(estimator: Any) -> Any:
    return estimator[-1] if isinstance(estimator, Pipeline) else estimator


def _dp_cost(
    spec: ModelSpec,
    accuracy: float,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    private: bool,
) -> dict[str, float]:
    """For a private model, the same pipeline's non-private accuracy and the difference."""
    if not private:
        return {}
    baseline = spec.make_estimator(spec.seed)
    _fit(baseline, x_train, y_train)
    baseline_accuracy = float(accuracy_score(y_test, baseline.predict(x_test)))
    return {
        "non_private_accuracy": _round(baseline_accuracy),
        "dp_accuracy_cost": _round(baseline_accuracy - accuracy),
    }


def _undefended_cost(spec: ModelSpec, accuracy: float, split: Arrays) -> dict[str, float]:
    """For an adversarially trained model, the plain recipe's accuracy and the difference."""
    x_train, y_train, x_test, y_test = split
    baseline = spec.make_estimator(spec.seed)
    _fit(baseline, x_train, y_train)
    baseline_accuracy = float(accuracy_score(y_test, baseline.predict(x_test)))
    return {
        "undefended_accuracy": _round(baseline_accuracy),
        "adversarial_accuracy_cost": _round(baseline_accuracy - accuracy),
    }


def train_model(
    name: str,
    *,
    dp_epsilon: float | None = None,
    dp_data_norm: float | None = None,
    adversarial: bool = False,
) -> TrainedModel:
    """Fit model ``name`` on its fixed split and export it; return estimator, bytes and manifest.

    Raises:
        KeyError: ``name`` is not a known model.
        ValueError: DP was requested for a model that has no private variant, or epsilon <= 0,
            or together with adversarial training.
    """
    spec = _base_spec(name)
    split = load_split(spec.name)
    x_train, y_train, x_test, y_test = split
    n_features = len(spec.feature_names)
    adversarial_doc: dict[str, Any] | None = None
    data_norm: float | None = None
    if adversarial:
        if dp_epsilon is not None:
            raise ValueError("--adversarial and --dp-epsilon are separate recipes")
        from mlmoat.adversarial import adversarial_fit

        served_name = f"{spec.name}-adv"
        estimator, recipe, added = adversarial_fit(spec.make_estimator, spec.seed, x_train, y_train)
        estimator_desc = f"{spec.estimator}, adversarially trained"
        adversarial_doc = {**recipe.to_dict(), "adversarial_rows": added}
    elif dp_epsilon is None:
        served_name = spec.name
        estimator = spec.make_estimator(spec.seed)
        estimator_desc = spec.estimator
    else:
        if not spec.supports_dp:
            raise ValueError(f"model {spec.name!r} has no differentially private variant")
        if not (dp_epsilon > 0 and math.isfinite(dp_epsilon)):
            raise ValueError("--dp-epsilon must be a finite number > 0")
        served_name = f"{spec.name}-dp"
        data_norm = dp_data_norm if dp_data_norm is not None else default_data_norm(n_features)
        if not (data_norm > 0 and math.isfinite(data_norm)):
            raise ValueError("--dp-data-norm must be a finite number > 0")
        estimator = _dp_pipeline(spec.seed, dp_epsilon, data_norm)
        estimator_desc = f"Pipeline(StandardScaler, diffprivlib.LogisticRegression(C={_DP_C}))"
        _register_dp_converter()
    if not adversarial:
        _fit(estimator, x_train, y_train)

    classes = [str(c) for c in _classifier_of(estimator).classes_]
    proba = estimator.predict_proba(x_test)
    accuracy = float(accuracy_score(y_test, estimator.predict(x_test)))
    loss = float(log_loss(y_test, proba, labels=classes))
    description = spec.description
    if dp_epsilon is not None:
        description = f"{description} Trained with differential privacy (epsilon={dp_epsilon})."
    if adversarial_doc is not None:
        description = (
            f"{description} Adversarially trained ({adversarial_doc['attack']}, "
            f"epsilon={adversarial_doc['epsilon']}, {adversarial_doc['rounds']} rounds)."
        )
    onnx_bytes = export_onnx(
        served_name,
        estimator,
        n_features,
        len(classes),
        {"description": description, "mlmoat.model": served_name},
    )
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    manifest: dict[str, Any] = {
        "schema_version": 1,
        "name": served_name,
        "version": f"{served_name}-{digest[:12]}",
        "description": description,
        "estimator": estimator_desc,
        "framework": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "target_opset": {k or "ai.onnx": v for k, v in ONNX_OPSETS.items()},
            "opset": _opsets_of(onnx_bytes),
        },
        "feature_names": list(spec.feature_names),
        "classes": classes,
        "envelope": {
            feature: {"min": float(x_train[:, i].min()), "max": float(x_train[:, i].max())}
            for i, feature in enumerate(spec.feature_names)
        },
        "metrics": {
            "accuracy": _round(accuracy),
            "log_loss": _round(loss),
            "n_train": int(len(y_train)),
            "n_test": int(len(y_test)),
            **_dp_cost(
                spec, accuracy, x_train, y_train, x_test, y_test, private=dp_epsilon is not None
            ),
            **(_undefended_cost(spec, accuracy, split) if adversarial else {}),
        },
        "train_split": {
            "dataset": spec.dataset,
            "seed": spec.seed,
            "test_fraction": spec.test_fraction,
            "stratified": True,
        },
        "dp_epsilon": dp_epsilon,
        "dp_data_norm": data_norm,
        "onnx": {
            "file": ONNX_FILE,
            "sha256": digest,
            "size_bytes": len(onnx_bytes),
            "input": INPUT_NAME,
            "input_dtype": "float32",
            "outputs": {"label": LABEL_OUTPUT, "probabilities": PROBA_OUTPUT},
        },
    }
    if adversarial_doc is not None:
        manifest["adversarial_training"] = adversarial_doc
    return TrainedModel(
        spec=spec,
        name=served_name,
        estimator=estimator,
        split=split,
        onnx_bytes=onnx_bytes,
        manifest=manifest,
    )


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """Serialise a manifest deterministically: sorted keys, 2-space indent, trailing newline."""
    text = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
    return (text + "\n").encode("ascii")


def write_model(trained: TrainedModel, out_dir: Path) -> Path:
    """Write ``model.onnx`` and ``manifest.json`` into ``out_dir/<name>/``; return that folder."""
    target = out_dir / trained.name
    target.mkdir(parents=True, exist_ok=True)
    # The ONNX file first: a reader that sees the new manifest must find the bytes it hashes.
    (target / ONNX_FILE).write_bytes(trained.onnx_bytes)
    (target / MANIFEST_FILE).write_bytes(manifest_bytes(trained.manifest))
    return target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlmoat train",
        description="Train the served models with scikit-learn and export ONNX artifacts.",
    )
    parser.add_argument(
        "--model",
        action="append",
        choices=sorted(MODEL_SPECS),
        help="a model to train (repeatable; default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: models, or models-adv with --adversarial)",
    )
    parser.add_argument(
        "--dp-epsilon",
        type=float,
        default=None,
        help="train with diffprivlib (differentially private) at this epsilon; writes <name>-dp",
    )
    parser.add_argument(
        "--dp-data-norm",
        type=float,
        default=None,
        help="L2 bound on a standardised training row for DP mode (default sqrt(n_features)/2)",
    )
    parser.add_argument(
        "--adversarial",
        action="store_true",
        help="train adversarially (PGD for the logistic models, HopSkipJump for the forest); "
        "writes <name>-adv",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mlmoat train``; print one JSON summary line per model written."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.model:
        names = list(dict.fromkeys(args.model))
    elif args.dp_epsilon is not None:
        names = [n for n, spec in MODEL_SPECS.items() if spec.supports_dp]
    else:
        names = list(DEFAULT_MODELS)
    out = args.out or Path("models-adv" if args.adversarial else "models")
    for name in names:
        try:
            trained = train_model(
                name,
                dp_epsilon=args.dp_epsilon,
                dp_data_norm=args.dp_data_norm,
                adversarial=args.adversarial,
            )
        except ValueError as exc:
            print(f"mlmoat train: {exc}", file=sys.stderr)
            return 2
        target = write_model(trained, out)
        summary = {
            "model": trained.name,
            "version": trained.manifest["version"],
            "path": str(target),
            "accuracy": trained.manifest["metrics"]["accuracy"],
            "log_loss": trained.manifest["metrics"]["log_loss"],
            "dp_epsilon": trained.manifest["dp_epsilon"],
            "adversarial": trained.manifest.get("adversarial_training"),
            "size_bytes": len(trained.onnx_bytes),
        }
        print(json.dumps(summary, sort_keys=True))
    return 0
