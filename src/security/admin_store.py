"""Administration writes of ``PrincipalStore``: create, list, move and rotate keys; suspend and
reinstate token subjects. Never on the request path (the admin function and ``mlmoat keys``).

A sharded key (``security.shards``) is changed in one ``TransactWriteItems`` with its shards:
the key item's update and an ``ADD config_version :one`` on every shard, so the shards' version
always equals the key's and a cached configuration goes stale on every shard at once. An
unsharded key's change is one conditional ``UpdateItem`` (conditioned on the item having no
shards; a sharded key's is found by its ALL_OLD and done as a transaction).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from security.dynamo import ConditionFailed, Item, TransactionCancelled
from security.dynamo import dump as _dump
from security.dynamo import load as _load
from security.dynamo import translated as _translated
from security.errors import ConflictError, NotFoundError, StoreUnavailableError
from security.records import KEY_PREFIX, SHARD_KIND, Counters, KeyRecord, NewKey, SubjectRecord
from security.records import key_pk as _key_pk
from security.records import shard_pk as _shard_pk


class AdminStoreMixin:
    """Administration methods of ``PrincipalStore`` (it gives ``_client``, ``_table``, ``get``)."""

    _client: Any
    _table: str

    if TYPE_CHECKING:

        def get(self, pk: str) -> Item | None:
            """Read one item (consistent): ``PrincipalStore.get``."""

    def list_keys(self, *, owner: str | None = None) -> list[KeyRecord]:
        """Every API key (paginated scan; admin use only, never on the request path).

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        names = {"#pk": "pk"}
        values: dict[str, Any] = {":prefix": {"S": KEY_PREFIX}}
        filter_expr = "begins_with(#pk, :prefix)"
        if owner is not None:
            names["#owner"] = "owner"
            values[":owner"] = {"S": owner}
            filter_expr += " AND #owner = :owner"
        items: list[Item] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": filter_expr,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
        }
        with _translated():
            while True:
                response = self._client.scan(**kwargs)
                items.extend(
                    i
                    for raw in response.get("Items", [])
                    if (i := _load(raw)) and i.get("kind") != SHARD_KIND  # a sharded key's counters
                )
                last = response.get("LastEvaluatedKey")
                if not last:
                    break
                kwargs["ExclusiveStartKey"] = last
        items.sort(key=lambda i: (i.get("created_at", 0), i["pk"]))
        return [KeyRecord(item) for item in items]

    def get_shards(self, pk: str, shards: int) -> list[Counters]:
        """The shard items of a sharded key (consistent reads, admin use only).

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        wanted = [{"pk": {"S": _shard_pk(pk, index)}} for index in range(shards)]
        found: list[Item] = []
        with _translated():
            while wanted:
                batch, wanted = wanted[:100], wanted[100:]
                response = self._client.batch_get_item(
                    RequestItems={self._table: {"Keys": batch, "ConsistentRead": True}}
                )
                rows = response["Responses"].get(self._table, [])
                found += [item for raw in rows if (item := _load(raw))]
                wanted += response.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])
        return [Counters(item) for item in found]

    def create_key(self, key: NewKey | Item) -> KeyRecord:
        """Write a new key item (and its shard items, in one transaction, for a sharded key);
        refuses to overwrite an existing one. Returns its record. (An ``Item`` is written as it
        is: the tests' and tooling's hand-made items.)

        Raises:
            ConflictError: an item with this key id already exists (``key_exists``).
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        item, *shards = key.items() if isinstance(key, NewKey) else [key]
        if shards:
            puts = [
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": {name: _dump(value) for name, value in entry.items()},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
                for entry in (item, *shards)
            ]
            if self._transact(puts) is not None:
                raise ConflictError("key_exists")
            return KeyRecord(item)
        try:
            with _translated():
                self._client.put_item(
                    TableName=self._table,
                    Item={name: _dump(value) for name, value in item.items()},
                    ConditionExpression="attribute_not_exists(pk)",
                )
        except ConditionFailed as failed:
            raise ConflictError("key_exists") from failed
        return KeyRecord(item)

    def update_sharded(
        self,
        old: Item,
        *,
        update: str,
        condition: str,
        names: dict[str, str],
        values: dict[str, Any],
        now: int,
    ) -> Item | None:
        """``_update_with_shards`` (one transaction over the key and its shards) when ``old``,
        the ALL_OLD of a write refused for its shards, is a sharded key's item; None when it is
        not, or its own condition failed.

        Raises:
            StoreUnavailableError: as ``_update_with_shards``.
        """
        shards = int(old.get("shards", 1))
        if shards <= 1:
            return None
        return self._update_with_shards(
            str(old["pk"]),
            shards,
            update=update,
            condition=condition,
            names=names,
            values=values,
            now=now,
        )

    def _update_with_shards(
        self,
        pk: str,
        shards: int,
        *,
        update: str,
        condition: str,
        names: dict[str, str],
        values: dict[str, Any],
        now: int,
    ) -> Item | None:
        """Apply a key item's update and bump its ``shards`` shards' config_version, in one
        transaction; the key item after it, or None when the key item's condition failed.

        Raises:
            StoreUnavailableError: DynamoDB failed, a shard is missing, or the transaction kept
                conflicting with counting writes.
        """
        entries: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": {"pk": {"S": pk}},
                    "UpdateExpression": update,
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                }
            }
        ]
        entries += [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": {"pk": {"S": _shard_pk(pk, index)}},
                    "UpdateExpression": "SET updated_at = :now ADD config_version :one",
                    "ConditionExpression": "attribute_exists(pk)",
                    "ExpressionAttributeValues": {":now": _dump(now), ":one": _dump(1)},
                }
            }
            for index in range(shards)
        ]
        reasons = self._transact(entries)
        if reasons is not None:
            if any(code == "ConditionalCheckFailed" for code in reasons[1:]):
                raise StoreUnavailableError("shard_missing", detail=pk)
            return None
        return self.get(pk)

    def _transact(self, entries: list[dict[str, Any]]) -> list[str] | None:
        """Run a transaction; None when it applied, else the cancellation reasons' codes when a
        condition failed. A conflict with a concurrent write is retried (3 attempts).

        Raises:
            StoreUnavailableError: DynamoDB failed or the transaction kept conflicting.
        """
        for _attempt in range(3):
            try:
                with _translated():
                    self._client.transact_write_items(TransactItems=entries)
            except TransactionCancelled as cancelled:
                if "ConditionalCheckFailed" in cancelled.codes:
                    return cancelled.codes
                if "TransactionConflict" not in cancelled.codes:
                    raise StoreUnavailableError(detail="ClientError") from cancelled
                continue
            return None
        raise StoreUnavailableError("transaction_conflict")

    def set_status(
        self, key_id: str, status: str, *, allowed_from: Iterable[str], now: int
    ) -> KeyRecord:
        """Move a key to ``status`` if it is now in one of ``allowed_from``; bumps config_version.

        Raises:
            NotFoundError: no such key.
            InvalidPayloadError: the current status forbids the move (``invalid_transition``).
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        sources = sorted(set(allowed_from))
        placeholders = [f":from{i}" for i in range(len(sources))]
        values: dict[str, Any] = {":status": _dump(status), ":now": _dump(now), ":one": _dump(1)}
        values.update({p: _dump(s) for p, s in zip(placeholders, sources, strict=True)})
        return self._update_key(
            key_id,
            update="SET #status = :status, updated_at = :now ADD config_version :one",
            condition=f"attribute_exists(pk) AND #status IN ({', '.join(placeholders)})",
            names={"#status": "status"},
            values=values,
            now=now,
        )

    def rotate_secret(self, key_id: str, *, new_hash: str, grace_until: int, now: int) -> KeyRecord:
        """Replace a key's secret hash, keeping the old one valid until ``grace_until``.

        Counters (rows used, windows, budget) are untouched: rotation is no budget reset.

        Raises:
            NotFoundError: no such key.
            InvalidPayloadError: the key is revoked (``invalid_transition``).
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        return self._update_key(
            key_id,
            update=(
                "SET prev_secret_hash = secret_hash, prev_secret_until = :until, "
                "secret_hash = :new, rotated_at = :now, updated_at = :now ADD config_version :one"
            ),
            condition="attribute_exists(pk) AND #status <> :revoked",
            names={"#status": "status"},
            values={
                ":until": _dump(grace_until),
                ":new": _dump(new_hash),
                ":now": _dump(now),
                ":one": _dump(1),
                ":revoked": _dump("revoked"),
            },
            now=now,
        )

    def set_subject_status(
        self,
        pk: str,
        status: str,
        *,
        allowed_from: Iterable[str],
        subject: str,
        issuer: str,
        now: int,
        create: bool,
    ) -> SubjectRecord:
        """Move a token subject to ``status`` from one of ``allowed_from``; with ``create``, a
        subject that never called gets its item (suspended before its first request).

        Raises:
            NotFoundError: no such subject (``unknown_subject``).
            ConflictError: the current status forbids the move (``invalid_transition``).
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        sources = sorted(set(allowed_from))
        placeholders = [f":from{i}" for i in range(len(sources))]
        condition = f"#status IN ({', '.join(placeholders)})"
        condition = f"(attribute_not_exists(pk) OR {condition})" if create else condition
        values: dict[str, Any] = {
            ":status": _dump(status),
            ":now": _dump(now),
            ":kind": _dump("jwt"),
            ":subject": _dump(subject),
            ":issuer": _dump(issuer),
        }
        values.update({p: _dump(s) for p, s in zip(placeholders, sources, strict=True)})
        try:
            with _translated():
                response = self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": pk}},
                    UpdateExpression=(
                        "SET #status = :status, updated_at = :now, subject = :subject, "
                        "issuer = :issuer, kind = if_not_exists(kind, :kind), "
                        "created_at = if_not_exists(created_at, :now)"
                    ),
                    ConditionExpression=condition,
                    ExpressionAttributeNames={"#status": "status"},
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ConditionFailed as failed:
            if not failed.item:
                raise NotFoundError("unknown_subject") from failed
            raise ConflictError("invalid_transition") from failed
        item = _load(response.get("Attributes"))
        if item is None:  # pragma: no cover - ALL_NEW always returns the item
            raise StoreUnavailableError("empty_update_response")
        return SubjectRecord(item)

    def _update_key(
        self,
        key_id: str,
        *,
        update: str,
        condition: str,
        names: dict[str, str],
        values: dict[str, Any],
        now: int,
    ) -> KeyRecord:
        pk = _key_pk(key_id)
        try:
            with _translated():
                response = self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": pk}},
                    UpdateExpression=update,
                    ConditionExpression=f"({condition}) AND attribute_not_exists(shards)",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ConditionFailed as failed:
            old = _load(failed.item)
            if not old:
                raise NotFoundError("unknown_key") from failed
            changed = self.update_sharded(
                old, update=update, condition=condition, names=names, values=values, now=now
            )
            if changed is not None:
                return KeyRecord(changed)
            raise ConflictError("invalid_transition") from failed
        item = _load(response.get("Attributes"))
        if item is None:  # pragma: no cover - ALL_NEW always returns the item
            raise StoreUnavailableError("empty_update_response")
        return KeyRecord(item)
