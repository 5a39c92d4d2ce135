"""Model manifests: ``Manifest``, parsed and validated from a model directory's manifest.json.

A manifest (written by ``mlmoat train``) says what the ONNX file beside it must be (its file
name and SHA-256) and how to call it (input and output names, features, classes, the training
envelope). Parsing is strict: any missing, mistyped or inconsistent field raises
``ModelIntegrityError`` (``manifest_malformed``). numpy only: ``security.model`` runs the graph.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from security.errors import ModelIntegrityError
from security.features import check_feature_types, parse_categories

__all__ = ["MANIFEST_FILE", "FloatArray", "Manifest"]

MANIFEST_FILE = "manifest.json"
# A manifest is a few kB; anything much larger is not ours.
_MAX_MANIFEST_BYTES = 1_000_000
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SCHEMA_VERSION = 1
_KNOWN_KEYS = frozenset(
    {
        "schema_version",
        "description",
        "estimator",
        "train_split",
        "name",
        "version",
        "feature_names",
        "classes",
        "envelope",
        "metrics",
        "framework",
        "dp_epsilon",
        "dp_data_norm",
        "onnx",
        "kind",
        "target",
        "categories",
        "feature_types",
    }
)
#: What a model outputs: a classifier's classes and probabilities, or a regressor's value.
MODEL_KINDS = ("classifier", "regressor")

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Manifest:
    """A model's manifest, parsed and validated: what the ONNX file must be and how to call it."""

    name: str
    version: str
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    # Per feature, the range seen on the training split: ``{"min": float, "max": float}``.
    envelope: Mapping[str, Mapping[str, float]]
    onnx_file: str
    onnx_sha256: str
    input_name: str
    label_output: str
    probabilities_output: str
    metrics: Mapping[str, float]
    framework: Mapping[str, Any]
    train_split: Mapping[str, Any]
    description: str
    dp_epsilon: float | None
    dp_data_norm: float | None
    # Other top-level sections (e.g. ``defences``), kept read-only for the modules that own them.
    extra: Mapping[str, Any]
    # ``classifier`` (the default: manifests written before regressors) or ``regressor``; a
    # regressor has no classes, one ``value`` output (its label/probabilities names are "")
    # and the training target's range ``(min, max)``.
    kind: str
    value_output: str
    target_range: tuple[float, float] | None
    # The envelope as arrays in feature order, for vectorised checks (read-only views).
    envelope_min: FloatArray = field(compare=False, repr=False)
    envelope_max: FloatArray = field(compare=False, repr=False)
    # Categorical features and their categories (``security.features``); empty: all numeric.
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def n_features(self) -> int:
        """The number of input features."""
        return len(self.feature_names)

    @classmethod
    def from_json(cls, data: bytes | str, *, expected_name: str | None = None) -> Manifest:
        """Parse and validate a manifest document.

        Raises:
            ModelIntegrityError: the document is not JSON, misses a field, has a field of the
                wrong type or value, or names a different model than ``expected_name``.
        """
        if len(data) > _MAX_MANIFEST_BYTES:
            raise ModelIntegrityError("manifest_malformed", detail="manifest too large")
        try:
            document = json.loads(data, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelIntegrityError("manifest_malformed", detail="not valid JSON") from exc
        return cls.from_dict(document, expected_name=expected_name)

    @classmethod
    def from_dict(cls, document: object, *, expected_name: str | None = None) -> Manifest:
        """Validate a decoded manifest and build a ``Manifest``.

        Raises:
            ModelIntegrityError: a field is missing, of the wrong type or inconsistent.
        """
        doc = _mapping(document, "manifest")
        if doc.get("schema_version") != _SCHEMA_VERSION:
            _malformed(f"schema_version is not {_SCHEMA_VERSION}")
        name = _text(doc, "name")
        if not _NAME.match(name):
            _malformed("name is not a valid model name")
        if expected_name is not None and name != expected_name:
            _malformed(f"manifest names {name!r} but lives in {expected_name!r}")
        version = _text(doc, "version")
        if not version.startswith(f"{name}-"):
            _malformed("version does not start with the model name")
        feature_names = _text_list(doc, "feature_names", minimum=1)
        kind = doc.get("kind", "classifier")
        if kind not in MODEL_KINDS:
            _malformed("kind is not classifier or regressor")
        regressor = kind == "regressor"
        classes = () if regressor else _text_list(doc, "classes", minimum=2)
        if regressor and doc.get("classes", []) != []:
            _malformed("a regressor has no classes")
        envelope_doc = _mapping(doc.get("envelope"), "envelope")
        if set(envelope_doc) != set(feature_names):
            _malformed("envelope does not cover exactly the features")
        bounds: dict[str, Mapping[str, float]] = {}
        for feature in feature_names:
            entry = _mapping(envelope_doc[feature], f"envelope.{feature}")
            low, high = _number(entry, "min"), _number(entry, "max")
            if low > high:
                _malformed(f"envelope.{feature} has min > max")
            bounds[feature] = MappingProxyType({"min": low, "max": high})
        onnx_doc = _mapping(doc.get("onnx"), "onnx")
        onnx_file = _text(onnx_doc, "file")
        # A plain file name inside the model's directory: never a path that could leave it.
        if not _FILE_NAME.match(onnx_file) or ".." in onnx_file:
            _malformed("onnx.file is not a plain file name")
        sha = _text(onnx_doc, "sha256")
        if not _SHA256.match(sha):
            _malformed("onnx.sha256 is not 64 lowercase hex digits")
        if onnx_doc.get("input_dtype", "float32") != "float32":
            _malformed("onnx.input_dtype must be float32")
        outputs = _mapping(onnx_doc.get("outputs"), "onnx.outputs")
        target_range = _target_range(doc) if regressor else None
        metrics = _mapping(doc.get("metrics"), "metrics")
        for key in metrics:
            _number(metrics, key)
        framework = _mapping(doc.get("framework"), "framework")
        train_split = _mapping(doc.get("train_split"), "train_split")
        description = doc.get("description", "")
        if not isinstance(description, str):
            _malformed("description is not a string")
        categories = parse_categories(doc.get("categories"), feature_names, bounds)
        check_feature_types(doc.get("feature_types"), feature_names, categories)
        low_arr = np.array([bounds[f]["min"] for f in feature_names], dtype=np.float64)
        high_arr = np.array([bounds[f]["max"] for f in feature_names], dtype=np.float64)
        low_arr.flags.writeable = False
        high_arr.flags.writeable = False
        return cls(
            name=name,
            version=version,
            feature_names=feature_names,
            classes=classes,
            envelope=MappingProxyType(bounds),
            onnx_file=onnx_file,
            onnx_sha256=sha,
            input_name=_text(onnx_doc, "input"),
            label_output="" if regressor else _text(outputs, "label"),
            probabilities_output="" if regressor else _text(outputs, "probabilities"),
            metrics=MappingProxyType({k: float(v) for k, v in metrics.items()}),
            framework=MappingProxyType(dict(framework)),
            train_split=MappingProxyType(dict(train_split)),
            description=description,
            dp_epsilon=_optional_number(doc, "dp_epsilon"),
            dp_data_norm=_optional_number(doc, "dp_data_norm"),
            extra=MappingProxyType({k: v for k, v in doc.items() if k not in _KNOWN_KEYS}),
            kind=kind,
            value_output=_text(outputs, "value") if regressor else "",
            target_range=target_range,
            envelope_min=low_arr,
            envelope_max=high_arr,
            categories=categories,
        )


def _target_range(doc: Mapping[str, Any]) -> tuple[float, float]:
    target = _mapping(doc.get("target"), "target")
    low, high = _number(target, "min"), _number(target, "max")
    if not low < high:
        _malformed("target has min >= max")
    return low, high


def _refuse_constant(token: str) -> float:
    raise ValueError(f"non-finite constant {token}")


def _malformed(detail: str) -> None:
    raise ModelIntegrityError("manifest_malformed", detail=detail)


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ModelIntegrityError("manifest_malformed", detail=f"{where} is not an object")
    return value


def _text(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ModelIntegrityError("manifest_malformed", detail=f"{key} is not a non-empty string")
    return value


def _text_list(doc: Mapping[str, Any], key: str, *, minimum: int) -> tuple[str, ...]:
    value = doc.get(key)
    if (
        not isinstance(value, list)
        or len(value) < minimum
        or not all(isinstance(v, str) and v for v in value)
        or len(set(value)) != len(value)
    ):
        raise ModelIntegrityError(
            "manifest_malformed", detail=f"{key} is not a list of >= {minimum} unique strings"
        )
    return tuple(value)


def _number(doc: Mapping[str, Any], key: str) -> float:
    value = doc.get(key)
    # bool is an int subclass: refuse it explicitly.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelIntegrityError("manifest_malformed", detail=f"{key} is not a finite number")
    return float(value)


def _optional_number(doc: Mapping[str, Any], key: str) -> float | None:
    if doc.get(key) is None:
        return None
    return _number(doc, key)
