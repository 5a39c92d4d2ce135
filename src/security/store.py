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
  ``created_at``, ``last_used_at``, ``flags``; one ``rw_<window_start>`` number per live rate
  window and one ``rq_<bucket>`` string set of recent request-id digests per idempotency bucket.
* ``sub#<issuer-hash>#<subject>``: a JWT subject: the same counters, created by its first charge.
* ``authfail#ip#<address>``, ``authfail#key#<key_id>``, ``authfail#all``: failed
  authentications per window (``fw_<window_start>``), with ``ttl``.
* on principals, ``rf_<window_start>`` and ``refusals``: requests refused after authentication
  (``security.counters``).
* ``mon#<principal_id>#<model>``: the extraction monitor's state (``state`` binary,
  ``state_version``, ``ttl``), written by the monitor only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from security.counters import AUTHFAIL_ATTR_PREFIX as AUTHFAIL_ATTR_PREFIX
from security.counters import AUTHFAIL_PREFIX as AUTHFAIL_PREFIX
from security.counters import CounterMixin
from security.dynamo import ConditionFailed
from security.dynamo import Item as Item  # re-exported: the item type of every store call
from security.dynamo import dump as _dump
from security.dynamo import load as _load
from security.dynamo import translated as _translated
from security.errors import ConflictError, NotFoundError, StoreUnavailableError
from security.monitor_state import MonitorStateMixin

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

KEY_PREFIX = "key#"
RATE_ATTR_PREFIX = "rw_"
REQUEST_ATTR_PREFIX = "rq_"


def key_pk(key_id: str) -> str:
    """The partition key of an API key's item."""
    return KEY_PREFIX + key_id


def rate_attr(window_start: int) -> str:
    """The attribute counting rows in the rate window starting at ``window_start``."""
    return f"{RATE_ATTR_PREFIX}{window_start}"


def request_attr(bucket: int) -> str:
    """The string-set attribute holding request-id digests of idempotency bucket ``bucket``."""
    return f"{REQUEST_ATTR_PREFIX}{bucket}"


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """One conditional counting write, as ``limits`` computed it.

    ``secret_hash`` is None for a JWT subject (the token was verified instead) and then the item
    may be created by this very write. ``config_version`` is None for JWT subjects too.
    """

    pk: str
    kind: str
    rows: int
    now: int
    rate_attr: str
    rate_left: int
    budget_left: int | None
    request_attr: str
    previous_request_attr: str
    request_digest: str
    stale_attrs: tuple[str, ...]
    secret_hash: str | None = None
    config_version: int | None = None
    subject: str | None = None
    issuer: str | None = None


@dataclass(frozen=True, slots=True)
class ChargeOutcome:
    """The result of a charge: ``item`` is ALL_NEW when ``ok``, else ALL_OLD (None if absent).

    When ``ok``, the ``rq_*`` request-id digest sets are present by name only (value None): they
    are needed only to tell a retry on a failed condition, and then ALL_OLD has them in full.
    """

    ok: bool
    item: Item | None


class PrincipalStore(CounterMixin, MonitorStateMixin):
    """Principals, counters and throttles in the security table."""

    def __init__(self, *, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self._table = table_name

    # ----------------------------------------------------------------- reads
    def get(self, pk: str) -> Item | None:
        """One strongly consistent read of an item.

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        with _translated():
            response = self._client.get_item(
                TableName=self._table, Key={"pk": {"S": pk}}, ConsistentRead=True
            )
        return _load(response.get("Item"))

    def get_key(self, key_id: str) -> Item:
        """The item of an API key.

        Raises:
            NotFoundError: no such key.
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        item = self.get(key_pk(key_id))
        if item is None:
            raise NotFoundError("unknown_key")
        return item

    def list_keys(self, *, owner: str | None = None) -> list[Item]:
        """Every API key item (paginated scan; admin use only, never on the request path).

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
                items.extend(i for raw in response.get("Items", []) if (i := _load(raw)))
                last = response.get("LastEvaluatedKey")
                if not last:
                    break
                kwargs["ExclusiveStartKey"] = last
        return sorted(items, key=lambda i: (i.get("created_at", 0), i["pk"]))

    # ---------------------------------------------------------------- writes
    def create_key(self, item: Item) -> None:
        """Write a new key item; refuses to overwrite an existing one.

        Raises:
            InvalidPayloadError: an item with this key id already exists (``key_exists``).
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        try:
            with _translated():
                self._client.put_item(
                    TableName=self._table,
                    Item={name: _dump(value) for name, value in item.items()},
                    ConditionExpression="attribute_not_exists(pk)",
                )
        except ConditionFailed as failed:
            raise ConflictError("key_exists") from failed

    def set_status(
        self, key_id: str, status: str, *, allowed_from: Iterable[str], now: int
    ) -> Item:
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
        )

    def rotate_secret(self, key_id: str, *, new_hash: str, grace_until: int, now: int) -> Item:
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
        )

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
            kwargs["ConditionExpression"] = condition
        try:
            with _translated():
                response = self._client.update_item(**kwargs)
        except ConditionFailed as failed:
            if not suspend:
                raise StoreUnavailableError(detail="ClientError") from failed
            return self.flag_principal(principal_id, reason=reason, suspend=False, now=now)
        return _load(response.get("Attributes"))

    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """The one conditional counting write of an admission (see ``docs/limits.md``).

        Checks the principal (status, secret hash, expiry, config version), the rate window, the
        budget and that this request id was not already counted; if all hold, adds the rows to the
        window and the budget, records the request id and removes stale windows and buckets, all
        in one ``UpdateItem``. Returns ALL_NEW, or on a failed condition ALL_OLD.

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        names = {
            "#status": "status",
            "#w": request.rate_attr,
            "#rq": request.request_attr,
            "#rqp": request.previous_request_attr,
        }
        values: dict[str, Any] = {
            ":now": _dump(request.now),
            ":rows": _dump(request.rows),
            ":one": _dump(1),
            ":active": _dump("active"),
            ":rate_left": _dump(request.rate_left),
            ":rid": {"SS": [request.request_digest]},
            ":ridv": _dump(request.request_digest),
        }
        sets = ["last_used_at = :now"]
        conditions: list[str] = []
        if request.secret_hash is None:
            # A token subject: the token was verified, the item is created by its first charge.
            sets += [
                "kind = if_not_exists(kind, :kind)",
                "created_at = if_not_exists(created_at, :now)",
                "#status = if_not_exists(#status, :active)",
                "subject = :subject",
                "issuer = :issuer",
            ]
            values[":kind"] = _dump(request.kind)
            values[":subject"] = _dump(request.subject or "")
            values[":issuer"] = _dump(request.issuer or "")
            conditions.append("(attribute_not_exists(#status) OR #status = :active)")
        else:
            # The secret is checked here, in the same write, so a key rotated or revoked by another
            # instance a millisecond ago is refused; the previous hash only while its grace lasts.
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
        # Idempotency: a retried request (same id) finds its digest in the current or the
        # previous bucket and fails here; limits reads ALL_OLD and treats it as already counted.
        conditions.append("NOT contains(#rq, :ridv) AND NOT contains(#rqp, :ridv)")
        update = (
            "SET " + ", ".join(sets) + " ADD rows_used :rows, requests :one, #w :rows, #rq :rid"
        )
        stale = [a for a in dict.fromkeys(request.stale_attrs) if a not in names.values()]
        if stale:
            removals = []
            for index, attr in enumerate(stale):
                names[f"#s{index}"] = attr
                removals.append(f"#s{index}")
            update += " REMOVE " + ", ".join(removals)
        try:
            with _translated():
                response = self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": request.pk}},
                    UpdateExpression=update,
                    ConditionExpression=" AND ".join(conditions),
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ConditionFailed as failed:
            old: Any = failed.item
            return ChargeOutcome(ok=False, item=_load(old))
        return ChargeOutcome(
            ok=True, item=_load(response.get("Attributes"), names_only=REQUEST_ATTR_PREFIX)
        )

    def _update_key(
        self,
        key_id: str,
        *,
        update: str,
        condition: str,
        names: dict[str, str],
        values: dict[str, Any],
    ) -> Item:
        try:
            with _translated():
                response = self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": key_pk(key_id)}},
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ConditionFailed as failed:
            if not failed.item:
                raise NotFoundError("unknown_key") from failed
            raise ConflictError("invalid_transition") from failed
        item = _load(response.get("Attributes"))
        if item is None:  # pragma: no cover - ALL_NEW always returns the item
            raise StoreUnavailableError("empty_update_response")
        return item
