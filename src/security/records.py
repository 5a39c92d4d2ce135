"""The item layout, and the typed records the store hands out instead of items.

Every attribute name, partition-key prefix and window attribute of the security table is spelled
here (``security.store``'s docstring draws the items). Outside the store, code reads records:

* ``Counters``: what a counting item (a key, a shard, a token subject) holds or a write returned
  of it: rows used, requests, refusals, rows per rate window, status and config version;
* ``KeyRecord``: an API key (its configuration, secret hashes and counters);
* ``SubjectRecord``: a token subject (status, flags and counters);
* ``NewKey``: what ``PrincipalStore.create_key`` writes.

A record wraps the item as DynamoDB returned it (no copy: the hot path builds one per write);
``record.item`` is for the store's own modules and the tests, never for the rest of the layer.
A write that returned ``UPDATED_NEW`` gives a record of only what it changed: its counters read
None for what it did not return.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from security.settings import RateSpec

Item = dict[str, Any]

KEY_PREFIX = "key#"
SUBJECT_PREFIX = "sub#"
RATE_ATTR_PREFIX = "rw_"
REFUSAL_ATTR_PREFIX = "rf_"
SHARD_KIND = "shard"
_STATUSES_THAT_SAY_WHY = ("revoked", "suspended")


def issuer_hash(issuer: str) -> str:
    """A short stable hash of an issuer URL (keeps the partition key short and free of '#')."""
    return hashlib.sha256(issuer.encode("utf-8")).hexdigest()[:16]


def subject_pk(issuer: str, subject: str) -> str:
    """The partition key of a JWT subject's item: ``sub#<issuer-hash>#<subject>``."""
    return f"{SUBJECT_PREFIX}{issuer_hash(issuer)}#{subject}"


def key_pk(key_id: str) -> str:
    """The partition key of an API key's item."""
    return KEY_PREFIX + key_id


def shard_pk(key_pk: str, index: int) -> str:
    """The partition key of shard ``index`` of the key whose item is ``key_pk``."""
    return f"{key_pk}#s{index}"


def rate_attr(window_start: int) -> str:
    """The attribute counting rows in the rate window starting at ``window_start``."""
    return f"{RATE_ATTR_PREFIX}{window_start}"


def refusal_attr(window_start: int) -> str:
    """The attribute counting refused requests in the refusal window starting there."""
    return f"{REFUSAL_ATTR_PREFIX}{window_start}"


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


class Counters:
    """A counting item's counters and state, as a read or a write returned them."""

    __slots__ = ("item",)

    def __init__(self, item: Mapping[str, Any] | None) -> None:
        self.item: Mapping[str, Any] = item or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pk={self.item.get('pk')!r})"

    @property
    def rows_used(self) -> int | None:
        """Rows counted against the budget (None: not in what was returned)."""
        return _int(self.item.get("rows_used"))

    @property
    def requests(self) -> int:
        """Requests admitted."""
        return int(self.item.get("requests", 0))

    @property
    def refusals(self) -> int:
        """Requests refused after authentication."""
        return int(self.item.get("refusals", 0))

    def window_rows(self, window_start: int) -> int | None:
        """Rows counted in the rate window starting at ``window_start`` (None: not returned)."""
        return _int(self.item.get(rate_attr(window_start)))

    def refusals_in(self, window_start: int) -> int | None:
        """Refusals counted in the refusal window starting at ``window_start``."""
        return _int(self.item.get(refusal_attr(window_start)))

    @property
    def live_windows(self) -> list[str]:
        """The names of the rate windows the item holds (shown by the admin views)."""
        return sorted(name for name in self.item if name.startswith(RATE_ATTR_PREFIX))

    @property
    def active(self) -> bool:
        """Whether the principal may be admitted (a subject with no item yet is active)."""
        return bool(self.item.get("status", "active") == "active")

    @property
    def refusal_reason(self) -> str:
        """The authentication failure a non-active status means (``revoked``, ``suspended``,
        else ``inactive``)."""
        status = self.item.get("status", "active")
        return status if status in _STATUSES_THAT_SAY_WHY else "inactive"

    @property
    def config_version(self) -> int | None:
        """The configuration version (None: not in what was returned)."""
        return _int(self.item.get("config_version"))

    @property
    def last_used_at(self) -> int | None:
        """When the item last counted a request."""
        return _int(self.item.get("last_used_at"))

    @property
    def created_at(self) -> int | None:
        """When the item was created."""
        return _int(self.item.get("created_at"))

    @property
    def updated_at(self) -> int | None:
        """When an administrator last changed the item."""
        return _int(self.item.get("updated_at"))

    @property
    def flags(self) -> list[str]:
        """Flags recorded on the principal (e.g. by the extraction monitor), sorted."""
        return sorted(self.item.get("flags") or ())

    @property
    def flagged_at(self) -> int | None:
        """When the principal was last flagged."""
        return _int(self.item.get("flagged_at"))


class KeyRecord(Counters):
    """An API key: configuration, secret hashes (never shown) and counters."""

    __slots__ = ()

    @property
    def principal_id(self) -> str:
        """The key's principal id (its partition key)."""
        return str(self.item["pk"])

    @property
    def key_id(self) -> str:
        """The key id."""
        return str(self.item.get("key_id") or self.principal_id.removeprefix(KEY_PREFIX))

    @property
    def status(self) -> str | None:
        """``active``, ``suspended`` or ``revoked``."""
        status = self.item.get("status")
        return None if status is None else str(status)

    @property
    def active(self) -> bool:
        """Whether the key's status is ``active``."""
        return self.item.get("status") == "active"

    @property
    def owner(self) -> str | None:
        """Who the key was issued to."""
        owner = self.item.get("owner")
        return None if owner is None else str(owner)

    @property
    def scopes(self) -> frozenset[str]:
        """The key's scopes."""
        return frozenset(self.item.get("scopes") or ())

    @property
    def rate_limit(self) -> RateSpec | None:
        """The key's own rate limit (None: the operator's default applies)."""
        if "rate_count" in self.item and "rate_window" in self.item:
            return RateSpec(int(self.item["rate_count"]), int(self.item["rate_window"]))
        return None

    @property
    def budget(self) -> int | None:
        """Rows the key may use in its life (None: unlimited)."""
        return _int(self.item.get("budget"))

    @property
    def output_policy(self) -> str | None:
        """The key's output policy as stored (validated by its reader)."""
        policy = self.item.get("output_policy")
        return policy if isinstance(policy, str) else None

    @property
    def secret_hash(self) -> str | None:
        """The current secret's hash."""
        value = self.item.get("secret_hash")
        return None if value is None else str(value)

    @property
    def previous_secret_hash(self) -> str | None:
        """The previous secret's hash (a rotation's grace)."""
        value = self.item.get("prev_secret_hash")
        return None if value is None else str(value)

    @property
    def previous_secret_until(self) -> int:
        """Until when the previous secret is accepted (0: not at all)."""
        return int(self.item.get("prev_secret_until", 0))

    @property
    def config_version(self) -> int:
        """The configuration version every admin change moves."""
        return int(self.item.get("config_version", 0))

    @property
    def expires_at(self) -> int | None:
        """When the key stops working."""
        return _int(self.item.get("expires_at"))

    @property
    def shards(self) -> int:
        """How many items count for the key (``security.shards``); 1 when unsharded."""
        return max(1, int(self.item.get("shards", 1)))

    @property
    def rotated_at(self) -> int | None:
        """When the secret was last rotated."""
        return _int(self.item.get("rotated_at"))


class SubjectRecord(Counters):
    """A token subject's item: its status, flags and counters (its limits are in its tokens)."""

    __slots__ = ()

    @property
    def status(self) -> str:
        """``active``, ``suspended`` or ``revoked`` (a subject with no item yet is active)."""
        return str(self.item.get("status", "active"))

    @property
    def subject(self) -> str | None:
        """The token subject (``sub``)."""
        value = self.item.get("subject")
        return None if value is None else str(value)

    @property
    def issuer(self) -> str | None:
        """The issuer the subject belongs to."""
        value = self.item.get("issuer")
        return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key to create, as ``KeyAdmin.create`` validated it."""

    key_id: str
    owner: str
    scopes: frozenset[str]
    rate_limit: RateSpec
    budget: int
    output_policy: str
    secret_hash: str
    created_at: int
    expires_at: int
    shards: int = 1

    def items(self) -> list[Item]:
        """The key item and, for a sharded key, its shard items."""
        pk = key_pk(self.key_id)
        item: Item = {
            "pk": pk,
            "kind": "api_key",
            "key_id": self.key_id,
            "owner": self.owner,
            "status": "active",
            "scopes": set(self.scopes),
            "rate_count": self.rate_limit.count,
            "rate_window": self.rate_limit.window_seconds,
            "budget": self.budget,
            "output_policy": self.output_policy,
            "secret_hash": self.secret_hash,
            "config_version": 1,
            "rows_used": 0,
            "requests": 0,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }
        if self.shards <= 1:
            return [item]
        item["shards"] = self.shards
        return [item] + [
            {
                "pk": shard_pk(pk, index),
                "kind": SHARD_KIND,
                "key_id": self.key_id,
                "shard": index,
                "config_version": 1,
                "rows_used": 0,
                "requests": 0,
                "created_at": self.created_at,
            }
            for index in range(self.shards)
        ]
