"""A regressor's manifest: ``kind``, no classes, a value output and the target range; a manifest
without ``kind`` is a classifier."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from security.errors import ModelIntegrityError
from security.manifest import Manifest

IRIS = json.loads((Path(__file__).resolve().parents[2] / "models/iris/manifest.json").read_text())


def _regressor(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(IRIS)
    doc.update(kind="regressor", classes=[], target={"min": 25.0, "max": 346.0})
    doc["onnx"]["outputs"] = {"value": "value"}
    doc.update(changes)
    return doc


def test_a_manifest_without_kind_is_a_classifier() -> None:
    manifest = Manifest.from_dict(copy.deepcopy(IRIS))
    assert manifest.kind == "classifier" and manifest.target_range is None
    assert manifest.value_output == "" and len(manifest.classes) == 3


def test_a_regressor_manifest() -> None:
    manifest = Manifest.from_dict(_regressor())
    assert (manifest.kind, manifest.classes, manifest.value_output) == ("regressor", (), "value")
    assert manifest.target_range == (25.0, 346.0)
    assert manifest.label_output == manifest.probabilities_output == ""


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"kind": "ranker"}, "kind is not classifier or regressor"),
        ({"classes": ["a", "b"]}, "a regressor has no classes"),
        ({"target": {"min": 3.0, "max": 3.0}}, "target has min >= max"),
        ({"target": None}, "target is not an object"),
    ],
)
def test_a_malformed_regressor_manifest_is_refused(changes: dict[str, Any], detail: str) -> None:
    with pytest.raises(ModelIntegrityError) as caught:
        Manifest.from_dict(_regressor(**changes))
    assert caught.value.reason == "manifest_malformed" and caught.value.detail == detail


def test_a_regressor_manifest_needs_its_value_output() -> None:
    doc = _regressor()
    doc["onnx"]["outputs"] = {"label": "label", "probabilities": "probabilities"}
    with pytest.raises(ModelIntegrityError, match="manifest_malformed"):
        Manifest.from_dict(doc)
