"""``security.dynamo``'s codec is boto3's TypeSerializer/TypeDeserializer, without boto3.

The functions no longer import boto3 (``security.wiring.botocore_client``), so the codec is the
store's own: these properties hold it to boto3's output for every value the store writes, and
to boto3's refusals.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from hypothesis import given
from hypothesis import strategies as st

from security.dynamo import dump, load

_boto3_out = TypeSerializer()
_boto3_in = TypeDeserializer()

numbers = st.integers(min_value=-(10**37), max_value=10**37) | st.decimals(
    allow_nan=False, allow_infinity=False, places=6, min_value=-(10**20), max_value=10**20
)
scalars = (
    st.none() | st.booleans() | numbers | st.text(max_size=20) | st.binary(min_size=1, max_size=20)
)
sets = (
    st.sets(st.text(max_size=8), min_size=1, max_size=5)
    | st.sets(st.integers(-(10**9), 10**9), min_size=1, max_size=5)
    | st.sets(st.binary(min_size=1, max_size=8), min_size=1, max_size=5)
)
values = st.recursive(
    scalars | sets,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _comparable(typed: Any) -> Any:
    """Typed JSON with set members sorted (set order is not part of DynamoDB's value)."""
    if isinstance(typed, dict):
        return {
            k: sorted(v, key=repr) if k in ("SS", "NS", "BS") else _comparable(v)
            for k, v in typed.items()
        }
    if isinstance(typed, list):
        return [_comparable(v) for v in typed]
    if isinstance(typed, Binary):
        return bytes(typed.value)
    return typed


def _python(value: Any) -> Any:
    """What the store reads back: numbers as int (integral) or float, binaries as bytes."""
    if isinstance(value, Binary):
        return bytes(value.value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, set):
        return {_python(v) for v in value}
    if isinstance(value, list):
        return [_python(v) for v in value]
    if isinstance(value, dict):
        return {k: _python(v) for k, v in value.items()}
    return value


@given(values)
def test_dump_writes_what_boto3_writes(value: Any) -> None:
    assert _comparable(dump(value)) == _comparable(_boto3_out.serialize(value))


@given(values)
def test_load_reads_what_boto3_reads(value: Any) -> None:
    typed = _boto3_out.serialize(value)
    wire = {"a": _wire(typed)}
    assert load(wire) == {"a": _python(_boto3_in.deserialize(typed))}


def _wire(typed: Any) -> Any:
    """boto3's typed JSON as botocore hands it over: binaries as bytes."""
    if isinstance(typed, Binary):
        return bytes(typed.value)
    if isinstance(typed, dict):
        return {k: _wire(v) for k, v in typed.items()}
    if isinstance(typed, list):
        return [_wire(v) for v in typed]
    return typed


@pytest.mark.parametrize(
    "value", [1.5, {1, "a"}, Decimal("NaN"), Decimal("Infinity"), 10**40, object()]
)
def test_dump_refuses_what_boto3_refuses(value: Any) -> None:
    with pytest.raises(TypeError):
        dump(value)
    with pytest.raises((TypeError, ValueError, ArithmeticError)):
        _boto3_out.serialize(value)


def test_dump_refuses_an_empty_set_which_boto3_writes_and_dynamodb_refuses() -> None:
    assert _boto3_out.serialize(set()) == {"NS": []}
    with pytest.raises(TypeError, match="non-empty"):
        dump(set())
