"""The extraction monitor's per-principal detector state, kept in the security table.

``PrincipalStore`` carries these methods (``security.extraction.MonitorStateStore``): one item
``mon#<principal>#<model>`` per principal and model, written under an optimistic version.
"""

from __future__ import annotations

from typing import Any

from security.dynamo import ConditionFailed
from security.dynamo import dump as _dump
from security.dynamo import translated as _translated
from security.errors import StoreUnavailableError

MONITOR_PREFIX = "mon#"
# Idle monitor state expires (DynamoDB TTL) after 90 days without a query.
MONITOR_STATE_TTL_SECONDS = 90 * 86400


def monitor_pk(principal_id: str, model: str) -> str:
    """Partition key of the extraction monitor's state for a principal and model."""
    return f"{MONITOR_PREFIX}{principal_id}#{model}"


class MonitorStateMixin:
    """Monitor-state methods of ``PrincipalStore`` (it gives ``_client`` and ``_table``)."""

    _client: Any
    _table: str

    def load_monitor_state(
        self, principal_id: str, model: str, *, consistent: bool = True
    ) -> tuple[bytes | None, int]:
        """The monitor's serialised detector state for a principal and model, and its version.

        ``consistent=False`` reads eventually consistent, half the read units: the monitor
        does so first and relies on ``save_monitor_state``'s version check, which refuses a
        write based on a stale read (then it reads again, strongly consistent).

        Raises:
            StoreUnavailableError: DynamoDB could not be reached or refused the call.
        """
        with _translated():
            response = self._client.get_item(
                TableName=self._table,
                Key={"pk": {"S": monitor_pk(principal_id, model)}},
                ProjectionExpression="#state, state_version",
                ExpressionAttributeNames={"#state": "state"},
                ConsistentRead=consistent,
            )
        item = response.get("Item")
        if item is None:
            return None, 0
        blob = item.get("state", {}).get("B")
        version = int(item.get("state_version", {}).get("N", "0"))
        return (bytes(blob) if blob is not None else None), version

    def save_monitor_state(
        self, principal_id: str, model: str, blob: bytes, *, expected_version: int, now: int
    ) -> None:
        """Write the state only if nobody wrote it since ``expected_version`` was read.

        A lost race raises (``monitor_state_conflict``) so the queue redelivers the message and
        it is applied to the winner's state instead of overwriting it.

        Raises:
            StoreUnavailableError: DynamoDB failed, or the version moved
                (``monitor_state_conflict``).
        """
        condition = (
            "attribute_not_exists(pk)" if expected_version == 0 else "state_version = :expected"
        )
        values: dict[str, Any] = {
            ":blob": {"B": blob},
            ":next": _dump(expected_version + 1),
            ":now": _dump(now),
            ":ttl": _dump(now + MONITOR_STATE_TTL_SECONDS),
        }
        if expected_version:
            values[":expected"] = _dump(expected_version)
        try:
            with _translated():
                self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": monitor_pk(principal_id, model)}},
                    UpdateExpression=(
                        "SET #state = :blob, state_version = :next, updated_at = :now, #ttl = :ttl"
                    ),
                    ConditionExpression=condition,
                    ExpressionAttributeNames={"#state": "state", "#ttl": "ttl"},
                    ExpressionAttributeValues=values,
                )
        except ConditionFailed as failed:
            raise StoreUnavailableError("monitor_state_conflict") from failed
