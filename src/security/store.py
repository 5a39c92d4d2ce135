"""The only DynamoDB code: principals (API keys, token subjects), counters and throttles.

``PrincipalStore`` takes a low-level boto3 DynamoDB client and a table name. Every botocore
failure that means "DynamoDB did not answer as asked" (``ClientError``, connection and timeout
errors) becomes ``StoreUnavailableError`` chained from the original; anything else (a bug such as
a parameter validation error) is re-raised unchanged. A failed condition is not an error here:
``charge`` returns it, with the old item, for ``limits`` to explain.

Item shapes (partition key ``pk``; ``docs/limits.md`` has the full data model):

* ``key#<key_id>``: an API key: ``secret_hash`` (+ ``prev_secret_hash``/``prev_secret_until``
  during a rotation grace), ``status``, ``owner``, ``scopes``, ``rate_count``/``rate_window``,
  ``budget``, ``output_policy``, ``expires_at``, ``config_version``, ``rows_used``, ``requests``,
  ``created_at``, ``last_used_at``, ``flags``, ``shards`` (sharded keys); one ``rw_<window_start>``
  number per live rate window and one ``e_<lane>`` number per recently writing lane
  (``security.writers``: the idempotency of the counting write).
* ``key#<key_id>#s<k>``: shard ``k`` of a sharded key (``security.shards``): ``config_version``
  (kept equal to the key's by transactions), ``rows_used``, ``requests``, windows and lanes.
* ``sub#<issuer-hash>#<subject>``: a JWT subject: the same counters, created by its first charge
  (or by an admin's suspension).
* ``authfail#ip#<address>``, ``authfail#key#<key_id>``, ``authfail#all``: failed
  authentications per window (``fw_<window_start>``), with ``ttl``.
* on principals, ``rf_<window_start>`` and ``refusals``: requests refused after authentication
  (``security.counters``).
* ``mon#<principal_id>#<model>``: the extraction monitor's state (``state`` binary,
  ``state_version``, ``ttl``), written by the monitor only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from security.admin_store import AdminStoreMixin
from security.counters import ChargeOutcome as ChargeOutcome  # re-exported (the write's result)
from security.counters import CounterMixin
from security.dynamo import ConditionFailed
from security.dynamo import Item as Item  # re-exported: the item type of every store call
from security.dynamo import dump as _dump
from security.dynamo import load as _load
from security.dynamo import translated as _translated
from security.errors import NotFoundError, StoreUnavailableError
from security.monitor_state import MonitorStateMixin
from security.records import KEY_PREFIX as KEY_PREFIX  # the layout, re-exported (tooling, tests)
from security.records import RATE_ATTR_PREFIX as RATE_ATTR_PREFIX
from security.records import SUBJECT_PREFIX as SUBJECT_PREFIX
from security.records import KeyRecord, SubjectRecord
from security.records import issuer_hash as issuer_hash
from security.records import key_pk as key_pk
from security.records import rate_attr as rate_attr
from security.records import shard_pk as shard_pk
from security.records import subject_pk as subject_pk
from security.writers import Stamp

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """One conditional counting write, as ``limits`` computed it.

    ``kind`` is ``api_key`` (the secret hash, status, expiry and ``config_version`` are checked),
    ``jwt`` (the token was verified instead; the item may be created by this very write) or
    ``shard`` (a sharded key's counting item: only its ``config_version``, which every admin change
    moves with the key's, is checked). ``pk`` is the principal id (with ``shard``, the key's: the
    write goes to its shard ``shard``); ``window_start`` is the rate window counted. ``stamp``
    makes the write idempotent and prunes (``security.writers``); ``stale_attrs`` are rate windows
    to remove (as ``Sender`` planned them).
    """

    pk: str
    kind: str
    rows: int
    now: int
    window_start: int
    rate_left: int
    budget_left: int | None
    stamp: Stamp
    stale_attrs: tuple[str, ...]
    secret_hash: str | None = None
    config_version: int | None = None
    subject: str | None = None
    issuer: str | None = None
    shard: int | None = None

    @property
    def item_pk(self) -> str:
        """The partition key written."""
        return self.pk if self.shard is None else shard_pk(self.pk, self.shard)


class PrincipalStore(AdminStoreMixin, CounterMixin, MonitorStateMixin):
    """Principals, counters and throttles in the security table."""

    def __init__(self, *, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self._table = table_name

    # ----------------------------------------------------------------- reads
    def get(self, pk: str, *, consistent: bool = True) -> Item | None:
        """One read of an item: strongly consistent (one read unit per 4 KB) unless
        ``consistent`` is False (eventually consistent: half of that).

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        with _translated():
            response = self._client.get_item(
                TableName=self._table, Key={"pk": {"S": pk}}, ConsistentRead=consistent
            )
        return _load(response.get("Item"))

    def get_key(self, key_id: str) -> KeyRecord:
        """The record of an API key.

        Raises:
            NotFoundError: no such key.
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        record = self.read_key(key_pk(key_id))
        if record is None:
            raise NotFoundError("unknown_key")
        return record

    def read_key(self, principal_id: str, *, consistent: bool = True) -> KeyRecord | None:
        """One read of an API key (None: no such key), strongly consistent unless
        ``consistent`` is False.

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        item = self.get(principal_id, consistent=consistent)
        return None if item is None else KeyRecord(item)

    def read_subject(self, principal_id: str) -> SubjectRecord | None:
        """One strongly consistent read of a token subject (None: it never called and was
        never suspended).

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        item = self.get(principal_id)
        return None if item is None else SubjectRecord(item)

    # ---------------------------------------------------------------- writes
    def flag_principal(
        self, principal_id: str, *, reason: str, suspend: bool, now: int
    ) -> Item | None:
        """Record a flag (e.g. from the extraction monitor) and optionally suspend the principal.

        A revoked principal stays revoked (the flag is still recorded). Returns the new item.

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        # A flag alone changes nothing an instance caches (flags are not part of the admission
        # config), so it does not bump config_version: bumping it made every warm instance's
        # next write fail and retry, and two flags landing during one request (two monitor
        # instances) failed that request with 503 config_contention (seen by the load test).
        update = "SET flagged_at = :now, updated_at = :now ADD flags :reason"
        values: dict[str, Any] = {
            ":now": _dump(now),
            ":reason": {"SS": [reason]},
        }
        names: dict[str, str] = {}
        condition = None
        if suspend:
            update = update.replace("SET ", "SET #status = :suspended, ", 1)
            update += ", config_version :one"
            values[":one"] = _dump(1)
            values[":suspended"] = _dump("suspended")
            values[":revoked"] = _dump("revoked")
            names["#status"] = "status"
            condition = "attribute_not_exists(#status) OR #status <> :revoked"
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": principal_id}},
            "UpdateExpression": update,
            "ExpressionAttributeValues": values,
            "ReturnValues": "ALL_NEW",
        }
        if names:
            kwargs["ExpressionAttributeNames"] = names
        if condition:
            # A sharded key's suspension must move its shards' config_version too (below).
            kwargs["ConditionExpression"] = f"({condition}) AND attribute_not_exists(shards)"
            kwargs["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        try:
            with _translated():
                response = self._client.update_item(**kwargs)
        except ConditionFailed as failed:
            if not suspend or condition is None:
                raise StoreUnavailableError(detail="ClientError") from failed
            old = _load(failed.item) or {}
            if old.get("status") != "revoked":
                changed = self.update_sharded(
                    old, update=update, condition=condition, names=names, values=values, now=now
                )
                if changed is not None:
                    return changed
            return self.flag_principal(principal_id, reason=reason, suspend=False, now=now)
        return _load(response.get("Attributes"))

    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """The one conditional counting write of an admission (see ``docs/limits.md``).

        Checks the principal (status, secret hash, expiry, config version; a shard: its config
        version), the rate window, the budget and that this write did not land already (the
        stamp); if all hold, adds the rows to the window and the budget, sets the lane's sequence
        and removes stale windows and lanes, all in one ``UpdateItem``. Returns what it updated
        (``UPDATED_NEW``, or ``ALL_NEW`` if the stamp asks), or on a failed condition ALL_OLD.

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        names = {"#w": rate_attr(request.window_start)}
        values: dict[str, Any] = {
            ":now": _dump(request.now),
            ":rows": _dump(request.rows),
            ":one": _dump(1),
            ":rate_left": _dump(request.rate_left),
        }
        stamp_set, stamp_conditions, removals = request.stamp.expression(names, values)
        sets = ["last_used_at = :now", stamp_set]
        conditions: list[str] = []
        if request.kind == "shard":
            # The key item is the authority (read through the verification cache); every change
            # of it moves the shards' config_version in the same transaction.
            values[":version"] = _dump(request.config_version or 0)
            conditions.append("config_version = :version")
        elif request.secret_hash is None:
            # A token subject: the token was verified, the item is created by its first charge.
            names["#status"] = "status"
            sets += [
                "kind = if_not_exists(kind, :kind)",
                "created_at = if_not_exists(created_at, :now)",
                "#status = if_not_exists(#status, :active)",
                "subject = :subject",
                "issuer = :issuer",
            ]
            values[":active"] = _dump("active")
            values[":kind"] = _dump(request.kind)
            values[":subject"] = _dump(request.subject or "")
            values[":issuer"] = _dump(request.issuer or "")
            conditions.append("(attribute_not_exists(#status) OR #status = :active)")
        else:
            # The secret is checked here, in the same write, so a key rotated or revoked by another
            # instance a millisecond ago is refused; the previous hash only while its grace lasts.
            names["#status"] = "status"
            values[":active"] = _dump("active")
            values[":hash"] = _dump(request.secret_hash)
            values[":version"] = _dump(request.config_version or 0)
            conditions += [
                "#status = :active",
                "config_version = :version",
                "(secret_hash = :hash OR (prev_secret_hash = :hash AND prev_secret_until > :now))",
                "(attribute_not_exists(expires_at) OR expires_at > :now)",
            ]
        conditions.append("(attribute_not_exists(#w) OR #w <= :rate_left)")
        if request.budget_left is not None:
            values[":budget_left"] = _dump(request.budget_left)
            conditions.append("(attribute_not_exists(rows_used) OR rows_used <= :budget_left)")
        # Idempotency: a retried write (same sequence) finds its lane's attribute at that sequence
        # and fails here; limits reads ALL_OLD and treats it as already counted.
        conditions += stamp_conditions
        update = "SET " + ", ".join(sets) + " ADD rows_used :rows, requests :one, #w :rows"
        taken = set(names.values())
        stale = [a for a in dict.fromkeys(request.stale_attrs) if a not in taken]
        for index, attr in enumerate(stale):
            names[f"#s{index}"] = attr
            removals.append(f"#s{index}")
        if removals:
            update += " REMOVE " + ", ".join(removals)
        return self._counting_write(
            request.item_pk, update, conditions, names=names, values=values, stamp=request.stamp
        )
