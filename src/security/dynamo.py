"""DynamoDB's wire format and errors, in one place: the typed-JSON codec and the botocore
translation every ``PrincipalStore`` call goes through (``with translated(): ...``).

The codec is boto3's ``TypeSerializer``/``TypeDeserializer`` rules for the attribute types, with
numbers read back as ``int`` (integral) or ``float``, binaries as ``bytes``. It is written here
so that the functions never import boto3 (about 30 ms of a cold start on top of botocore,
``security.wiring.botocore_client``); the clients come from botocore.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Clamped, Context, Decimal, Inexact, Overflow, Rounded, Underflow
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from security.errors import StoreUnavailableError

Item = dict[str, Any]

_UNAVAILABLE = (BotocoreConnectionError, HTTPClientError)

# boto3's context for DynamoDB numbers: 38 digits, and any rounding is an error.
_CONTEXT = Context(
    Emin=-128, Emax=126, prec=38, traps=[Clamped, Overflow, Inexact, Rounded, Underflow]
)


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        value = Decimal(text)
    return int(value) if value == value.to_integral_value() else float(value)


def _number_text(value: int | Decimal) -> str:
    try:
        text = str(_CONTEXT.create_decimal(value))
    except ArithmeticError as exc:
        raise TypeError(f"{value!r} is not a DynamoDB number ({type(exc).__name__})") from None
    if text in ("Infinity", "-Infinity", "NaN", "sNaN"):
        raise TypeError("Infinity and NaN are not DynamoDB numbers")
    return text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, Decimal)) and not isinstance(value, bool)


def _from_wire(typed: Mapping[str, Any]) -> Any:
    ((kind, value),) = typed.items()
    if kind == "S":
        return value
    if kind == "N":
        return _number(value)
    if kind == "B":
        return bytes(value)
    if kind == "BOOL":
        return bool(value)
    if kind == "NULL":
        return None
    if kind == "M":
        return {name: _from_wire(v) for name, v in value.items()}
    if kind == "L":
        return [_from_wire(v) for v in value]
    if kind == "SS":
        return set(value)
    if kind == "NS":
        return {_number(v) for v in value}
    if kind == "BS":
        return {bytes(v) for v in value}
    raise TypeError(f"unknown DynamoDB type {kind!r}")


def load(raw: Mapping[str, Any] | None) -> Item | None:
    """Deserialise an item (None for an absent or empty one)."""
    if not raw:
        return None
    return {name: _from_wire(value) for name, value in raw.items()}


def dump(value: Any) -> dict[str, Any]:
    """Serialise one Python value to DynamoDB's typed JSON (boto3's ``TypeSerializer`` rules).

    Raises:
        TypeError: a value DynamoDB cannot store (a ``float``: use ``int`` or ``Decimal``, as
            boto3 requires; a number boto3 would round; a mixed set; an empty set, which boto3
            writes and DynamoDB refuses).
    """
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if _is_number(value):
        return {"N": _number_text(value)}
    if isinstance(value, float):
        raise TypeError("Float types are not supported. Use Decimal types instead.")
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, (bytes, bytearray)):
        return {"B": bytes(value)}
    if isinstance(value, (set, frozenset)):
        members = list(value)
        if members and all(isinstance(m, str) for m in members):
            return {"SS": members}
        if members and all(_is_number(m) for m in members):
            return {"NS": [_number_text(m) for m in members]}
        if members and all(isinstance(m, (bytes, bytearray)) for m in members):
            return {"BS": [bytes(m) for m in members]}
        raise TypeError("a set must be non-empty and of one type (strings, numbers or bytes)")
    if isinstance(value, Mapping):
        return {"M": {str(k): dump(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"L": [dump(v) for v in value]}
    raise TypeError(f"Unsupported type {type(value).__name__} for value {value!r}")


class ConditionFailed(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A conditional write's condition failed; ``item`` is ``ALL_OLD`` when it was asked for."""

    def __init__(self, item: Any) -> None:
        super().__init__("ConditionalCheckFailedException")
        self.item = item


class TransactionCancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A transaction was cancelled; ``codes`` are its cancellation reasons' codes, one per item
    (``None`` for an item that was not the reason)."""

    def __init__(self, codes: list[str]) -> None:
        super().__init__("TransactionCanceledException")
        self.codes = codes


@contextmanager
def translated() -> Iterator[None]:
    """The one botocore translation: a failed condition raises ``ConditionFailed``, a cancelled
    transaction ``TransactionCancelled``; every other client, connection or HTTP error raises
    ``StoreUnavailableError`` (fail closed)."""
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code == "ConditionalCheckFailedException":
            raise ConditionFailed(exc.response.get("Item")) from exc
        if code == "TransactionCanceledException":
            reasons = exc.response.get("CancellationReasons", [])
            codes = [str(reason.get("Code", "None")) for reason in reasons]
            raise TransactionCancelled(codes) from exc
        raise StoreUnavailableError(detail=type(exc).__name__) from exc
    except _UNAVAILABLE as exc:
        raise StoreUnavailableError(detail=type(exc).__name__) from exc
