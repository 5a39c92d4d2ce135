"""DynamoDB's wire format and errors, in one place: the typed-JSON codec and the botocore
translation every ``PrincipalStore`` call goes through (``with translated(): ...``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from security.errors import StoreUnavailableError

Item = dict[str, Any]

_UNAVAILABLE = (BotocoreConnectionError, HTTPClientError)
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _to_python(value: Any) -> Any:
    if isinstance(value, Binary):
        raw: Any = value  # boto3-stubs types Binary.__bytes__ wrongly; .value holds the bytes
        return bytes(raw.value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set):
        return {_to_python(v) for v in value}
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    return value


def load(raw: Mapping[str, Any] | None, *, names_only: str | None = None) -> Item | None:
    """Deserialise an item; attributes starting with ``names_only`` keep their name, value None.

    A charge's ``ALL_NEW`` carries every request-id digest of the live idempotency buckets (a
    set that grows with the key's request rate): after a successful write only the attribute
    names are needed (stale buckets are removed by name), so their values are not converted.
    """
    if not raw:
        return None
    if names_only is None:
        return {name: _to_python(_deserializer.deserialize(value)) for name, value in raw.items()}
    return {
        name: None if name.startswith(names_only) else _to_python(_deserializer.deserialize(value))
        for name, value in raw.items()
    }


def dump(value: Any) -> Any:
    """Serialise one Python value to DynamoDB's typed JSON."""
    return _serializer.serialize(value)


class ConditionFailed(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A conditional write's condition failed; ``item`` is ``ALL_OLD`` when it was asked for."""

    def __init__(self, item: Any) -> None:
        super().__init__("ConditionalCheckFailedException")
        self.item = item


@contextmanager
def translated() -> Iterator[None]:
    """The one botocore translation: a failed condition raises ``ConditionFailed``; every other
    client, connection or HTTP error raises ``StoreUnavailableError`` (fail closed)."""
    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            raise ConditionFailed(exc.response.get("Item")) from exc
        raise StoreUnavailableError(detail=type(exc).__name__) from exc
    except _UNAVAILABLE as exc:
        raise StoreUnavailableError(detail=type(exc).__name__) from exc
