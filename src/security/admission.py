"""What an admission returns, and the pieces every admission path shares.

``Admission`` is a counted, allowed request with what is left of the principal's limits;
``rate_headers`` are the ``RateLimit-Policy``/``RateLimit`` headers of every authenticated
response; ``remaining`` reads them off an item; ``RecentAdmissions`` remembers this environment's
recent admissions by request id.
"""

from __future__ import annotations

import hmac
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from security.auth import Credentials, Principal

if TYPE_CHECKING:
    from security.records import Counters

#: How long, and how many, admissions an environment remembers by request id.
RECENT_SECONDS = 60
RECENT_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Admission:
    """A counted, allowed request and what is left of the principal's limits."""

    principal: Principal
    rows: int
    rate_remaining: int
    reset_seconds: int
    budget_remaining: int | None

    def headers(self) -> dict[str, str]:
        """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers)."""
        return rate_headers(
            self.principal, self.rate_remaining, self.reset_seconds, self.budget_remaining
        )


def rate_headers(
    principal: Principal, rate_remaining: int, reset_seconds: int, budget_remaining: int | None
) -> dict[str, str]:
    rate = principal.rate_limit
    policy = f'"rows";q={rate.count};w={rate.window_seconds}'
    state = f'"rows";r={max(0, rate_remaining)};t={max(0, reset_seconds)}'
    if principal.budget is not None and budget_remaining is not None:
        policy += f', "budget";q={principal.budget}'
        state += f', "budget";r={max(0, budget_remaining)}'
    return {"RateLimit-Policy": policy, "RateLimit": state}


def remaining(principal: Principal, counters: Counters, now: int) -> tuple[int, int, int | None]:
    """Rows left in the current window, seconds until it ends, and rows left in the budget."""
    rate = principal.rate_limit
    start = now - now % rate.window_seconds
    used = counters.window_rows(start) or 0
    budget_left = None
    if principal.budget is not None:
        budget_left = principal.budget - (counters.rows_used or 0)
    return rate.count - used, start + rate.window_seconds - now, budget_left


class RecentAdmissions:
    """This environment's admissions of the last ``RECENT_SECONDS``, by (principal, request id).

    The counting write is idempotent by its lane's sequence, which covers the only repeat that
    reaches DynamoDB (the SDK resending a write). A request id admitted again by the same
    environment (the same event delivered twice) is answered from here, counted once; the
    credentials must be the same (their fingerprint).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, str], tuple[str, int, Admission]] = OrderedDict()

    def get(self, credentials: Credentials, request_id: str, now: int) -> Admission | None:
        """The admission of this request id on these credentials, if recent."""
        with self._lock:
            entry = self._seen.get((credentials.principal_id, request_id))
        if entry is None:
            return None
        fingerprint, at, admission = entry
        if now - at > RECENT_SECONDS:
            return None
        if not hmac.compare_digest(fingerprint, credentials.fingerprint):
            return None
        return admission

    def put(
        self, credentials: Credentials, request_id: str, admission: Admission, now: int
    ) -> None:
        """Remember an admission."""
        with self._lock:
            key = (credentials.principal_id, request_id)
            self._seen[key] = (credentials.fingerprint, now, admission)
            self._seen.move_to_end(key)
            while len(self._seen) > RECENT_SIZE:
                self._seen.popitem(last=False)


def estimate(total: int, share: int, left: int) -> int:
    """What is left of ``total`` when one shard of ``share`` has ``left``: scaled by the shard
    count (exact when traffic is spread evenly), at least what that shard has, at most
    ``total``."""
    if share <= 0:
        return 0
    left = max(0, left)
    return max(min(left, total), min(total, left * total // share))
