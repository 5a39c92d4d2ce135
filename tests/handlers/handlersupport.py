"""Helpers for the handler tests: events from events/, a fake LambdaContext, new keys."""

from __future__ import annotations

import base64
import importlib
import json
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from logcapture import remember_key
from mlmoat.local.events import rest_event as rest_event  # the one event builder
from mlmoat.local.lambda_runtime import LambdaContext as LambdaContext  # the one fake context

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "events"


def load_event(relative: str, substitutions: dict[str, str]) -> dict[str, Any]:
    """Read an event file, substitute its ``${NAME}`` placeholders, give it a fresh request id."""
    text = (EVENTS / relative).read_text()
    for name, value in substitutions.items():
        text = text.replace("${" + name + "}", value)
    event = json.loads(text)
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    return event


def response_body(response: dict[str, Any]) -> Any:
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body) if body else None


def header(response: dict[str, Any], name: str) -> str | None:
    """A response header, case-insensitively, from ``headers`` or ``multiValueHeaders``."""
    for key, value in (response.get("headers") or {}).items():
        if key.lower() == name.lower():
            return str(value)
    for key, values in (response.get("multiValueHeaders") or {}).items():
        if key.lower() == name.lower() and values:
            return str(values[0])
    return None


def new_key(admin: Any, **options: Any) -> dict[str, Any]:
    """Create a key and remember its secret for the session-level log scan."""
    created: dict[str, Any] = admin.create(owner=f"t-{uuid.uuid4().hex[:8]}", **options)
    remember_key(created["api_key"])
    return created


def invoke(module: Any, event: dict[str, Any]) -> dict[str, Any]:
    """Call the Lambda handler as the runtime does: a JSON-round-tripped event and a context."""
    response: dict[str, Any] = module.handler(json.loads(json.dumps(event)), LambdaContext())
    return response


def post_json(module: Any, path: str, key: str, body: Any) -> dict[str, Any]:
    """POST ``body`` (JSON, or bytes as they are) to ``path`` with a key, through the handler."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-API-Key": key}
    return invoke(module, rest_event(path=path, body=raw, headers=headers))


def serve_models(model_dir: Path, handler_env: Mapping[str, str]) -> Any:
    """The predict handler serving ``model_dir`` with squeezing off: for tests of an imported
    artifact answering exactly as its estimator (squeezing answers for the squeezed row)."""
    env = {
        **handler_env,
        "SECURITY_MODEL_DIR": str(model_dir),
        "SECURITY_SQUEEZE_POLICY": "off",
    }
    return import_handler("handlers.predict", env)


def import_handler(name: str, env: Mapping[str, str]) -> Any:
    """Import handler module ``name`` afresh with ``env`` set, as a cold start does.

    The module reads its settings at import time; the environment is restored afterwards.
    """
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        sys.modules.pop(name, None)
        return importlib.import_module(name)


class FailingModel:
    """A served model whose runtime fails: stands in for an onnxruntime crash."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.name, self.version, self.classes = model.name, model.version, model.classes

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        raise RuntimeError("onnxruntime exploded at /opt/models/iris/model.onnx")


class FailingRegistry:
    """A model registry whose every model fails at prediction (a forced 500)."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def get(self, name: str) -> Any:
        return FailingModel(self._registry.get(name))
