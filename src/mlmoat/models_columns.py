"""Categorical columns of an imported pipeline: which they are, their categories, the ONNX graph.

A CSV column is **categorical** when the estimator's ``ColumnTransformer`` sends it to a
categorical encoder (``OneHotEncoder``, ``OrdinalEncoder``, or one skl2onnx cannot convert, such
as ``TargetEncoder``, which the conversion then refuses by name). Every other column must hold
numbers only: a column of strings that no encoder takes is refused at import. The allowed
categories are the fitted encoder's ``categories_`` (in its order), which must be exactly the
values the CSV holds in that column; they must be strings (an encoder fitted on numbers is
refused: cast the column with ``astype(str)`` before fitting).

Rows are carried as float vectors everywhere (the API, the defences, the monitor, the red team):
a categorical feature as its category's index ``0 .. k-1`` (``security.features``). The ONNX
graph keeps one float input ``features`` of ``n_features`` columns: the pipeline is converted
with one input per column (float for numeric, string for categorical, the way skl2onnx converts
a ``ColumnTransformer`` on a DataFrame), and a prefix is put in front that splits the float
input into its columns and turns each index back into its category string (``Round``, ``Clip``
to ``0 .. k-1``, then an ``ai.onnx.ml`` ``LabelEncoder`` from float keys to the category
strings). So ``security.model`` feeds the graph exactly as it feeds a numeric one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from security.features import MAX_CATEGORIES, MAX_CATEGORY_CHARS

#: Encoders whose columns are categorical (converted by skl2onnx or refused by name).
CATEGORICAL_ENCODERS = ("OneHotEncoder", "OrdinalEncoder", "TargetEncoder")


class ColumnsRefused(ValueError):
    """The estimator's categorical columns cannot be served; the message says why."""


def encoder_categories(estimator: Any) -> dict[str, tuple[str, ...]]:
    """CSV column name -> the categories its fitted encoder holds (empty: no categorical column).

    Raises:
        ColumnsRefused: an encoder selects columns by position rather than by name, holds
            categories that are not strings, too many or too long ones.
    """
    found: dict[str, tuple[str, ...]] = {}
    for transformer in _column_transformers(estimator):
        names = list(getattr(transformer, "feature_names_in_", []))
        for _, step, columns in transformer.transformers_:
            encoder = _encoder_in(step)
            if encoder is None:
                continue
            kind = type(encoder).__name__
            selected = _column_names(columns, names, kind)
            for column, categories in zip(selected, encoder.categories_, strict=True):
                values = list(categories)
                if not all(isinstance(v, str) for v in values):
                    raise ColumnsRefused(
                        f"{kind} on column {column!r} was fitted on non-string values: mlmoat "
                        "takes a categorical column as strings (fit on df[col].astype(str))"
                    )
                if len(values) > MAX_CATEGORIES or any(
                    not v or len(v) > MAX_CATEGORY_CHARS for v in values
                ):
                    raise ColumnsRefused(
                        f"column {column!r}: at most {MAX_CATEGORIES} categories of 1 to "
                        f"{MAX_CATEGORY_CHARS} characters"
                    )
                found[column] = tuple(values)
    return found


def check_categories(
    x: np.ndarray, columns: Sequence[str], found: Mapping[str, Sequence[str]]
) -> None:
    """Every category of every encoder must occur in the data (the codes of ``x``).

    Raises:
        ColumnsRefused: an encoder was fitted on categories the CSV does not hold.
    """
    for j, column in enumerate(columns):
        if column not in found:
            continue
        seen = set(np.unique(x[:, j]).astype(int).tolist())
        absent = [c for i, c in enumerate(found[column]) if i not in seen]
        if absent:
            raise ColumnsRefused(
                f"the encoder of column {column!r} holds {len(absent)} categories the CSV "
                "does not (it was fitted on other data): the allowed categories must be the "
                "training data's"
            )


class FrameEstimator:
    """The user's pipeline behind float rows: decodes category indices into a DataFrame."""

    def __init__(
        self, estimator: Any, columns: Sequence[str], categories: Mapping[int, Sequence[str]]
    ) -> None:
        self.estimator = estimator
        self.columns = list(columns)
        self.categories = {j: np.asarray(list(v), dtype=object) for j, v in categories.items()}

    def frame(self, rows: np.ndarray) -> Any:
        """The rows as the DataFrame the pipeline was fitted on (indices -> category strings)."""
        import pandas as pd  # type: ignore[import-untyped]

        data: dict[str, Any] = {}
        for j, column in enumerate(self.columns):
            values = np.asarray(rows[:, j], dtype=np.float64)
            names = self.categories.get(j)
            if names is None:
                data[column] = values
            else:
                codes = np.clip(np.rint(values), 0, len(names) - 1).astype(int)
                data[column] = names[codes]
        return pd.DataFrame(data, columns=self.columns)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """The pipeline's probabilities for float rows."""
        return np.asarray(self.estimator.predict_proba(self.frame(rows)))

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """The pipeline's labels for float rows."""
        return np.asarray(self.estimator.predict(self.frame(rows)))


def export_mixed(
    name: str,
    estimator: Any,
    columns: Sequence[str],
    categories: Mapping[int, Sequence[str]],
    n_classes: int,
    meta: dict[str, str],
) -> bytes:
    """Convert a classifier pipeline with categorical columns to a graph with one float input.

    Raises the converter's own exceptions (``mlmoat.models_import.convert`` names the step).
    """
    from mlmoat.train import export_onnx

    initial_types, prepare = mixed_inputs(columns, categories)
    return export_onnx(
        name,
        estimator,
        len(columns),
        n_classes,
        meta,
        initial_types=initial_types,
        prepare=prepare,
    )


def mixed_inputs(
    columns: Sequence[str], categories: Mapping[int, Sequence[str]]
) -> tuple[list[tuple[str, Any]], Callable[[Any], None]]:
    """What a conversion of a pipeline with categorical columns needs (see above), whatever its
    outputs (a classifier's or a regressor's): skl2onnx's initial types, one per column (string
    for a categorical one, float otherwise), and the step that rewrites the converted model so
    one float input ``features`` feeds them."""
    from skl2onnx.common.data_types import (  # type: ignore[import-untyped]
        FloatTensorType,
        StringTensorType,
    )

    initial_types = [
        (column, StringTensorType([None, 1]) if j in categories else FloatTensorType([None, 1]))
        for j, column in enumerate(columns)
    ]
    return initial_types, lambda model: _float_input_prefix(model, categories)


def category_bounds(
    lower: np.ndarray, upper: np.ndarray, categories: Mapping[int, Sequence[str]]
) -> tuple[np.ndarray, np.ndarray]:
    """The envelope with each categorical feature's bounds set to its indices, exactly 0..k-1."""
    lower, upper = np.array(lower, dtype=np.float64), np.array(upper, dtype=np.float64)
    for j, values in categories.items():
        lower[j], upper[j] = 0.0, float(len(values) - 1)
    return lower, upper


def feature_sections(
    feature_names: Sequence[str], categories: Mapping[int, Sequence[str]]
) -> dict[str, Any]:
    """The manifest's ``categories`` and ``feature_types`` (``security.features``); nothing for
    a model with numeric features only (its manifest stays as before categorical features)."""
    if not categories:
        return {}
    return {
        "categories": {feature_names[j]: list(v) for j, v in categories.items()},
        "feature_types": {
            name: "categorical" if j in categories else "numeric"
            for j, name in enumerate(feature_names)
        },
    }


def _float_input_prefix(model: Any, categories: Mapping[int, Sequence[str]]) -> None:
    """Replace the per-column inputs by one float input and the nodes that decode it."""
    from onnx import TensorProto, helper

    from mlmoat.train import INPUT_NAME

    graph = model.graph
    ml_opset = next((o.version for o in model.opset_import if o.domain == "ai.onnx.ml"), 0)
    if ml_opset == 0:
        model.opset_import.add(domain="ai.onnx.ml", version=2)
        ml_opset = 2
    inputs = [i.name for i in graph.input]  # skl2onnx's (sanitised) column names, in order
    outputs = [f"mlmoat_index_{j}" if j in categories else n for j, n in enumerate(inputs)]
    # One Gather per column ([n, 1] each): valid at every opset skl2onnx may have chosen.
    prefix = [
        helper.make_node(
            "Gather", [INPUT_NAME, f"mlmoat_column_{j}"], [out], axis=1, name=f"mlmoat_gather_{j}"
        )
        for j, out in enumerate(outputs)
    ]
    initializers = [
        helper.make_tensor(f"mlmoat_column_{j}", TensorProto.INT64, [1], [j])
        for j in range(len(inputs))
    ]
    for j, values in sorted(categories.items()):
        index, low, high = f"mlmoat_index_{j}", f"mlmoat_low_{j}", f"mlmoat_high_{j}"
        initializers += [
            helper.make_tensor(low, TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor(high, TensorProto.FLOAT, [], [float(len(values) - 1)]),
        ]
        prefix += [
            helper.make_node("Round", [index], [f"{index}_r"], name=f"mlmoat_round_{j}"),
            helper.make_node(
                "Clip", [f"{index}_r", low, high], [f"{index}_c"], name=f"mlmoat_clip_{j}"
            ),
            helper.make_node(
                "Cast",
                [f"{index}_c"],
                [f"{index}_i"],
                to=TensorProto.INT64,
                name=f"mlmoat_cast_{j}",
            ),
            _decoder(f"{index}_i", inputs[j], list(values), ml_opset, f"mlmoat_decode_{j}"),
        ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(prefix + nodes)
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, len(inputs)])
    )
    graph.initializer.extend(initializers)
    # Round and Clip with bounds as inputs need ai.onnx 11 (still below the pinned 17).
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 11:
            opset.version = 11


def _decoder(source: str, target: str, values: list[str], ml_opset: int, name: str) -> Any:
    """Index (int64) -> category string, in the ``LabelEncoder`` of the graph's ai.onnx.ml."""
    from onnx import helper

    if ml_opset == 1:  # LabelEncoder-1 maps an int64 to ``classes_strings[index]``
        return helper.make_node(
            "LabelEncoder",
            [source],
            [target],
            domain="ai.onnx.ml",
            classes_strings=values,
            default_string="",
            name=name,
        )
    return helper.make_node(
        "LabelEncoder",
        [source],
        [target],
        domain="ai.onnx.ml",
        keys_int64s=list(range(len(values))),
        values_strings=values,
        default_string="",
        name=name,
    )


def _column_transformers(estimator: Any) -> list[Any]:
    steps = [step for _, step in getattr(estimator, "steps", [])] or [estimator]
    return [step for step in steps if hasattr(step, "transformers_")]


def _encoder_in(step: Any) -> Any | None:
    """The categorical encoder of a ColumnTransformer entry (itself, or inside a Pipeline)."""
    for candidate in [step] + [s for _, s in getattr(step, "steps", [])]:
        if type(candidate).__name__ in CATEGORICAL_ENCODERS and hasattr(candidate, "categories_"):
            return candidate
    return None


def _column_names(columns: Any, names: list[str], kind: str) -> list[str]:
    selected = [columns] if isinstance(columns, str) else list(np.atleast_1d(columns))
    if all(isinstance(c, str) for c in selected):
        return [str(c) for c in selected]
    # Positions (or a mask) into a DataFrame the pipeline was fitted on: its column names.
    if names and all(isinstance(c, int | np.integer | bool | np.bool_) for c in selected):
        if all(isinstance(c, bool | np.bool_) for c in selected):
            return [name for name, keep in zip(names, selected, strict=True) if keep]
        return [names[int(c)] for c in selected]
    raise ColumnsRefused(
        f"{kind} selects its columns by position in an array: fit the pipeline on a DataFrame "
        "(the CSV's header names its columns)"
    )
