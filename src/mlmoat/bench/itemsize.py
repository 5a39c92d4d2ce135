"""DynamoDB's item size and capacity rules (the developer guide's), on the typed wire format.

moto, the local DynamoDB the tests and the benchmarks use, stores items but charges nothing, so
these rules are the model ``mlmoat.bench.capacity`` meters calls with:

- **item size**: the sum over attributes of the UTF-8 length of the name plus the size of the
  value. A string is its UTF-8 bytes; a number about one byte per two significant digits plus
  one (leading and trailing zeros trimmed, at most 21); a binary its bytes; a boolean or a null
  one byte; a list or a map 3 bytes plus its elements, each with one byte of overhead (a map's
  element also has its name); a set the sum of its elements.
- **writes** (PutItem, UpdateItem, DeleteItem, each item of a BatchWriteItem): one write unit
  per started KB (1,024 bytes) of the larger of the item before and after, at least one. A
  write whose condition fails is charged the same way on the existing item. A transactional
  write costs twice that.
- **reads** (GetItem, each item of a BatchGetItem; Query and Scan sum the sizes of every item
  they read, then round): one read unit per started 4 KB when strongly consistent, half of it
  when eventually consistent, at least one (half) unit; a transactional read twice that.
- **limits**: an item is at most 400 KB (a larger write is refused with a
  ``ValidationException``); one partition key sustains at most 1,000 write units and 3,000
  read units per second.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

KB = 1024
ITEM_LIMIT_BYTES = 400 * KB
WRITE_UNIT_BYTES = KB
READ_UNIT_BYTES = 4 * KB
PARTITION_WRITE_UNITS_PER_SECOND = 1000
PARTITION_READ_UNITS_PER_SECOND = 3000
NUMBER_MAX_BYTES = 21

TypedValue = Mapping[str, Any]
TypedItem = Mapping[str, TypedValue]


class ItemTooLargeError(ValueError):
    """An item over DynamoDB's 400 KB limit: DynamoDB refuses the write (ValidationException)."""

    def __init__(self, pk: str, size: int) -> None:
        super().__init__(f"item {pk!r} is {size} bytes, over DynamoDB's {ITEM_LIMIT_BYTES}")
        self.pk = pk
        self.size = size


def utf8_len(text: str) -> int:
    """The UTF-8 length of ``text`` in bytes."""
    return len(text.encode("utf-8"))


def number_size(text: str) -> int:
    """The stored size of a DynamoDB number given as its wire text (``"-12.50"``, ``"1E+3"``).

    Significant digits are the digits left once the sign, the exponent and the decimal point are
    dropped and the leading and trailing zeros trimmed (zero has one); the size is one byte per
    two of them, rounded up, plus one, at most 21.
    """
    mantissa = text.strip().lstrip("+-").lower().split("e", 1)[0]
    digits = mantissa.replace(".", "").strip("0")
    significant = max(1, len(digits))
    return min(NUMBER_MAX_BYTES, math.ceil(significant / 2) + 1)


def _binary_len(value: Any) -> int:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    # botocore parses B to bytes; a str is base64 text (a raw wire body): count what it encodes.
    return len(base64.b64decode(value))


def value_size(typed: TypedValue) -> int:
    """The size of one typed attribute value (``{"S": "abc"}``, ``{"M": {...}}``), name excluded.

    Raises:
        ValueError: the value is not one DynamoDB type (``{"S": ..}``, ``{"N": ..}``, ...).
    """
    if len(typed) != 1:
        raise ValueError(f"a typed value has exactly one type, not {sorted(typed)}")
    ((kind, value),) = typed.items()
    if kind == "S":
        return utf8_len(value)
    if kind == "N":
        return number_size(value)
    if kind == "B":
        return _binary_len(value)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(utf8_len(member) for member in value)
    if kind == "NS":
        return sum(number_size(member) for member in value)
    if kind == "BS":
        return sum(_binary_len(member) for member in value)
    if kind == "L":
        return 3 + sum(1 + value_size(element) for element in value)
    if kind == "M":
        return 3 + sum(1 + utf8_len(name) + value_size(v) for name, v in value.items())
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def item_size(item: TypedItem | None) -> int:
    """The size of a typed item (its attribute names and values); 0 for no item."""
    if not item:
        return 0
    return sum(utf8_len(name) + value_size(value) for name, value in item.items())


def write_units(size_before: int, size_after: int, *, transactional: bool = False) -> int:
    """Write units of one item's write: started KB of the larger size, at least 1 (x2 in a
    transaction). A failed condition passes the existing item's size as both."""
    units = max(1, math.ceil(max(size_before, size_after) / WRITE_UNIT_BYTES))
    return 2 * units if transactional else units


def read_units(size: int, *, consistent: bool, transactional: bool = False) -> float:
    """Read units of reading ``size`` bytes (one item, or a Query's or Scan's sum): started 4 KB,
    at least 1; halved when eventually consistent, doubled in a transaction (always
    strongly consistent)."""
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    if transactional:
        return float(2 * units)
    return float(units) if consistent else units / 2
