"""What an admission returns, and the pieces of the counting write every path shares.

``Admission`` is a counted, allowed request with what is left of the principal's limits;
``rate_headers`` are the ``RateLimit-Policy``/``RateLimit`` headers of every authenticated
response; ``request_digest`` is the idempotency digest; ``is_older`` picks the window and bucket
attributes a write may remove.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from security.auth import Principal
from security.store import RATE_ATTR_PREFIX, REQUEST_ATTR_PREFIX, rate_attr

IDEMPOTENCY_BUCKET_SECONDS = 30


def request_digest(principal_id: str, request_id: str) -> str:
    """A short digest of (principal, request id) for the idempotency sets (72 bits, base64url).

    72 bits keep the sets small (item size is write cost) while a false "already counted" needs
    a collision among the few thousand digests of one principal's last minute: ~1e-19.
    """
    digest = hashlib.sha256(f"{principal_id}\x00{request_id}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:9]).decode("ascii")


def is_older(attr: str, *, window: int, bucket: int) -> bool:
    """Whether a window or bucket attribute is strictly older than the live ones.

    Only older ones are removed: an instance whose clock runs a little ahead may already have
    written the next window or bucket, and removing it would lose its counts.
    """
    prefix, threshold = (
        (RATE_ATTR_PREFIX, window)
        if attr.startswith(RATE_ATTR_PREFIX)
        else (REQUEST_ATTR_PREFIX, bucket)
    )
    suffix = attr.removeprefix(prefix)
    return suffix.lstrip("-").isdigit() and int(suffix) < threshold


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


def remaining(
    principal: Principal, item: Mapping[str, Any], now: int
) -> tuple[int, int, int | None]:
    """Rows left in the current window, seconds until it ends, and rows left in the budget."""
    rate = principal.rate_limit
    start = now - now % rate.window_seconds
    used = int(item.get(rate_attr(start), 0))
    budget_left = None
    if principal.budget is not None:
        budget_left = principal.budget - int(item.get("rows_used", 0))
    return rate.count - used, start + rate.window_seconds - now, budget_left
