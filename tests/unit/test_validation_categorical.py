"""Validation of categorical features (``security.validation`` + ``security.features``): a
category is taken as a string from the model's training categories and carried as its index;
anything else is refused by rule, never echoed. Runs without scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest

from security.errors import InvalidPayloadError, ModelIntegrityError
from security.features import MAX_CATEGORY_CHARS, parse_categories
from security.manifest import Manifest
from security.validation import RULE_MESSAGES, FeatureSchema, validate_document

NAMES = ["tenure", "plan", "spend"]
ENVELOPE = {
    "tenure": {"min": 0.0, "max": 72.0},
    "plan": {"min": 0, "max": 2},
    "spend": {"min": 10.0, "max": 120.0},
}
CATEGORIES = {"plan": ["basic", "plus", "pro"]}
SCHEMA = FeatureSchema.from_manifest("churn", NAMES, ENVELOPE, margin=0.1, categories=CATEGORIES)


def test_a_category_string_becomes_its_index_by_name_and_positionally() -> None:
    parsed = validate_document({"features": [12, "pro", 50.5]}, SCHEMA, max_rows=10)
    assert parsed.rows.tolist() == [[12.0, 2.0, 50.5]]
    by_name = validate_document(
        {"instances": [{"plan": "basic", "spend": 10, "tenure": 0}, [72, "plus", 120]]},
        SCHEMA,
        max_rows=10,
    )
    assert by_name.rows.tolist() == [[0.0, 0.0, 10.0], [72.0, 1.0, 120.0]]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ([12, "platinum", 50.5], "unknown_category"),
        ([12, "Pro", 50.5], "unknown_category"),
        ([12, "", 50.5], "unknown_category"),
        ([12, 2, 50.5], "not_a_category"),
        ([12, 2.0, 50.5], "not_a_category"),
        ([12, True, 50.5], "not_a_category"),
        ([12, None, 50.5], "not_a_category"),
        ([12, ["pro"], 50.5], "not_a_category"),
        ([12, "p" * (MAX_CATEGORY_CHARS + 1), 50.5], "string_too_long"),
        (["12", "pro", 50.5], "not_a_number"),
        ([12, "pro", False], "not_a_number"),
        ([12, "pro", 500.0], "outside_envelope"),
        ({"tenure": 1, "plan": "pro"}, "missing_feature"),
        ({"tenure": 1, "plan": "pro", "spend": 20, "x": 1}, "unknown_feature"),
    ],
)
def test_anything_but_a_training_category_is_refused_by_rule(row: object, reason: str) -> None:
    with pytest.raises(InvalidPayloadError) as caught:
        validate_document({"features": row}, SCHEMA, max_rows=10)
    assert caught.value.reason == reason
    message = RULE_MESSAGES[reason]
    assert "platinum" not in message and "pro" not in message.split()  # never the value
    for category in CATEGORIES["plan"]:
        assert category not in message


def test_a_categorical_feature_has_no_envelope_margin_and_the_numeric_ones_keep_theirs() -> None:
    bounds = {b.name: b for b in SCHEMA.bounds}
    assert (bounds["plan"].low, bounds["plan"].high) == (0.0, 2.0)
    assert bounds["tenure"].low == pytest.approx(-7.2) and bounds["tenure"].high == pytest.approx(
        79.2
    )
    numeric = FeatureSchema.from_manifest("n", NAMES, ENVELOPE, margin=0.1)
    assert not numeric.categorical and SCHEMA.categorical


def test_the_json_schema_types_each_position_and_publishes_no_category() -> None:
    schema = SCHEMA.json_schema()
    row = schema["oneOf"][0]["properties"]["features"]["oneOf"]
    assert [item["type"] for item in row[0]["prefixItems"]] == ["number", "string", "number"]
    assert row[0]["items"] is False
    assert row[1]["properties"]["plan"]["maxLength"] == MAX_CATEGORY_CHARS
    assert "basic" not in json.dumps(schema)
    numeric = FeatureSchema.from_manifest("n", NAMES, ENVELOPE, margin=0.1).json_schema()
    assert numeric["oneOf"][0]["properties"]["features"]["oneOf"][0]["items"] == {"type": "number"}


def _manifest(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "schema_version": 1,
        "name": "churn",
        "version": "churn-0123456789ab",
        "feature_names": NAMES,
        "classes": ["churn", "stay"],
        "envelope": ENVELOPE,
        "metrics": {},
        "framework": {},
        "train_split": {},
        "categories": CATEGORIES,
        "onnx": {
            "file": "model.onnx",
            "sha256": "0" * 64,
            "input": "features",
            "outputs": {"label": "label", "probabilities": "probabilities"},
        },
    }
    doc.update(changes)
    return doc


def test_the_manifest_parses_categories_and_a_manifest_without_them_is_all_numeric() -> None:
    manifest = Manifest.from_dict(_manifest())
    assert manifest.categories == {"plan": ("basic", "plus", "pro")}
    types = {"tenure": "numeric", "plan": "categorical", "spend": "numeric"}
    assert Manifest.from_dict(_manifest(feature_types=types)).categories == manifest.categories
    for wrong in ({**types, "plan": "numeric"}, {**types, "spend": "categorical"}, {"plan": "x"}):
        with pytest.raises(ModelIntegrityError) as caught:
            Manifest.from_dict(_manifest(feature_types=wrong))
        assert caught.value.reason == "manifest_malformed"
    legacy = _manifest(envelope={**ENVELOPE, "plan": {"min": 0, "max": 5}})
    del legacy["categories"]
    assert dict(Manifest.from_dict(legacy).categories) == {}


@pytest.mark.parametrize(
    "categories",
    [
        {"plan": ["basic", "plus"]},  # envelope is not 0..k-1
        {"plan": ["basic", "basic", "pro"]},
        {"plan": ["basic", "", "pro"]},
        {"plan": ["basic", 1, "pro"]},
        {"plan": ["basic", "p" * (MAX_CATEGORY_CHARS + 1), "pro"]},
        {"nope": ["a", "b", "c"]},
        {},
        ["basic"],
    ],
)
def test_a_malformed_categories_section_refuses_the_model(categories: object) -> None:
    with pytest.raises(ModelIntegrityError) as caught:
        Manifest.from_dict(_manifest(categories=categories))
    assert caught.value.reason == "manifest_malformed"
    with pytest.raises(ModelIntegrityError):
        parse_categories(categories, NAMES, ENVELOPE)


def test_rows_stay_float_matrices() -> None:
    parsed = validate_document({"instances": [[1, "plus", 11]] * 3}, SCHEMA, max_rows=10)
    assert parsed.rows.dtype == np.float64 and parsed.rows.shape == (3, 3)
