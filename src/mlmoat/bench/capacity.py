"""The capacity meter: what each DynamoDB call of a botocore client would cost on DynamoDB.

``CapacityMeter.attach(client)`` registers two handlers on the client's event system:
``provide-client-params.dynamodb.*`` (before the call: for a write, the item as it is, read by
a separate client the meter never meters) and ``after-call.dynamodb.*`` (after the response:
for a write the item read again, for a read the items returned). Each item a call touches
becomes one ``CallRecord`` (operation, table, partition key, sizes before and after, write and
read units by ``mlmoat.bench.itemsize``'s rules, whether the condition failed, the wall and the
simulated time). A write over 400 KB is a ``Violation`` (raised as ``ItemTooLargeError`` when
the meter is ``strict``), whether the meter saw the item or the server refused it.

``item_seconds`` and ``peak`` (``mlmoat.bench.rollup``, re-exported here) roll the records up
per partition key and simulated second: the units each item consumed in each second, and the
hottest item against DynamoDB's per-partition limits (1,000 write units, 3,000 read units per
second).

The meter only observes: it never changes a request or a response, and it keeps no attribute
value, only sizes and partition keys (which for this project are key ids, never secrets).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlmoat.bench.itemsize import (
    ITEM_LIMIT_BYTES,
    ItemTooLargeError,
    TypedItem,
    item_size,
    read_units,
    write_units,
)
from mlmoat.bench.rollup import ItemSecond, Peak, item_seconds, peak

__all__ = [
    "CallRecord",
    "CapacityMeter",
    "ItemSecond",
    "ItemTooLargeError",
    "Peak",
    "Violation",
    "item_seconds",
    "peak",
]

WRITE_OPERATIONS = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
)
READ_OPERATIONS = frozenset({"GetItem", "BatchGetItem", "TransactGetItems", "Query", "Scan"})
_CONTEXT_KEY = "mlmoat_capacity"
_PROJECTING = ("ProjectionExpression", "AttributesToGet", "Select")
_FILTERING = ("FilterExpression", "QueryFilter", "ScanFilter")
_PLACEHOLDER = re.compile(r"[#:][A-Za-z0-9_]+")
_TOO_LARGE = "maximum allowed size"


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One item's share of one metered call (``call`` numbers the call; a batch's items share it).

    Writes: ``size_before``/``size_after`` are the item's sizes around the write (0: absent).
    Reads: ``size_after`` is the bytes read (a Query's or Scan's sum over the items it read).
    """

    call: int
    operation: str
    table: str
    pk: str
    size_before: int
    size_after: int
    write_units: float
    read_units: float
    condition_failed: bool
    error: str | None
    wall: float
    simulated: float

    @property
    def is_write(self) -> bool:
        """Whether the record is a write's."""
        return self.operation in WRITE_OPERATIONS

    @property
    def billed_bytes(self) -> int:
        """The size the units were computed from (a write's larger size; a read's bytes)."""
        return max(self.size_before, self.size_after)


@dataclass(frozen=True, slots=True)
class Violation:
    """A write over 400 KB: seen by the meter (``size``) or refused by the server (None)."""

    operation: str
    table: str
    pk: str
    size: int | None
    detail: str
    simulated: float


@dataclass(frozen=True, slots=True)
class _Pending:
    table: str
    key: dict[str, Any]
    pk: str
    before: int
    transactional: bool


class CapacityMeter:
    """Records what every DynamoDB call of the clients it is attached to would cost."""

    def __init__(
        self,
        *,
        reader: Any,
        clock: Callable[[], float] = time.time,
        strict: bool = False,
    ) -> None:
        """``reader``: a DynamoDB client for the same endpoint that the meter is never attached
        to (it reads items around writes); ``clock``: the simulated time of each record;
        ``strict``: raise ``ItemTooLargeError`` on an item over 400 KB instead of recording it
        only."""
        self._reader = reader
        self._clock = clock
        self._strict = strict
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, ...]] = {}
        self._calls = 0
        self.records: list[CallRecord] = []
        self.violations: list[Violation] = []
        #: While set, calls pass unmetered (no reads around writes, no records): a replay's
        #: warm-up, which brings items to their steady state before the metered window.
        self.paused = False

    def attach(self, client: Any) -> Any:
        """Meter ``client``'s DynamoDB calls from now on; returns the client."""
        events = client.meta.events
        tag = f"mlmoat-capacity-{id(self)}"
        events.register("provide-client-params.dynamodb.*", self._before, unique_id=tag + "-in")
        events.register("after-call.dynamodb.*", self._after, unique_id=tag + "-out")
        return client

    def clear(self) -> None:
        """Forget the records and violations so far."""
        with self._lock:
            self.records.clear()
            self.violations.clear()

    # ------------------------------------------------------------------ keys and items
    def _key_names(self, table: str) -> tuple[str, ...]:
        names = self._keys.get(table)
        if names is None:
            schema = self._reader.describe_table(TableName=table)["Table"]["KeySchema"]
            ordered = sorted(schema, key=lambda part: part["KeyType"] != "HASH")
            names = tuple(part["AttributeName"] for part in ordered)
            self._keys[table] = names
        return names

    def _key_of(self, table: str, item: Mapping[str, Any]) -> dict[str, Any]:
        return {name: item[name] for name in self._key_names(table) if name in item}

    @staticmethod
    def _pk(key: Mapping[str, Any], names: tuple[str, ...]) -> str:
        typed = key.get(names[0]) if names else None
        if not typed:
            return ""
        ((_, value),) = typed.items()
        return value.hex() if isinstance(value, (bytes, bytearray)) else str(value)

    def _current(self, table: str, key: Mapping[str, Any]) -> TypedItem | None:
        item: TypedItem | None = self._reader.get_item(
            TableName=table, Key=dict(key), ConsistentRead=True
        ).get("Item")
        return item

    # ------------------------------------------------------------------ before the call
    def _before(
        self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any
    ) -> None:
        operation = model.name
        if self.paused or (operation not in WRITE_OPERATIONS and operation not in READ_OPERATIONS):
            return
        pending: list[_Pending] = []
        if operation in WRITE_OPERATIONS:
            for table, key, new_item, transactional in self._targets(operation, params):
                names = self._key_names(table)
                pk = self._pk(key, names)
                if new_item is not None and (size := item_size(new_item)) > ITEM_LIMIT_BYTES:
                    self._violation(operation, table, pk, size, "PutItem over 400 KB")
                before = item_size(self._current(table, key))
                pending.append(_Pending(table, key, pk, before, transactional))
        context[_CONTEXT_KEY] = (operation, dict(params), pending)

    def _targets(
        self, operation: str, params: Mapping[str, Any]
    ) -> Iterable[tuple[str, dict[str, Any], TypedItem | None, bool]]:
        """(table, key, the item a put writes or None, transactional) of each written item."""
        if operation == "PutItem":
            yield (
                params["TableName"],
                self._key_of(params["TableName"], params["Item"]),
                params["Item"],
                False,
            )
        elif operation in ("UpdateItem", "DeleteItem"):
            yield params["TableName"], dict(params["Key"]), None, False
        elif operation == "BatchWriteItem":
            for table, requests in params["RequestItems"].items():
                for request in requests:
                    if "PutRequest" in request:
                        put = request["PutRequest"]["Item"]
                        yield table, self._key_of(table, put), put, False
                    else:
                        yield table, dict(request["DeleteRequest"]["Key"]), None, False
        elif operation == "TransactWriteItems":
            for entry in params["TransactItems"]:
                ((kind, body),) = entry.items()
                if kind == "Put":
                    put = body["Item"]
                    yield body["TableName"], self._key_of(body["TableName"], put), put, True
                else:  # Update, Delete, ConditionCheck
                    yield body["TableName"], dict(body["Key"]), None, True

    # ------------------------------------------------------------------ after the call
    def _after(
        self,
        http_response: Any,
        parsed: dict[str, Any],
        model: Any,
        context: dict[str, Any],
        **_: Any,
    ) -> None:
        stashed = context.pop(_CONTEXT_KEY, None)
        if stashed is None:
            return
        operation, params, pending = stashed
        error = None
        if getattr(http_response, "status_code", 200) >= 300:
            error = str(parsed.get("Error", {}).get("Code", "error"))
        with self._lock:
            self._calls += 1
            call = self._calls
        if operation in WRITE_OPERATIONS:
            self._after_write(call, operation, parsed, pending, error)
        else:
            for table, pk, size, units in self._reads(operation, params, parsed, error):
                self._record(call, operation, table, pk, 0, size, 0.0, units, False, error)

    def _after_write(
        self,
        call: int,
        operation: str,
        parsed: Mapping[str, Any],
        pending: list[_Pending],
        error: str | None,
    ) -> None:
        failed = self._failed_conditions(operation, parsed, len(pending), error)
        charged = error is None or any(failed)
        unprocessed = self._unprocessed(parsed) if operation == "BatchWriteItem" else []
        message = str(parsed.get("Error", {}).get("Message", ""))
        oversized: list[tuple[str, str, int | None, str]] = []
        if error is not None and _TOO_LARGE in message and pending:
            oversized.append((pending[0].table, pending[0].pk, None, message))  # the server's
        for index, target in enumerate(pending):
            if any(target.table == t and target.key == k for t, k in unprocessed):
                continue
            after = item_size(self._current(target.table, target.key))
            if after > ITEM_LIMIT_BYTES:
                oversized.append((target.table, target.pk, after, "item over 400 KB"))
            units = (
                float(write_units(target.before, after, transactional=target.transactional))
                if charged
                else 0.0
            )
            self._record(
                call,
                operation,
                target.table,
                target.pk,
                target.before,
                after,
                units,
                0.0,
                failed[index],
                error,
            )
        for table, pk, size, detail in oversized:  # after the records (strict raises here)
            self._violation(operation, table, pk, size, detail)

    @staticmethod
    def _failed_conditions(
        operation: str, parsed: Mapping[str, Any], count: int, error: str | None
    ) -> list[bool]:
        if error == "ConditionalCheckFailedException":
            return [True] * count
        if error == "TransactionCanceledException":
            reasons = parsed.get("CancellationReasons") or []
            return [
                index < len(reasons) and reasons[index].get("Code") == "ConditionalCheckFailed"
                for index in range(count)
            ]
        return [False] * count

    def _unprocessed(self, parsed: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        left = []
        for table, requests in (parsed.get("UnprocessedItems") or {}).items():
            for request in requests:
                if "PutRequest" in request:
                    left.append((table, self._key_of(table, request["PutRequest"]["Item"])))
                else:
                    left.append((table, dict(request["DeleteRequest"]["Key"])))
        return left

    def _reads(
        self,
        operation: str,
        params: Mapping[str, Any],
        parsed: Mapping[str, Any],
        error: str | None,
    ) -> Iterable[tuple[str, str, int, float]]:
        """(table, partition key, bytes read, read units) of each item (or Query/Scan) read."""
        if error is not None:
            return
        if operation == "GetItem":
            table = params["TableName"]
            item = parsed.get("Item")
            if item is not None and any(name in params for name in _PROJECTING):
                item = self._current(table, params["Key"])
            size = item_size(item)
            names = self._key_names(table)
            consistent = bool(params.get("ConsistentRead"))
            yield (
                table,
                self._pk(params["Key"], names),
                size,
                read_units(size, consistent=consistent),
            )
        elif operation == "BatchGetItem":
            yield from self._batch_reads(params, parsed)
        elif operation == "TransactGetItems":
            for entry, response in zip(
                params["TransactItems"], parsed.get("Responses") or [], strict=False
            ):
                body = entry["Get"]
                item = response.get("Item")
                if item is not None and "ProjectionExpression" in body:
                    item = self._current(body["TableName"], body["Key"])
                size = item_size(item)
                pk = self._pk(body["Key"], self._key_names(body["TableName"]))
                units = read_units(size, consistent=True, transactional=True)
                yield body["TableName"], pk, size, units
        else:  # Query, Scan: every item read counts, before any filter or projection
            table = params["TableName"]
            items = self._items_read(operation, params, parsed)
            size = sum(item_size(item) for item in items)
            names = self._key_names(table)
            pk = self._pk(items[0], names) if items and operation == "Query" else ""
            yield table, pk, size, read_units(size, consistent=bool(params.get("ConsistentRead")))

    def _batch_reads(
        self, params: Mapping[str, Any], parsed: Mapping[str, Any]
    ) -> Iterable[tuple[str, str, int, float]]:
        unprocessed = parsed.get("UnprocessedKeys") or {}
        for table, request in params["RequestItems"].items():
            names = self._key_names(table)
            returned = {
                self._pk(item, names) + "\x00" + repr(self._key_of(table, item)): item
                for item in (parsed.get("Responses") or {}).get(table, [])
            }
            skipped = unprocessed.get(table, {}).get("Keys", [])
            projecting = any(name in request for name in _PROJECTING)
            consistent = bool(request.get("ConsistentRead"))
            for key in request["Keys"]:
                if key in skipped:
                    continue
                pk = self._pk(key, names)
                if projecting:
                    item = self._current(table, key)
                else:
                    item = returned.get(pk + "\x00" + repr(self._key_of(table, key)))
                size = item_size(item)
                yield table, pk, size, read_units(size, consistent=consistent)

    def _items_read(
        self, operation: str, params: Mapping[str, Any], parsed: Mapping[str, Any]
    ) -> list[TypedItem]:
        """The items a Query or Scan read: the response's, or, when a projection or a filter
        hid some of what it read, the same request without them (through the reader)."""
        hidden = [name for name in (*_PROJECTING, *_FILTERING) if name in params]
        if not hidden:
            return list(parsed.get("Items") or [])
        bare = {name: value for name, value in params.items() if name not in hidden}
        used = set(_PLACEHOLDER.findall(str(bare.get("KeyConditionExpression", ""))))
        for field in ("ExpressionAttributeNames", "ExpressionAttributeValues"):
            kept = {k: v for k, v in (bare.pop(field, None) or {}).items() if k in used}
            if kept:
                bare[field] = kept
        call = self._reader.query if operation == "Query" else self._reader.scan
        return list(call(**bare).get("Items") or [])

    # ------------------------------------------------------------------ bookkeeping
    def _record(
        self,
        call: int,
        operation: str,
        table: str,
        pk: str,
        before: int,
        after: int,
        wcu: float,
        rcu: float,
        condition_failed: bool,
        error: str | None,
    ) -> None:
        record = CallRecord(
            call,
            operation,
            table,
            pk,
            before,
            after,
            wcu,
            rcu,
            condition_failed,
            error,
            time.time(),
            self._clock(),
        )
        with self._lock:
            self.records.append(record)

    def _violation(
        self, operation: str, table: str, pk: str, size: int | None, detail: str
    ) -> None:
        with self._lock:
            self.violations.append(Violation(operation, table, pk, size, detail, self._clock()))
        if self._strict:
            raise ItemTooLargeError(pk, size if size is not None else ITEM_LIMIT_BYTES + 1)
