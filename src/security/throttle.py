"""The guessing throttle: failed authentications counted per source address, per key id and in
total, in DynamoDB.

Only guessing counts (``unknown_key``, ``bad_secret``, ``bad_signature``): a revoked or expired
credential is not a guess. The throttle judges failures only: a credential is always checked
first, so a valid one is never refused because others failed from the same address (every
customer behind one NAT would share the lock). Past a scope's limit in its window (source
address ``SECURITY_AUTH_FAILURE_LIMIT``, key id ``SECURITY_AUTH_FAILURE_KEY_LIMIT``, all
failures ``SECURITY_AUTH_FAILURE_GLOBAL_LIMIT``) a failed attempt is answered 429
``auth_throttled`` instead of 401, so a guess spread over many addresses is throttled through
its key id or the total. The instance remembers a throttled scope until its window ends and
then counts no further failures under it: a throttled guess costs the one read that checked it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from security.errors import AuthenticationError, RateLimitedError, SecurityError

if TYPE_CHECKING:
    from security.settings import RateSpec, Settings
    from security.store import PrincipalStore

GUESSING_REASONS = frozenset({"unknown_key", "bad_secret", "bad_signature"})
_MAX_REMEMBERED = 4096
GLOBAL_SCOPE = "all"


def window_start(now: int, window_seconds: int) -> int:
    """The start of the fixed, epoch-aligned window containing ``now``."""
    return now - now % window_seconds


class GuessingThrottle:
    """Counts failed authentications; answers 429 past a scope's limit."""

    def __init__(self, *, store: PrincipalStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._lock = threading.Lock()
        self._throttled: dict[str, int] = {}

    def _scopes(self, source_ip: str, key_id: str | None) -> list[tuple[str, RateSpec]]:
        scopes = [(f"ip#{source_ip}", self._settings.auth_failure_limit)]
        if key_id:
            scopes.append((f"key#{key_id}", self._settings.auth_failure_key_limit))
        scopes.append((GLOBAL_SCOPE, self._settings.auth_failure_global_limit))
        return scopes

    def _remembered(self, scope: str, now: int) -> int | None:
        with self._lock:
            until = self._throttled.get(scope)
            if until is not None and until <= now:
                del self._throttled[scope]
                return None
            return until

    def _remember(self, scope: str, until: int) -> None:
        with self._lock:
            self._throttled[scope] = until
            if len(self._throttled) > _MAX_REMEMBERED:
                self._throttled.pop(next(iter(self._throttled)))

    def failure(
        self, reason: str, source_ip: str, now: int, *, key_id: str | None = None
    ) -> SecurityError:
        """Count a failed authentication; the error to raise (429 past any scope's limit).

        Raises:
            StoreUnavailableError: a counter could not be written (fail closed).
        """
        if reason not in GUESSING_REASONS:
            return AuthenticationError(reason)
        scopes = self._scopes(source_ip, key_id)
        remembered = [until for scope, _ in scopes if (until := self._remembered(scope, now))]
        if remembered:
            return RateLimitedError("auth_throttled", retry_after=max(remembered) - now)
        throttled_until = 0
        for scope, limit in scopes:
            start = window_start(now, limit.window_seconds)
            count = self._store.record_auth_failure(
                scope, window_start=start, window_seconds=limit.window_seconds
            )
            if count > limit.count:
                until = start + limit.window_seconds
                self._remember(scope, until)
                throttled_until = max(throttled_until, until)
        if throttled_until:
            return RateLimitedError("auth_throttled", retry_after=throttled_until - now)
        return AuthenticationError(reason)
