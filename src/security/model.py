"""Served models: ONNX artifacts verified against their manifests, predicted with onnxruntime.

Each model lives in ``<model_dir>/<name>/`` as ``manifest.json`` and the ONNX file it names
(written by ``mlmoat train``). ``ModelRegistry.load`` runs once, at init: it parses and validates
every manifest, reads the ONNX bytes once, checks their SHA-256 against the manifest and only
then builds the ``InferenceSession`` from those same bytes, so what runs is exactly what was
hashed. Any mismatch raises ``ModelIntegrityError`` and the function refuses to start.

This module imports numpy and onnxruntime only (never scikit-learn: ~0.9 s of cold start and
too large for a Lambda package: docs/models.md, "Why ONNX").
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state  # type: ignore[import-untyped]

from security.errors import ModelIntegrityError, NotFoundError

__all__ = [
    "Manifest",
    "ModelRegistry",
    "ServedModel",
    "MANIFEST_FILE",
]

MANIFEST_FILE = "manifest.json"
# A manifest is a few kB; anything much larger is not ours.
_MAX_MANIFEST_BYTES = 1_000_000
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# onnxruntime's own exceptions for a model it cannot load; anything else propagates unchanged.
_ORT_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
)
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
    }
)

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
    # The envelope as arrays in feature order, for vectorised checks (read-only views).
    envelope_min: FloatArray = field(compare=False, repr=False)
    envelope_max: FloatArray = field(compare=False, repr=False)

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
        classes = _text_list(doc, "classes", minimum=2)
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
        metrics = _mapping(doc.get("metrics"), "metrics")
        for key in metrics:
            _number(metrics, key)
        framework = _mapping(doc.get("framework"), "framework")
        train_split = _mapping(doc.get("train_split"), "train_split")
        description = doc.get("description", "")
        if not isinstance(description, str):
            _malformed("description is not a string")
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
            label_output=_text(outputs, "label"),
            probabilities_output=_text(outputs, "probabilities"),
            metrics=MappingProxyType({k: float(v) for k, v in metrics.items()}),
            framework=MappingProxyType(dict(framework)),
            train_split=MappingProxyType(dict(train_split)),
            description=description,
            dp_epsilon=_optional_number(doc, "dp_epsilon"),
            dp_data_norm=_optional_number(doc, "dp_data_norm"),
            extra=MappingProxyType({k: v for k, v in doc.items() if k not in _KNOWN_KEYS}),
            envelope_min=low_arr,
            envelope_max=high_arr,
        )


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


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Lambda gives a fraction of a vCPU at small memory sizes; these graphs are tiny, so one
    # thread and no spinning waste no CPU time on thread pools.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class ServedModel:
    """One verified model with its onnxruntime session, created once at init."""

    __slots__ = ("_output_names", "_session", "load_seconds", "manifest")

    def __init__(self, manifest: Manifest, onnx_bytes: bytes) -> None:
        """Verify ``onnx_bytes`` against ``manifest`` and create the inference session.

        Raises:
            ModelIntegrityError: the bytes' SHA-256 differs from the manifest, onnxruntime cannot
                load them, or the graph's input/outputs do not match the manifest.
        """
        started = time.perf_counter()
        digest = hashlib.sha256(onnx_bytes).hexdigest()
        if digest != manifest.onnx_sha256:
            raise ModelIntegrityError(
                "model_hash_mismatch", detail=f"{manifest.name}: onnx sha256 does not match"
            )
        try:
            session = ort.InferenceSession(
                onnx_bytes, sess_options=_session_options(), providers=["CPUExecutionProvider"]
            )
        except _ORT_LOAD_ERRORS as exc:
            raise ModelIntegrityError(
                "model_unloadable", detail=f"{manifest.name}: onnxruntime cannot load it"
            ) from exc
        _check_signature(session, manifest)
        self.manifest = manifest
        self._session = session
        self._output_names = [manifest.probabilities_output]
        self.load_seconds = time.perf_counter() - started

    @property
    def name(self) -> str:
        """The model's name (its directory and route segment)."""
        return self.manifest.name

    @property
    def version(self) -> str:
        """The model's version: its name and the first 12 hex digits of the artifact's SHA-256."""
        return self.manifest.version

    @property
    def classes(self) -> tuple[str, ...]:
        """Class labels, in the order of the probability columns."""
        return self.manifest.classes

    @property
    def n_features(self) -> int:
        """The number of input features."""
        return self.manifest.n_features

    def predict_proba(self, rows: npt.ArrayLike) -> FloatArray:
        """Return class probabilities, shape ``(n, k)`` float64, each row summing to 1.

        ``rows`` is one row of ``n_features`` values or a ``(n, n_features)`` batch; the caller
        (``validation``) has already checked it is finite and in range.

        Raises:
            ValueError: ``rows`` does not have ``n_features`` columns or is empty.
        """
        # The one allocation per request: the float32 copy onnxruntime needs (none when the
        # caller already passes a C-contiguous float32 array).
        batch = np.ascontiguousarray(rows, dtype=np.float32)
        if batch.ndim == 1:
            batch = batch.reshape(1, -1)
        if batch.ndim != 2 or batch.shape[1] != self.n_features or batch.shape[0] == 0:
            raise ValueError(
                f"expected rows of {self.n_features} features, got shape {batch.shape}"
            )
        (proba,) = self._session.run(self._output_names, {self.manifest.input_name: batch})
        result = np.asarray(proba, dtype=np.float64)
        # The graph computes in float32; renormalise so each row sums to 1 in float64 too.
        result /= result.sum(axis=1, keepdims=True)
        return result

    def labels(self, proba: FloatArray) -> list[str]:
        """Return the most probable class label for each row of ``proba``."""
        return [self.classes[i] for i in np.argmax(proba, axis=1)]


def _check_signature(session: Any, manifest: Manifest) -> None:
    inputs = session.get_inputs()
    outputs = {o.name: o for o in session.get_outputs()}
    if len(inputs) != 1 or inputs[0].name != manifest.input_name:
        raise ModelIntegrityError("model_signature", detail=f"{manifest.name}: input name")
    if inputs[0].type != "tensor(float)" or inputs[0].shape[-1] != manifest.n_features:
        raise ModelIntegrityError("model_signature", detail=f"{manifest.name}: input shape")
    proba = outputs.get(manifest.probabilities_output)
    if proba is None or proba.type != "tensor(float)" or proba.shape[-1] != len(manifest.classes):
        raise ModelIntegrityError("model_signature", detail=f"{manifest.name}: probabilities")
    if manifest.label_output not in outputs:
        raise ModelIntegrityError("model_signature", detail=f"{manifest.name}: label output")


@dataclass(frozen=True, slots=True)
class ModelRegistry:
    """Every served model, loaded and verified once at init."""

    models: Mapping[str, ServedModel]

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelRegistry:
        """Load every ``<model_dir>/<name>/manifest.json`` and its verified ONNX artifact.

        Raises:
            ModelIntegrityError: the directory holds no model, a manifest is missing or
                malformed, an ONNX file is missing, or its SHA-256 differs from the manifest.
        """
        root = Path(model_dir)
        if not root.is_dir():
            raise ModelIntegrityError("model_dir_missing", detail=str(root))
        loaded: dict[str, ServedModel] = {}
        for directory in sorted(p for p in root.iterdir() if p.is_dir()):
            manifest_path = directory / MANIFEST_FILE
            try:
                raw = manifest_path.read_bytes()
            except FileNotFoundError as exc:
                raise ModelIntegrityError(
                    "manifest_missing", detail=f"{directory.name}: no {MANIFEST_FILE}"
                ) from exc
            manifest = Manifest.from_json(raw, expected_name=directory.name)
            try:
                onnx_bytes = (directory / manifest.onnx_file).read_bytes()
            except FileNotFoundError as exc:
                raise ModelIntegrityError(
                    "model_file_missing", detail=f"{manifest.name}: {manifest.onnx_file} missing"
                ) from exc
            loaded[manifest.name] = ServedModel(manifest, onnx_bytes)
        if not loaded:
            raise ModelIntegrityError("no_models", detail=f"no model under {root}")
        return cls(models=MappingProxyType(loaded))

    @property
    def names(self) -> tuple[str, ...]:
        """The served model names, sorted."""
        return tuple(sorted(self.models))

    def get(self, name: str) -> ServedModel:
        """Return the served model ``name``.

        Raises:
            NotFoundError: no model of that name is served.
        """
        model = self.models.get(name)
        if model is None:
            raise NotFoundError("unknown_model")
        return model

    def __contains__(self, name: object) -> bool:
        """Whether a model of that name is served."""
        return name in self.models

    def __iter__(self) -> Iterator[ServedModel]:
        """Iterate the served models in name order."""
        return iter(self.models[n] for n in self.names)

    def __len__(self) -> int:
        """The number of served models."""
        return len(self.models)
