"""Prediction input: the request schema generated per model from its manifest, and body parsing.

A body is refused, in this order, when:

====================  ======  ==============================================================
rule (``reason``)      status  what it means
====================  ======  ==============================================================
unsupported_media_type 415    the ``Content-Type`` is not ``application/json`` (charset utf-8)
body_too_large         413    the body is over ``settings.max_body_bytes`` (checked before parsing)
malformed_body         400    not UTF-8, not JSON, or a truncated document
nesting_too_deep       400    brackets nested deeper than any valid request needs (pre-scan)
duplicate_key          400    an object repeats a key
wrong_root_type        400    the document is not a JSON object
unknown_field          422    a top-level field other than ``features`` / ``instances``
missing_field          422    neither or both of ``features`` and ``instances``
not_a_list             422    ``features`` / a row is not an array or an object; ``instances`` is
                              not an array
empty_batch            422    ``instances`` is an empty array
too_many_rows          413    more rows than ``settings.max_rows``
wrong_feature_count    422    a row (array) does not have exactly the model's feature count
unknown_feature        422    a row (object) names a feature the model does not have
missing_feature        422    a row (object) does not name every feature of the model
not_a_number           422    a numeric feature is a string, boolean, null, array or object
not_a_category         422    a categorical feature is not a string (a number, boolean, null...)
string_too_long        422    a categorical feature's string is longer than any category can be
unknown_category       422    a categorical feature's string is not one of its training categories
non_finite_number      422    ``NaN`` / ``Infinity`` literals, or a number that overflows (1e309)
outside_envelope       422    a feature lies outside the training envelope widened by the margin
====================  ======  ==============================================================

A model with categorical features (``security.features``) takes each of them as a string from
its training categories, positionally or by name; the row goes on as floats, the category
replaced by its index. The envelope applies to the numeric features only (a category index is
always inside ``0 .. k-1``).

The envelope: for a feature seen in training between ``min`` and ``max``, a value is accepted when
``min - m*w <= x <= max + m*w`` where ``w = max - min`` (or ``max(|max|, 1)`` for a constant
feature) and ``m`` is ``settings.envelope_margin`` (default 0.1, i.e. 10 % of the range on each
side). The seed's flat ``|x| <= 1e6`` would let a caller probe the model far outside anything it
was trained on, where its answers are meaningless and most useful to an attacker.

Parsing is bounded: the size cap comes first, a linear pre-scan refuses nesting deeper than
``_MAX_DEPTH`` before ``json`` recurses, ``object_pairs_hook`` refuses duplicate keys,
``parse_constant`` refuses ``NaN``/``Infinity``, ``parse_int`` refuses integers that overflow a
double, and a float that overflows (``1e309`` parses to infinity) is refused with the features.
Error messages name the rule, never a value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from security.errors import (
    InvalidPayloadError,
    MalformedBodyError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from security.features import MAX_CATEGORY_CHARS, category_codes, encode_row

# {"instances": [[...]]} nests three deep; anything deeper is not a request we could accept.
_MAX_DEPTH = 3
# A finite double has at most 309 integer digits; longer digit strings are refused before int().
_MAX_INT_DIGITS = 309
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET_RE = re.compile(r"[^\[\]{}]+")
_MEDIA_TYPE_RE = re.compile(r"^\s*application/json\s*(?:;(?P<params>.*))?$", re.IGNORECASE)

#: The public message for each rule: says which rule failed, never a value or an internal name.
RULE_MESSAGES: dict[str, str] = {
    "unsupported_media_type": "The request body must be JSON (Content-Type: application/json).",
    "body_too_large": "The request body is larger than this API accepts.",
    "malformed_body": "The request body is not a well-formed JSON document.",
    "nesting_too_deep": "The request body is nested deeper than any valid request.",
    "duplicate_key": "The request body repeats a JSON key.",
    "wrong_root_type": "The request body must be a JSON object.",
    "unknown_field": "The request body has a field this API does not accept.",
    "missing_field": "The request body must have exactly one of 'features' or 'instances'.",
    "not_a_list": "'features' must be an array of feature values (or an object of them by "
    "feature name) and 'instances' an array of such rows.",
    "empty_batch": "'instances' must contain at least one row.",
    "too_many_rows": "The batch has more rows than this API accepts.",
    "wrong_feature_count": "Each row must have exactly the model's number of features.",
    "unknown_feature": "A row names a feature this model does not have.",
    "missing_feature": "A row given by name must name every feature of the model.",
    "not_a_number": "Every numeric feature must be a JSON number (not a string, boolean or null).",
    "not_a_category": "A categorical feature must be given as a string.",
    "string_too_long": "A categorical feature's string is longer than this model accepts.",
    "unknown_category": "A categorical feature is not one of the categories this model accepts.",
    "non_finite_number": "Every feature must be a finite number (no NaN, Infinity or overflow).",
    "outside_envelope": "A feature is outside the range this model accepts.",
}


class _NonFiniteError(ValueError):
    """A number in the body is not a finite double (internal to the parser hooks)."""


class _DuplicateKeyError(ValueError):
    """An object in the body repeats a key (internal to the parser hooks)."""


@dataclass(frozen=True, slots=True)
class FeatureBound:
    """The accepted range of one feature: the training envelope widened by the margin."""

    name: str
    low: float
    high: float
    # A categorical feature: each category string -> its index (``None``: a numeric feature).
    codes: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class FeatureSchema:
    """The request schema of one model: its features, in order, with their accepted ranges."""

    model: str
    bounds: tuple[FeatureBound, ...]

    @property
    def n_features(self) -> int:
        """The exact number of features a row must have."""
        return len(self.bounds)

    @property
    def lows(self) -> np.ndarray:
        """Lower bounds in feature order, as an array for vectorised checks."""
        return np.array([bound.low for bound in self.bounds], dtype=np.float64)

    @property
    def highs(self) -> np.ndarray:
        """Upper bounds in feature order, as an array for vectorised checks."""
        return np.array([bound.high for bound in self.bounds], dtype=np.float64)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Feature names in the order the model expects them."""
        return tuple(bound.name for bound in self.bounds)

    @property
    def codes(self) -> tuple[Mapping[str, float] | None, ...]:
        """Per feature, its category lookup (``None`` for a numeric feature)."""
        return tuple(bound.codes for bound in self.bounds)

    @property
    def categorical(self) -> bool:
        """Whether any feature is categorical (taken as a string)."""
        return any(bound.codes is not None for bound in self.bounds)

    @classmethod
    def from_manifest(
        cls,
        model: str,
        feature_names: Sequence[str],
        envelope: Mapping[str, Mapping[str, float]] | Sequence[Mapping[str, float]],
        *,
        margin: float,
        categories: Mapping[str, Sequence[str]] | None = None,
    ) -> FeatureSchema:
        """Build the schema from a manifest's feature names and per-feature ``min``/``max``.

        ``envelope`` is either keyed by feature name or a list aligned with ``feature_names``;
        ``categories`` names the categorical features and their categories (in index order).

        Raises:
            ValueError: the envelope does not cover every feature, or a bound is not finite.
        """
        if margin < 0 or not math.isfinite(margin):
            raise ValueError("margin must be a finite, non-negative fraction")
        if isinstance(envelope, Mapping):
            entries = [envelope[name] for name in feature_names]
        else:
            entries = list(envelope)
            if len(entries) != len(feature_names):
                raise ValueError("envelope does not cover every feature")
        bounds = []
        for name, entry in zip(feature_names, entries, strict=True):
            low, high = float(entry["min"]), float(entry["max"])
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                raise ValueError(f"envelope of feature {name!r} is not a finite range")
            if categories and name in categories:
                # Category indices: exactly 0..k-1, no margin (validation produced them).
                codes = category_codes(categories[name])
                bounds.append(FeatureBound(name, 0.0, float(len(codes) - 1), codes))
                continue
            width = high - low if high > low else max(abs(high), 1.0)
            bounds.append(FeatureBound(name, low - margin * width, high + margin * width))
        if not bounds:
            raise ValueError("a model needs at least one feature")
        return cls(model=model, bounds=tuple(bounds))

    def json_schema(self) -> dict[str, Any]:
        """The request body as JSON Schema (for OpenAPI); the envelope itself is not published."""
        types = [
            {"type": "number"}
            if bound.codes is None
            else {"type": "string", "minLength": 1, "maxLength": MAX_CATEGORY_CHARS}
            for bound in self.bounds
        ]
        # Positional rows: one item schema per position when the types differ (JSON Schema
        # 2020-12 ``prefixItems``, OpenAPI 3.1); the categories themselves are not published.
        items: dict[str, Any] = (
            {"prefixItems": types, "items": False} if self.categorical else {"items": types[0]}
        )
        row: dict[str, Any] = {
            "oneOf": [
                {
                    "type": "array",
                    **items,
                    "minItems": self.n_features,
                    "maxItems": self.n_features,
                    "description": "Feature values in this order: " + ", ".join(self.feature_names),
                },
                {
                    "type": "object",
                    "properties": dict(zip(self.feature_names, types, strict=True)),
                    "required": list(self.feature_names),
                    "additionalProperties": False,
                    "description": "Feature values by name",
                },
            ]
        }
        return {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"features": row},
                    "required": ["features"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {"instances": {"type": "array", "items": row, "minItems": 1}},
                    "required": ["instances"],
                    "additionalProperties": False,
                },
            ]
        }


@dataclass(frozen=True, slots=True)
class PredictionInput:
    """A validated request: the rows as a float64 matrix and which shape the caller used."""

    rows: np.ndarray
    shape: Literal["features", "instances"]

    @property
    def n_rows(self) -> int:
        """How many rows will be predicted (and charged)."""
        return int(self.rows.shape[0])


def check_content_type(content_type: str | None) -> None:
    """Require ``application/json`` (optionally ``; charset=utf-8``).

    Raises:
        UnsupportedMediaTypeError: the content type is missing or not JSON in UTF-8.
    """
    match = _MEDIA_TYPE_RE.match(content_type or "")
    if match is None:
        raise UnsupportedMediaTypeError("unsupported_media_type")
    for param in (match["params"] or "").split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise UnsupportedMediaTypeError("unsupported_media_type", detail="charset")


def _too_deep(text: str) -> bool:
    # Strings cannot nest; drop them, keep only brackets, and stop at the first level too deep.
    brackets = _NOT_BRACKET_RE.sub("", _STRING_RE.sub('""', text))
    depth = 0
    for char in brackets:
        if char in "[{":
            depth += 1
            if depth > _MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _refuse_constant(name: str) -> float:
    raise _NonFiniteError(name)


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _NonFiniteError("overflow")
    value = int(text)
    try:
        float(value)
    except OverflowError as exc:  # 309 digits can still exceed the largest double
        raise _NonFiniteError("overflow") from exc
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError("duplicate key")
        result[key] = value
    return result


def parse_json_body(body: bytes, *, max_body_bytes: int) -> Any:
    """Parse a request body as strict, bounded JSON.

    Raises:
        PayloadTooLargeError: the body is over ``max_body_bytes``.
        MalformedBodyError: not UTF-8, not JSON, too deeply nested, or a duplicate key.
        InvalidPayloadError: ``NaN``/``Infinity`` literals or an integer that overflows a double.
    """
    if len(body) > max_body_bytes:
        raise PayloadTooLargeError("body_too_large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBodyError("malformed_body", detail="not utf-8") from exc
    if _too_deep(text):
        raise MalformedBodyError("nesting_too_deep")
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_constant=_refuse_constant,
            parse_int=_parse_int,
        )
    except _NonFiniteError as exc:
        raise InvalidPayloadError("non_finite_number") from exc
    except _DuplicateKeyError as exc:
        raise MalformedBodyError("duplicate_key") from exc
    except RecursionError as exc:  # unreachable after the pre-scan; kept as a second bound
        raise MalformedBodyError("nesting_too_deep") from exc
    except ValueError as exc:
        raise MalformedBodyError("malformed_body", detail=type(exc).__name__) from exc


def _row(
    values: Any, names: tuple[str, ...], codes: tuple[Mapping[str, float] | None, ...] | None
) -> list[Any]:
    # A row is positional (``[5.1, 3.5, ...]``) or by feature name (``{"sepal_length_cm": 5.1}``).
    if isinstance(values, dict):
        if set(values) - set(names):
            raise InvalidPayloadError("unknown_feature")
        if len(values) != len(names):
            raise InvalidPayloadError("missing_feature")
        values = [values[name] for name in names]
    if not isinstance(values, list):
        raise InvalidPayloadError("not_a_list")
    if len(values) != len(names):
        raise InvalidPayloadError("wrong_feature_count")
    if codes is not None:
        return encode_row(values, codes)
    # Exact types: bool is a subclass of int and must not be coerced to 1.0.
    if not all(type(value) is float or type(value) is int for value in values):
        raise InvalidPayloadError("not_a_number")
    row: list[Any] = values
    return row


def validate_document(document: Any, schema: FeatureSchema, *, max_rows: int) -> PredictionInput:
    """Check a parsed body against a model's schema and return the rows to predict.

    Raises:
        MalformedBodyError: the document is not a JSON object.
        PayloadTooLargeError: the batch has more than ``max_rows`` rows.
        InvalidPayloadError: any other rule in the module docstring's table; ``reason`` names it.
    """
    if not isinstance(document, dict):
        raise MalformedBodyError("wrong_root_type")
    if set(document) - {"features", "instances"}:
        raise InvalidPayloadError("unknown_field")
    if len(document) != 1:
        raise InvalidPayloadError("missing_field")
    names = schema.feature_names
    codes = schema.codes if schema.categorical else None
    if "features" in document:
        rows = [_row(document["features"], names, codes)]
        shape: Literal["features", "instances"] = "features"
    else:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise InvalidPayloadError("not_a_list")
        if not instances:
            raise InvalidPayloadError("empty_batch")
        if len(instances) > max_rows:
            raise PayloadTooLargeError("too_many_rows")
        rows = [_row(values, names, codes) for values in instances]
        shape = "instances"
    matrix = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(matrix).all():  # 1e309 parses to inf: refused here, not coerced
        raise InvalidPayloadError("non_finite_number")
    outside = (matrix < schema.lows) | (matrix > schema.highs)
    if outside.any():
        name = schema.bounds[int(np.argmax(outside.any(axis=0)))].name
        raise InvalidPayloadError("outside_envelope", detail=f"feature={name}")
    return PredictionInput(rows=matrix, shape=shape)


def parse_prediction_request(
    body: bytes,
    content_type: str | None,
    schema: FeatureSchema,
    *,
    max_body_bytes: int,
    max_rows: int,
) -> PredictionInput:
    """Content type, size, bounded JSON parse and schema validation of a prediction request.

    Raises:
        UnsupportedMediaTypeError: not ``application/json``.
        PayloadTooLargeError: body or batch over its cap.
        MalformedBodyError: not well-formed JSON of the right root type.
        InvalidPayloadError: a feature rule failed; ``reason`` names the rule.
    """
    check_content_type(content_type)
    document = parse_json_body(body, max_body_bytes=max_body_bytes)
    return validate_document(document, schema, max_rows=max_rows)


def canonical_rows(rows: np.ndarray) -> bytes:
    """A canonical byte form of feature rows (for the audit log's input fingerprint)."""
    return json.dumps([[float(value) for value in row] for row in rows.tolist()]).encode("ascii")
