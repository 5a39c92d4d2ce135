"""The guessing throttle: failed authentications counted per source IP, in DynamoDB.

Only guessing counts (``unknown_key``, ``bad_secret``): a revoked or expired key is not a guess.
Past ``SECURITY_AUTH_FAILURE_LIMIT`` failures in a window, the address is refused with 429
``auth_throttled`` until the window ends; the instance remembers that, so a throttled address
costs no further DynamoDB request.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from security.errors import AuthenticationError, RateLimitedError, SecurityError

if TYPE_CHECKING:
    from security.settings import Settings
    from security.store import PrincipalStore

GUESSING_REASONS = frozenset({"unknown_key", "bad_secret"})
_MAX_REMEMBERED = 4096


def window_start(now: int, window_seconds: int) -> int:
    """The start of the fixed, epoch-aligned window containing ``now``."""
    return now - now % window_seconds


class GuessingThrottle:
    """Counts failed authentications and refuses a source IP past the limit."""

    def __init__(self, *, store: PrincipalStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._lock = threading.Lock()
        self._throttled: dict[str, int] = {}

    def check(self, source_ip: str, now: int) -> None:
        """Refuse a source IP this instance knows to be throttled.

        Raises:
            RateLimitedError: ``auth_throttled``, with the seconds until the window ends.
        """
        with self._lock:
            until = self._throttled.get(source_ip)
            if until is not None and until <= now:
                del self._throttled[source_ip]
                until = None
        if until is not None:
            raise RateLimitedError("auth_throttled", retry_after=until - now)

    def failure(self, reason: str, source_ip: str, now: int) -> SecurityError:
        """Count a failed authentication; the error to raise (429 past the limit)."""
        if reason not in GUESSING_REASONS:
            return AuthenticationError(reason)
        limit = self._settings.auth_failure_limit
        start = window_start(now, limit.window_seconds)
        count = self._store.record_auth_failure(
            source_ip, window_start=start, window_seconds=limit.window_seconds
        )
        if count > limit.count:
            until = start + limit.window_seconds
            with self._lock:
                self._throttled[source_ip] = until
                if len(self._throttled) > _MAX_REMEMBERED:
                    self._throttled.pop(next(iter(self._throttled)))
            return RateLimitedError("auth_throttled", retry_after=until - now)
        return AuthenticationError(reason)
