"""Counting writes beside the admission's: refused requests and failed authentications.

``PrincipalStore`` carries these methods. ``charge_refusal`` is the one write of a request
refused after authentication (a bad body, a batch that can never fit, a model the caller may not
use): it authenticates exactly as the admission's write does and counts the refusal against the
principal's refusal allowance instead of its rows. ``record_auth_failure`` counts a failed
authentication under one throttle scope (a source address, a key id, everything).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from security.dynamo import ConditionFailed
from security.dynamo import dump as _dump
from security.dynamo import load as _load
from security.dynamo import translated as _translated
from security.records import REFUSAL_ATTR_PREFIX as REFUSAL_ATTR_PREFIX
from security.records import refusal_attr as refusal_attr
from security.writers import Stamp

if TYPE_CHECKING:
    from security.dynamo import Item

AUTHFAIL_PREFIX = "authfail#"
AUTHFAIL_ATTR_PREFIX = "fw_"


@dataclass(frozen=True, slots=True)
class RefusalRequest:
    """One conditional refusal-counting write, as ``limits`` computed it.

    ``secret_hash`` is None for a JWT subject (the token was verified; the item may be created by
    this write, as by a charge). ``window_start``/``window_seconds``: the refusal window counted
    (the one before it is removed).
    """

    pk: str
    kind: str
    now: int
    window_start: int
    window_seconds: int
    refusal_limit: int
    stamp: Stamp
    secret_hash: str | None = None
    subject: str | None = None
    issuer: str | None = None


@dataclass(frozen=True, slots=True)
class ChargeOutcome:
    """The result of a counting write: when ``ok``, what the write updated (``UPDATED_NEW``, or
    the whole item when the stamp asked for ``ALL_NEW``); else ``ALL_OLD`` (None: no item)."""

    ok: bool
    item: Item | None
    full: bool = True


class CounterMixin:
    """Refusal and failed-authentication counters of ``PrincipalStore``."""

    _client: Any
    _table: str

    def charge_refusal(self, request: RefusalRequest) -> ChargeOutcome:
        """Count one refused request, authenticating as ``charge`` does (no config version: a
        refusal's cost does not depend on the cached configuration), idempotent by its stamp.
        What it updated (or ALL_NEW, as the stamp asks) when it counted, else ALL_OLD (None when
        there is no such principal). A sharded key's refusals are counted on its key item.

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        names = {
            "#status": "status",
            "#rf": refusal_attr(request.window_start),
            "#rfo": refusal_attr(request.window_start - request.window_seconds),
        }
        values: dict[str, Any] = {
            ":now": _dump(request.now),
            ":one": _dump(1),
            ":active": _dump("active"),
            ":limit": _dump(request.refusal_limit),
        }
        stamp_set, stamp_conditions, removals = request.stamp.expression(names, values)
        sets = ["last_refused_at = :now", stamp_set]
        if request.secret_hash is None:
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
            conditions = ["(attribute_not_exists(#status) OR #status = :active)"]
        else:
            # Without the secret in the condition anyone who knows a key id could spend its
            # owner's refusal allowance.
            values[":hash"] = _dump(request.secret_hash)
            conditions = [
                "attribute_exists(pk)",
                "#status = :active",
                "(secret_hash = :hash OR (prev_secret_hash = :hash AND prev_secret_until > :now))",
                "(attribute_not_exists(expires_at) OR expires_at > :now)",
            ]
        conditions += ["(attribute_not_exists(#rf) OR #rf < :limit)", *stamp_conditions]
        update = (
            "SET "
            + ", ".join(sets)
            + " ADD #rf :one, refusals :one REMOVE "
            + ", ".join(["#rfo", *removals])
        )
        return self._counting_write(
            request.pk, update, conditions, names=names, values=values, stamp=request.stamp
        )

    def _counting_write(
        self,
        pk: str,
        update: str,
        conditions: list[str],
        *,
        names: dict[str, str],
        values: dict[str, Any],
        stamp: Stamp,
    ) -> ChargeOutcome:
        """One conditional counting write under ``stamp``: what it updated, or ALL_OLD.

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        try:
            with _translated():
                response = self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": pk}},
                    UpdateExpression=update,
                    ConditionExpression=" AND ".join(conditions),
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                    ReturnValues=stamp.return_values,
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ConditionFailed as failed:
            return ChargeOutcome(ok=False, item=_load(failed.item))
        return ChargeOutcome(ok=True, item=_load(response.get("Attributes")) or {}, full=stamp.full)

    def prune_lanes(self, pk: str, attrs: tuple[str, ...], *, before: int) -> ChargeOutcome:
        """Remove writer-lane attributes from a counting item, each only if still older than
        ``before`` (ms; ``security.writers``: the cleanup write), and only if the item exists.
        ALL_OLD when a lane wrote meanwhile (nothing is removed then).

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        names = {f"#p{i}": attr for i, attr in enumerate(attrs)}
        conditions = ["attribute_exists(pk)"] + [
            f"(attribute_not_exists({name}) OR {name} < :before)" for name in names
        ]
        try:
            with _translated():
                self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": pk}},
                    UpdateExpression="REMOVE " + ", ".join(names),
                    ConditionExpression=" AND ".join(conditions),
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues={":before": _dump(before)},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
        except ConditionFailed as failed:
            return ChargeOutcome(ok=False, item=_load(failed.item))
        return ChargeOutcome(ok=True, item=None)

    def record_auth_failure(self, scope: str, *, window_start: int, window_seconds: int) -> int:
        """Count a failed authentication under ``scope`` (``ip#<address>``, ``key#<id>``,
        ``all``); returns the count in its window. The item expires through the table's TTL
        one window after the window ends.

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        current = f"{AUTHFAIL_ATTR_PREFIX}{window_start}"
        previous = f"{AUTHFAIL_ATTR_PREFIX}{window_start - window_seconds}"
        with _translated():
            response = self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": AUTHFAIL_PREFIX + scope}},
                UpdateExpression="SET #ttl = :ttl ADD #w :one REMOVE #p",
                ExpressionAttributeNames={"#ttl": "ttl", "#w": current, "#p": previous},
                ExpressionAttributeValues={
                    ":ttl": _dump(window_start + 2 * window_seconds),
                    ":one": _dump(1),
                },
                ReturnValues="ALL_NEW",
            )
        item = _load(response.get("Attributes")) or {}
        return int(item.get(current, 0))
