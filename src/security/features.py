"""Per-feature types of a model: numeric, or categorical with its allowed categories.

A manifest without a ``categories`` section describes a model whose features are all numeric
(every manifest written before categorical features existed). With one, it maps each categorical
feature's name to the list of its training categories (strings, in the fitted encoder's order)::

    "categories": {"plan": ["basic", "plus", "pro"]},
    "feature_types": {"tenure": "numeric", "plan": "categorical"}

``feature_types`` (optional, written by ``mlmoat models import`` beside ``categories``) names
every feature's type; it must agree with ``categories``.

Inside the security layer a row stays a float vector: a categorical feature is carried as its
category's index in that list (``0.0 .. k-1``), so the envelope, squeezing, smoothing and the
extraction monitor see one matrix. The API maps a category string to its index
(``security.validation``) and the ONNX graph maps the index back to the string before its
encoder (``mlmoat.models_columns``). The manifest's envelope of a categorical feature is therefore
exactly ``{"min": 0, "max": k - 1}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from security.errors import InvalidPayloadError, ModelIntegrityError

__all__ = [
    "MAX_CATEGORIES",
    "MAX_CATEGORY_CHARS",
    "category_codes",
    "check_feature_types",
    "encode_row",
    "parse_categories",
]

#: The longest category string a manifest may hold (and so the longest the API looks up).
MAX_CATEGORY_CHARS = 256
#: The most categories one feature may have: a one-hot encoder wider than this is not tabular.
MAX_CATEGORIES = 1000

Categories = Mapping[str, tuple[str, ...]]


def parse_categories(
    value: object,
    feature_names: Sequence[str],
    envelope: Mapping[str, Mapping[str, float]],
) -> Categories:
    """Validate a manifest's ``categories`` section (``None``: every feature is numeric).

    Raises:
        ModelIntegrityError: (``manifest_malformed``) not an object of known features to lists
            of unique, non-empty strings of at most ``MAX_CATEGORY_CHARS`` characters, more
            than ``MAX_CATEGORIES`` of them, or an envelope other than ``0 .. k-1``.
    """
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict) or not value:
        raise ModelIntegrityError("manifest_malformed", detail="categories is not an object")
    parsed: dict[str, tuple[str, ...]] = {}
    for name, categories in value.items():
        if name not in feature_names:
            _malformed("categories names a feature the model does not have")
        if (
            not isinstance(categories, list)
            or not 1 <= len(categories) <= MAX_CATEGORIES
            or not all(_valid_category(c) for c in categories)
            or len(set(categories)) != len(categories)
        ):
            _malformed(f"categories.{name} is not a list of unique short strings")
        bounds = envelope.get(name, {})
        if bounds.get("min") != 0 or bounds.get("max") != len(categories) - 1:
            _malformed(f"envelope.{name} is not the category indices 0..k-1")
        parsed[name] = tuple(categories)
    return MappingProxyType(parsed)


def check_feature_types(
    value: object, feature_names: Sequence[str], categories: Categories
) -> None:
    """Validate a manifest's optional ``feature_types`` against its ``categories``.

    Raises:
        ModelIntegrityError: (``manifest_malformed``) not exactly the features, each
            ``numeric`` or ``categorical`` as ``categories`` says.
    """
    if value is None:
        return
    expected = {f: "categorical" if f in categories else "numeric" for f in feature_names}
    if value != expected:
        _malformed("feature_types does not match the features and their categories")


def category_codes(categories: Sequence[str]) -> Mapping[str, float]:
    """Each category's index, as the float the security layer carries."""
    return MappingProxyType({category: float(i) for i, category in enumerate(categories)})


def _valid_category(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_CATEGORY_CHARS


def _malformed(detail: str) -> None:
    raise ModelIntegrityError("manifest_malformed", detail=detail)


def encode_row(values: list[Any], codes: Sequence[Mapping[str, float] | None]) -> list[Any]:
    """A row of a model with categorical features: each category string -> its index.

    ``codes[j]`` is feature ``j``'s category index (``category_codes``), or ``None`` for a
    numeric feature, whose value must be a JSON number (the envelope is checked afterwards).

    Raises:
        InvalidPayloadError: ``not_a_number`` (a numeric feature that is not a number),
            ``not_a_category`` (a categorical feature that is not a string), ``string_too_long``
            or ``unknown_category`` (a string that is not one of the training categories).
    """
    row: list[Any] = []
    for value, lookup in zip(values, codes, strict=True):
        kind = type(value)
        if lookup is None:
            # Exact types: bool is a subclass of int and must not be coerced to 1.0.
            if kind is not float and kind is not int:
                raise InvalidPayloadError("not_a_number")
            row.append(value)
        elif kind is not str:
            raise InvalidPayloadError("not_a_category")
        elif len(value) > MAX_CATEGORY_CHARS:
            raise InvalidPayloadError("string_too_long")
        else:
            code = lookup.get(value)
            if code is None:
                raise InvalidPayloadError("unknown_category")
            row.append(code)
    return row
