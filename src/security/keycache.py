"""The per-instance cache of verified API keys.

A warm instance admits a known key with one conditional write and no read: the cached entry
holds the key's principal and secret hashes; the write's condition re-checks the secret hash,
status and config version in DynamoDB, so a stale entry can never admit a request on its own.
Bounded (least recently used first out) and thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from security.auth import Credentials, Principal, principal_from_key
from security.keys import secret_matches

if TYPE_CHECKING:
    from security.records import KeyRecord
    from security.settings import Settings

_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class _Cached:
    principal: Principal
    secret_hash: str
    prev_secret_hash: str | None
    prev_secret_until: int


class KeyCache:
    """Verified keys by principal id (what each item's lanes and windows look like is
    ``security.itemviews``)."""

    def __init__(self, *, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._keys: OrderedDict[str, _Cached] = OrderedDict()

    def match(self, credentials: Credentials, now: int) -> _Cached | None:
        """The cached entry if the presented secret matches it (current, or previous in grace)."""
        with self._lock:
            cached = self._keys.get(credentials.principal_id)
            if cached is not None:
                self._keys.move_to_end(credentials.principal_id)  # a hot key stays cached
        if cached is None or credentials.secret_hash is None:
            return None
        if secret_matches(cached.secret_hash, credentials.secret_hash):
            return cached
        if cached.prev_secret_until > now and secret_matches(
            cached.prev_secret_hash, credentials.secret_hash
        ):
            return cached
        # A wrong secret takes the same path as an unknown key (a fresh read).
        return None

    def remember(self, record: KeyRecord) -> None:
        """Cache a key's record (kept while its config version is unchanged)."""
        pk = record.principal_id
        cached = _Cached(
            principal=principal_from_key(record, settings=self._settings),
            secret_hash=record.secret_hash or "",
            prev_secret_hash=record.previous_secret_hash,
            prev_secret_until=record.previous_secret_until,
        )
        with self._lock:
            previous = self._keys.get(pk)
            if (
                previous is None
                or previous.principal.config_version != cached.principal.config_version
            ):
                self._keys[pk] = cached
            self._keys.move_to_end(pk)
            while len(self._keys) > _CACHE_SIZE:
                self._keys.popitem(last=False)

    def forget(self, pk: str) -> None:
        """Drop a key from the cache (revoked, suspended, expired, gone)."""
        with self._lock:
            self._keys.pop(pk, None)
