"""Verifying API keys against their records, with this environment's cache (a part of
``limits.Gatekeeper``: verification and cache; the guessing throttle is ``security.throttle``,
the admission loop ``security.limits``).

A key is verified by its record: the presented secret's hash against the current hash (or the
previous one while its rotation grace lasts), then its status and expiry. A wrong secret or an
unknown key is a guess and goes to the guessing throttle; a revoked, suspended or expired key is
refused as such and leaves the cache. A verified record is cached (``security.keycache``), so a
warm environment admits a known key with one conditional write and no read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from security.auth import Credentials, Principal, principal_from_key
from security.errors import AuthenticationError, SecurityError
from security.keycache import KeyCache
from security.keys import secret_matches

if TYPE_CHECKING:
    from security.charging import Sender
    from security.records import KeyRecord
    from security.settings import Settings
    from security.store import PrincipalStore
    from security.throttle import GuessingThrottle


class KeyVerifier:
    """Reads, verifies and caches API keys' records."""

    def __init__(
        self,
        *,
        store: PrincipalStore,
        settings: Settings,
        throttle: GuessingThrottle,
        sender: Sender,
    ) -> None:
        self._store = store
        self._settings = settings
        self._throttle = throttle
        self._sender = sender
        self._cache = KeyCache(settings=settings)

    def cached(self, credentials: Credentials, now: int) -> Principal | None:
        """The cached principal if the presented secret matches its cached record."""
        entry = self._cache.match(credentials, now)
        return None if entry is None else entry.principal

    def read(
        self, credentials: Credentials, *, source_ip: str, now: int, first_sight: bool = False
    ) -> tuple[Principal, KeyRecord]:
        """One consistent read of the key, verified and cached.

        ``first_sight`` (a key this environment has not cached, about to be charged): read it
        eventually consistent first, at half the read units. That is safe because the counting
        write re-checks everything the read gave (secret hash, status, expiry and the
        configuration version) in its condition, and a failed condition returns the current item.
        Only a record that would admit the key is used: anything else (no item yet, another
        secret, not active, expired: perhaps only not yet replicated) is read again, strongly
        consistent, before anything is refused or counted as a guess.

        Raises:
            AuthenticationError: as ``verify``.
            RateLimitedError: ``auth_throttled`` (an unknown key or a wrong secret past a limit).
            StoreUnavailableError: DynamoDB failed.
        """
        if first_sight:
            record = self._store.read_key(credentials.principal_id, consistent=False)
            if record is not None and self._admits(credentials, record, now):
                self._sender.saw(record)
                self._cache.remember(record)
                return principal_from_key(record, settings=self._settings), record
        record = self._store.read_key(credentials.principal_id)
        if record is None:
            raise self.unknown(credentials, source_ip=source_ip, now=now)
        self._sender.saw(record)
        principal = self.verify(credentials, record, source_ip=source_ip, now=now)
        self._cache.remember(record)
        return principal, record

    @staticmethod
    def _admits(credentials: Credentials, record: KeyRecord, now: int) -> bool:
        """Whether ``verify`` would admit these credentials on ``record`` (no side effects)."""
        presented = credentials.secret_hash or ""
        matches = secret_matches(record.secret_hash, presented) or (
            record.previous_secret_until > now
            and secret_matches(record.previous_secret_hash, presented)
        )
        expires = record.expires_at
        return matches and record.active and (expires is None or expires > now)

    def verify(
        self, credentials: Credentials, record: KeyRecord, *, source_ip: str, now: int
    ) -> Principal:
        """The key's principal, if the credentials match its record and it may be used.

        Raises:
            AuthenticationError: ``bad_secret``, ``revoked``, ``suspended``, ``inactive`` or
                ``expired``.
            RateLimitedError: ``auth_throttled`` (a wrong secret past a limit).
            StoreUnavailableError: the failure could not be counted.
        """
        presented = credentials.secret_hash or ""
        current_ok = secret_matches(record.secret_hash, presented)
        previous_ok = record.previous_secret_until > now and secret_matches(
            record.previous_secret_hash, presented
        )
        if not (current_ok or previous_ok):
            # The cached entry stays: a wrong guess must not make the owner's next request dearer.
            raise self._throttle.failure("bad_secret", source_ip, now, key_id=credentials.key_id)
        if not record.active:
            self._cache.forget(credentials.principal_id)
            raise AuthenticationError(record.refusal_reason)
        expires = record.expires_at
        if expires is not None and expires <= now:
            self._cache.forget(credentials.principal_id)
            raise AuthenticationError("expired")
        return principal_from_key(record, settings=self._settings)

    def unknown(self, credentials: Credentials, *, source_ip: str, now: int) -> SecurityError:
        """What to raise for a key with no item (a guess; it leaves the cache).

        Raises:
            StoreUnavailableError: the failure could not be counted.
        """
        self._cache.forget(credentials.principal_id)
        return self._throttle.failure("unknown_key", source_ip, now, key_id=credentials.key_id)

    def remember(self, record: KeyRecord) -> None:
        """Cache a record a write returned whole (ALL_NEW, ALL_OLD)."""
        self._cache.remember(record)

    def admitted(self, record: KeyRecord) -> Principal:
        """The principal of a key whose own counting write just authenticated it (cached)."""
        self._cache.remember(record)
        return principal_from_key(record, settings=self._settings)

    def forget(self, principal_id: str) -> None:
        """Drop a key from the cache (expired, gone)."""
        self._cache.forget(principal_id)
