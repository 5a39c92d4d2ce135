"""Served models: ONNX artifacts verified against their manifests, predicted with onnxruntime.

Each model lives in ``<model_dir>/<name>/`` as ``manifest.json`` (``security.manifest``) and
the ONNX file it names (written by ``mlmoat train``). ``ModelRegistry.load`` runs once, at init,
and verifies every model directory on its own (``ServedModel.from_directory``): it parses and
validates the manifest, reads the ONNX bytes once, checks their SHA-256 against the manifest and
only then builds the ``InferenceSession`` from those same bytes, so what runs is exactly what
was hashed. A model that fails any check is never served: the registry records it as
unavailable with the reason (``Unavailable``), its requests are answered 503
``model_unavailable`` (``ModelUnavailableError``), and every other model keeps serving.

This module imports numpy and onnxruntime only (never scikit-learn: ~0.9 s of cold start and
too large for a Lambda package: docs/models.md, "Why ONNX").
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state  # type: ignore[import-untyped]

from security.errors import ModelIntegrityError, ModelUnavailableError, NotFoundError
from security.manifest import MANIFEST_FILE, FloatArray, Manifest

__all__ = [
    "MANIFEST_FILE",
    "Manifest",
    "ModelRegistry",
    "ServedModel",
    "Unavailable",
]

# onnxruntime's own exceptions for a model it cannot load; anything else propagates unchanged.
_ORT_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
)


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
        self._output_names = [manifest.value_output or manifest.probabilities_output]
        self.load_seconds = time.perf_counter() - started

    @classmethod
    def from_directory(cls, directory: str | Path) -> ServedModel:
        """Verify and load the model of one ``<model_dir>/<name>/`` directory.

        Raises:
            ModelIntegrityError: the manifest is missing, unreadable or malformed (or names
                another model than its directory), the ONNX file is missing or unreadable, or
                the bytes fail a check of ``ServedModel``.
        """
        path = Path(directory)
        raw = _read(path / MANIFEST_FILE, "manifest", path.name)
        manifest = Manifest.from_json(raw, expected_name=path.name)
        return cls(manifest, _read(path / manifest.onnx_file, "model_file", manifest.name))

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
            ValueError: ``rows`` does not have ``n_features`` columns or is empty, or the model
                is a regressor.
        """
        if self.manifest.kind != "classifier":
            raise ValueError(f"{self.name} is a {self.manifest.kind}: it has no probabilities")
        # The one allocation per request: the float32 copy onnxruntime needs (none when the
        # caller already passes a C-contiguous float32 array).
        result = self._run(rows)
        # The graph computes in float32; renormalise so each row sums to 1 in float64 too.
        result /= result.sum(axis=1, keepdims=True)
        return result

    @property
    def kind(self) -> str:
        """``classifier`` or ``regressor`` (``security.manifest``)."""
        return self.manifest.kind

    def predict_values(self, rows: npt.ArrayLike) -> FloatArray:
        """A regressor's value for each row, shape ``(n,)`` float64 (rows as ``predict_proba``).

        Raises:
            ValueError: not a regressor, or ``rows`` does not have ``n_features`` columns.
        """
        if self.manifest.kind != "regressor":
            raise ValueError(f"{self.name} is a {self.manifest.kind}: it has no values")
        return self._run(rows).reshape(-1)

    def _run(self, rows: npt.ArrayLike) -> FloatArray:
        batch = np.ascontiguousarray(rows, dtype=np.float32)
        if batch.ndim == 1:
            batch = batch.reshape(1, -1)
        if batch.ndim != 2 or batch.shape[1] != self.n_features or batch.shape[0] == 0:
            raise ValueError(
                f"expected rows of {self.n_features} features, got shape {batch.shape}"
            )
        (out,) = self._session.run(self._output_names, {self.manifest.input_name: batch})
        return np.asarray(out, dtype=np.float64)

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
    if manifest.kind == "regressor":
        value = outputs.get(manifest.value_output)
        # One value per row: (n, 1) or (n,).
        if value is None or value.type != "tensor(float)" or value.shape[-1] not in (1, None):
            raise ModelIntegrityError("model_signature", detail=f"{manifest.name}: value output")
        return
    proba = outputs.get(manifest.probabilities_output)
    if proba is None or proba.type != "tensor(float)" or proba.shape[-1] != len(manifest.classes):
        raise ModelIntegrityError("model_signature", detail=f"{manifest.name}: probabilities")
    if manifest.label_output not in outputs:
        raise ModelIntegrityError("model_signature", detail=f"{manifest.name}: label output")


def _read(path: Path, kind: str, model: str) -> bytes:
    """The bytes of one file of a model directory (``<kind>_missing``/``<kind>_unreadable``)."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelIntegrityError(f"{kind}_missing", detail=f"{model}: no {path.name}") from exc
    except OSError as exc:
        raise ModelIntegrityError(
            f"{kind}_unreadable", detail=f"{model}: {path.name}: {type(exc).__name__}"
        ) from exc


@dataclass(frozen=True, slots=True)
class Unavailable:
    """A model that failed verification at init: never served, answered 503 until redeployed."""

    name: str
    reason: str
    detail: str | None = None

    @classmethod
    def of(cls, name: str, error: ModelIntegrityError) -> Unavailable:
        """The record of ``error``, which refused model ``name``."""
        return cls(name=name, reason=error.reason, detail=error.detail)

    def error(self) -> ModelUnavailableError:
        """What a request for this model raises: the reason goes to the audit record only."""
        cause = self.reason if self.detail is None else f"{self.reason}: {self.detail}"
        return ModelUnavailableError(detail=f"model={self.name}: {cause}")


@dataclass(frozen=True, slots=True)
class ModelRegistry:
    """Every model directory, verified once at init: the served models and the refused ones."""

    models: Mapping[str, ServedModel]
    unavailable: Mapping[str, Unavailable] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def load(cls, model_dir: str | Path, *, expected: Iterable[str] = ()) -> ModelRegistry:
        """Verify every ``<model_dir>/<name>/`` on its own; never raises for a model's fault.

        A directory that fails (``ServedModel.from_directory``) is recorded as unavailable with
        its reason. Each name in ``expected`` (the default model) that no directory provides is
        recorded too: ``model_dir_missing``, ``no_models`` (an empty directory) or
        ``model_missing``, so its requests are answered 503 rather than the function failing.
        """
        root = Path(model_dir)
        loaded: dict[str, ServedModel] = {}
        refused: dict[str, Unavailable] = {}
        directories = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        for directory in directories:
            try:
                loaded[directory.name] = ServedModel.from_directory(directory)
            except ModelIntegrityError as exc:
                refused[directory.name] = Unavailable.of(directory.name, exc)
        reason = (
            "model_dir_missing"
            if not root.is_dir()
            else "no_models"
            if not directories
            else "model_missing"
        )
        for name in expected:
            if name not in loaded and name not in refused:
                refused[name] = Unavailable(name, reason, f"no model directory {name!r}")
        return cls(models=MappingProxyType(loaded), unavailable=MappingProxyType(refused))

    def without(self, failures: Mapping[str, ModelIntegrityError]) -> ModelRegistry:
        """This registry with the models of ``failures`` (name -> the check they failed, e.g.
        their defences file) moved from served to unavailable."""
        if not failures:
            return self
        refused = dict(self.unavailable)
        refused.update((name, Unavailable.of(name, error)) for name, error in failures.items())
        models = {name: model for name, model in self.models.items() if name not in failures}
        return ModelRegistry(models=MappingProxyType(models), unavailable=MappingProxyType(refused))

    @property
    def names(self) -> tuple[str, ...]:
        """The served model names, sorted."""
        return tuple(sorted(self.models))

    def get(self, name: str) -> ServedModel:
        """Return the served model ``name``.

        Raises:
            ModelUnavailableError: the model failed verification at init.
            NotFoundError: no model of that name exists.
        """
        model = self.models.get(name)
        if model is None:
            refused = self.unavailable.get(name)
            if refused is not None:
                raise refused.error()
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
