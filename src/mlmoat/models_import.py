"""``mlmoat models import NAME``: a fitted scikit-learn classifier and its data -> ``models/NAME/``
(a regressor: ``mlmoat.models_regress``).

Writes the three files every served model has, so that the next ``make build`` / ``make local``
/ ``sam deploy`` serves it at ``/models/NAME/predict`` with every defence:

* ``model.onnx``: the estimator converted with skl2onnx at the pinned opsets (float32 input
  ``features``, no ZipMap), or the user's own ONNX file (``--onnx``);
* ``manifest.json``: feature names (the CSV's columns, normalised to safe identifiers), classes,
  the training envelope, held-out metrics, the artifact's SHA-256, where the data came from (file
  name and SHA-256, target, seed, split: never a row of it), and a parity sample (``parity``:
  rows drawn uniformly inside the envelope with the original estimator's probabilities, which
  ``mlmoat models check`` compares the artifact against);
* ``defences.json``: squeezing, smoothing and the extraction monitor's reference, calibrated on
  the user's data by ``mlmoat.redteam.calibrate`` as for the built-in models.

The estimator is loaded safely or not at all: ``.skops`` files through skops' loader, with every
type it does not trust listed and refused unless named with ``--trust``; ``.joblib``/``.pkl``
only with ``--allow-pickle`` (unpickling runs code from the file). Before anything is written the
converted graph must agree with the estimator on every held-out row (labels identical,
probabilities within ``PARITY_TOLERANCE``), compared on the float32 rows the API will feed it;
otherwise the import is refused with the rows and the differences. The same inputs give the same
bytes.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PARITY_TOLERANCE = 1e-5
PARITY_SAMPLE_ROWS = 32
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
_MAX_CSV_BYTES = 500_000_000
_IDENTIFIER = re.compile(r"[^a-z0-9]+")


class ImportRefused(ValueError):
    """The import cannot go on; the message says why and what to do (no traceback)."""


@dataclass(frozen=True)
class Dataset:
    """A CSV's feature columns (normalised names, in order) and its target column.

    ``x`` is float: a categorical column (``categories``: column index -> its categories) holds
    each value's category index (``mlmoat.models_columns``).
    """

    feature_names: tuple[str, ...]
    columns: tuple[str, ...]
    x: np.ndarray
    y: np.ndarray
    sha256: str
    file_name: str
    categories: Mapping[int, tuple[str, ...]] = field(default_factory=dict)


def safe_names(columns: Sequence[str]) -> tuple[str, ...]:
    """Column names as feature names: ``[a-z0-9_]``, not starting with a digit, unique."""
    names: list[str] = []
    for column in columns:
        name = _IDENTIFIER.sub("_", column.strip().lower()).strip("_") or "feature"
        if name[0].isdigit():
            name = f"f_{name}"
        base, n = name, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return tuple(names)


def read_csv(
    path: Path,
    *,
    target: str,
    features: Sequence[str] | None = None,
    categories: Mapping[str, Sequence[str]] | None = None,
) -> Dataset:
    """Read a CSV with a header row: ``features`` (default: every column but ``target``).

    A column named in ``categories`` is categorical: kept as strings, each one of its
    categories, stored as its index. Every other column must be numbers.

    Raises:
        ImportRefused: no such file or column, a non-numeric or non-finite value in a numeric
            column, a value outside a categorical column's categories (the row and column are
            named), too few rows.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ImportRefused(f"cannot read {path}: {exc.strerror}") from exc
    if len(raw) > _MAX_CSV_BYTES:
        raise ImportRefused(f"{path.name} is over {_MAX_CSV_BYTES // 1_000_000} MB")
    rows = list(csv.reader(raw.decode("utf-8-sig").splitlines()))
    if len(rows) < 2:
        raise ImportRefused(f"{path.name}: a header row and at least one data row are needed")
    header = [h.strip() for h in rows[0]]
    if target not in header:
        raise ImportRefused(f"{path.name}: no column {target!r} (columns: {', '.join(header)})")
    chosen = list(features) if features else [h for h in header if h != target]
    missing = [c for c in chosen if c not in header]
    if missing or target in chosen or not chosen:
        raise ImportRefused(
            f"{path.name}: feature columns not found or include the target: {missing}"
        )
    index = [header.index(c) for c in chosen]
    target_index = header.index(target)
    lookup = {
        j: {value: i for i, value in enumerate(categories[c])}
        for j, c in enumerate(chosen)
        if categories and c in categories
    }
    x = np.empty((len(rows) - 1, len(chosen)), dtype=np.float64)
    y: list[str] = []
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ImportRefused(
                f"{path.name}, line {r}: {len(row)} fields, header has {len(header)}"
            )
        for j, i in enumerate(index):
            if j in lookup:
                if row[i] not in lookup[j]:
                    raise ImportRefused(
                        f"{path.name}, line {r}: column {chosen[j]!r} holds a value its "
                        "encoder was not fitted on"
                    )
                x[r - 2, j] = lookup[j][row[i]]
                continue
            try:
                value = float(row[i])
            except ValueError:
                raise ImportRefused(
                    f"{path.name}, line {r}: column {chosen[j]!r} is not a number (a "
                    "categorical column needs a OneHotEncoder or OrdinalEncoder in the "
                    "estimator's ColumnTransformer)"
                ) from None
            if not math.isfinite(value):
                raise ImportRefused(f"{path.name}, line {r}: column {chosen[j]!r} is not finite")
            x[r - 2, j] = value
        y.append(row[target_index].strip())
    return Dataset(
        feature_names=safe_names(chosen),
        columns=tuple(chosen),
        x=x,
        y=np.asarray(y, dtype=object),
        sha256=hashlib.sha256(raw).hexdigest(),
        file_name=path.name,
        categories={j: tuple(categories[chosen[j]]) for j in lookup} if categories else {},
    )


def load_estimator(path: Path, *, allow_pickle: bool, trust: Sequence[str]) -> tuple[Any, str]:
    """Load a fitted estimator; return it and the format (``skops`` or ``pickle``).

    Raises:
        ImportRefused: an untrusted type in a skops file, a pickle without ``--allow-pickle``,
            an unknown file type, or a file that does not load.
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ImportRefused(f"no such file: {path}")
    if suffix == ".skops":
        from skops.io import get_untrusted_types, load  # type: ignore[import-untyped]

        try:
            untrusted = list(get_untrusted_types(file=path))
        except Exception as exc:  # noqa: BLE001 - any failure to parse means "not a skops file"
            raise ImportRefused(f"{path.name} is not a readable skops file") from exc
        refused = sorted(set(untrusted) - set(trust))
        if refused:
            raise ImportRefused(
                f"{path.name} holds types skops does not trust: {', '.join(refused)}. Name the "
                "ones you recognise with --trust TYPE[,TYPE...] (loading runs their code)."
            )
        return load(path, trusted=untrusted), "skops"
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ImportRefused(
                f"{path.name} is a pickle: loading it runs code from the file. Only for a file "
                "you made: add --allow-pickle (or save it with skops.io.dump)."
            )
        import joblib  # type: ignore[import-untyped]

        try:
            return joblib.load(path), "pickle"
        except Exception as exc:  # noqa: BLE001 - a broken pickle can raise anything
            raise ImportRefused(f"{path.name} does not load: {type(exc).__name__}") from exc
    raise ImportRefused(f"{path.name}: expected .skops, .joblib, .pkl or .pickle (or use --onnx)")


def classifier_of(estimator: Any) -> Any:
    """The final step of a pipeline, or the estimator itself."""
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def describe(estimator: Any) -> str:
    """``Pipeline(StandardScaler, LogisticRegression)`` style."""
    steps = getattr(estimator, "steps", None)
    if steps:
        return f"Pipeline({', '.join(describe(step) for _, step in steps)})"
    return type(estimator).__name__


def check_classifier(estimator: Any, n_features: int) -> tuple[str, ...]:
    """The classifier's classes, as strings.

    Raises:
        ImportRefused: not a fitted classifier, or fitted on another number of features.
    """
    final = classifier_of(estimator)
    if not hasattr(final, "classes_"):
        kind = "a regressor" if hasattr(estimator, "predict") else "not a fitted estimator"
        raise ImportRefused(
            f"{describe(estimator)} is {kind}: mlmoat serves fitted classifiers "
            "(predict_proba and classes_)"
        )
    if not hasattr(estimator, "predict_proba"):
        raise ImportRefused(
            f"{describe(estimator)} has no predict_proba: wrap it in "
            "sklearn.calibration.CalibratedClassifierCV (the defences need probabilities)"
        )
    fitted = getattr(estimator, "n_features_in_", n_features)
    if fitted != n_features:
        raise ImportRefused(
            f"the estimator was fitted on {fitted} features; the CSV gives {n_features}"
        )
    classes = tuple(str(c) for c in final.classes_)
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ImportRefused("the classifier needs at least 2 distinct classes")
    return classes


def split(
    data: Dataset, *, test: Dataset | None, test_fraction: float, seed: int, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and held-out rows: ``test`` when given, else a split of ``data`` (stratified by
    the target unless ``stratify`` is false: a regressor's target has no strata)."""
    if test is not None:
        if test.columns != data.columns:
            raise ImportRefused("--test-data has other feature columns than --data")
        return data.x, data.y, test.x, test.y
    if not 0 < test_fraction < 1:
        raise ImportRefused("--test-fraction must be between 0 and 1")
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

    try:
        x_train, x_test, y_train, y_test = train_test_split(
            data.x,
            data.y,
            test_size=test_fraction,
            random_state=seed,
            stratify=data.y if stratify else None,
        )
    except ValueError as exc:
        raise ImportRefused(f"cannot split the data stratified: {exc}") from exc
    return x_train, y_train, x_test, y_test


def split_record(
    data: Dataset, test: Dataset | None, args: Any, *, stratified: bool
) -> dict[str, Any]:
    """The manifest's ``train_split``: where the rows came from (never a row of them)."""
    return {
        "dataset": "csv",
        "file": data.file_name,
        "sha256": data.sha256,
        "target": args.target,
        "columns": dict(zip(data.feature_names, data.columns, strict=True)),
        "seed": args.seed,
        "stratified": stratified,
        **(
            {"test_file": test.file_name, "test_sha256": test.sha256}
            if test is not None
            else {"test_fraction": args.test_fraction}
        ),
    }


def convert(
    name: str,
    estimator: Any,
    n_features: int,
    n_classes: int,
    description: str,
    *,
    data: Dataset | None = None,
) -> bytes:
    """skl2onnx at the pinned opsets, deterministic bytes (``mlmoat.train.export_onnx``); with
    categorical columns in ``data``, one float input all the same (``mlmoat.models_columns``).

    Raises:
        ImportRefused: skl2onnx cannot convert a step (the message names it).
    """
    from mlmoat.models_columns import export_mixed
    from mlmoat.train import export_onnx

    meta = {"description": description, "mlmoat.model": name}
    try:
        if data is not None and data.categories:
            return export_mixed(name, estimator, data.columns, data.categories, n_classes, meta)
        return export_onnx(name, estimator, n_features, n_classes, meta)
    except CONVERSION_ERRORS as exc:
        raise conversion_refused(estimator, exc) from exc


#: What skl2onnx raises for a step it cannot convert.
CONVERSION_ERRORS = (RuntimeError, NameError, TypeError, ValueError)


def conversion_refused(estimator: Any, exc: BaseException) -> ImportRefused:
    """The refusal of a conversion skl2onnx failed, naming the step where it can."""
    step = re.search(r"<class '([^']+)'>", str(exc))
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    what = f"no converter for {step.group(1)}" if step else first[:160]
    return ImportRefused(
        f"skl2onnx cannot convert {describe(estimator)} at the pinned opsets "
        f"(ai.onnx 17, ai.onnx.ml 3): {what}"
    )


def onnx_outputs(onnx_bytes: bytes, n_features: int, n_classes: int) -> tuple[str, str, str]:
    """The graph's input name and its label and probability outputs.

    Raises:
        ImportRefused: not one float input of ``n_features``, or no ``(n, n_classes)`` float
            output (a ZipMap output is a list of maps: export with ``zipmap=False``).
    """
    import onnxruntime as ort  # type: ignore[import-untyped]

    try:
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own hierarchy
        raise ImportRefused("onnxruntime cannot load the ONNX file") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or inputs[0].shape[-1] != n_features:
        raise ImportRefused(f"the ONNX graph needs one float input of {n_features} features")
    outputs = session.get_outputs()
    proba = [o.name for o in outputs if o.type == "tensor(float)" and o.shape[-1] == n_classes]
    labels = [o.name for o in outputs if o.name not in proba]
    if len(proba) != 1 or not labels:
        raise ImportRefused(
            "the ONNX graph needs a label output and one (n, classes) float probability output "
            "(export with options={'zipmap': False})"
        )
    return inputs[0].name, labels[0], proba[0]


def onnx_classes(onnx_bytes: bytes) -> tuple[str, ...]:
    """The class labels an ONNX classifier declares (``classlabels_*`` of its ai.onnx.ml node).

    Raises:
        ImportRefused: no classifier node declares them.
    """
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "classlabels_strings":
                return tuple(v.decode() for v in attribute.strings)
            if attribute.name in ("classlabels_int64s", "classlabels_ints"):
                return tuple(str(v) for v in attribute.ints)
    raise ImportRefused("the ONNX graph declares no class labels (no ai.onnx.ml classifier node)")


def onnx_probabilities(onnx_bytes: bytes, input_name: str, proba: str, x: np.ndarray) -> np.ndarray:
    """The graph's probabilities for ``x`` (as float32, the way the API feeds it)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (out,) = session.run([proba], {input_name: np.ascontiguousarray(x, dtype=np.float32)})
    return np.asarray(out, dtype=np.float64)


def parity_failures(
    estimator: Any, onnx_proba: np.ndarray, x: np.ndarray, classes: tuple[str, ...]
) -> list[str]:
    """Rows where graph and estimator disagree (label, or a probability beyond tolerance)."""
    rows32 = np.asarray(x, dtype=np.float32).astype(np.float64)
    expected = np.asarray(estimator.predict_proba(rows32), dtype=np.float64)
    labels = np.asarray([str(v) for v in estimator.predict(rows32)])
    served = np.asarray(classes)[onnx_proba.argmax(axis=1)]
    diff = np.abs(expected - onnx_proba).max(axis=1)
    bad = np.flatnonzero((labels != served) | (diff > PARITY_TOLERANCE))
    return [
        f"row {i}: label {labels[i]} vs {served[i]}, max probability difference {diff[i]:.2e}"
        for i in bad[:10]
    ] + ([f"... and {len(bad) - 10} more rows"] if len(bad) > 10 else [])


def parity_rows(
    lower: np.ndarray, upper: np.ndarray, seed: int, categorical: Sequence[int] = ()
) -> np.ndarray:
    """``PARITY_SAMPLE_ROWS`` rows uniform in the envelope (as float32 values), a categorical
    feature's index uniform among its categories (``upper`` is its last index)."""
    rng = np.random.default_rng(seed)
    rows = rng.uniform(lower, upper, size=(PARITY_SAMPLE_ROWS, lower.shape[0]))
    for j in categorical:
        top = upper[j]
        rows[:, j] = np.minimum(np.floor(rows[:, j] * (top + 1) / max(top, 1.0)), top)
    return np.asarray(rows, dtype=np.float32).astype(np.float64)


def parity_sample(
    estimator: Any | None,
    onnx_proba_of: Any,
    lower: np.ndarray,
    upper: np.ndarray,
    seed: int,
    categorical: Sequence[int] = (),
) -> dict[str, Any]:
    """Rows uniform in the envelope with the reference probabilities (estimator's, else graph's);
    a categorical feature's index uniform among its categories."""
    rows = parity_rows(lower, upper, seed, categorical)
    reference = estimator.predict_proba(rows) if estimator is not None else onnx_proba_of(rows)
    return {
        "rows": [[float(f"{v:.9g}") for v in row] for row in rows.tolist()],
        "probabilities": [[round(float(p), 9) for p in row] for row in np.asarray(reference)],
        "atol": PARITY_TOLERANCE,
        "reference": "estimator" if estimator is not None else "onnx",
    }
