"""Counting requests refused after authentication (a part of ``limits.Gatekeeper``).

A request refused for its body, its size, a batch that can never fit, a model it may not use or
a squeezing refusal is counted by one conditional write on the principal's item
(``PrincipalStore.charge_refusal``): it authenticates as the admission's write does (secret,
status, expiry) and spends one of ``settings.refusal_limit`` refusals (``rf_<window>``), never
rows; past the allowance, 429 ``refusal_limit``. Idempotent by the lane's stamp, like every
counting write; a sharded key's refusals are counted on its key item.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from security.auth import Credentials, Principal, principal_from_claims, principal_from_item
from security.counters import RefusalRequest, refusal_attr
from security.errors import AuthenticationError, ForbiddenError, RateLimitedError
from security.throttle import window_start

if TYPE_CHECKING:
    from security.charging import Sender
    from security.keycache import KeyCache
    from security.settings import Settings
    from security.store import Item, PrincipalStore
    from security.throttle import GuessingThrottle
    from security.writers import Lane, Stamp


class RefusalCounting:
    """``Gatekeeper``'s refusal counting."""

    _settings: Settings
    _store: PrincipalStore
    _sender: Sender
    _cache: KeyCache
    _throttle: GuessingThrottle

    if TYPE_CHECKING:

        def _verify_key_item(
            self, credentials: Credentials, item: Item, *, source_ip: str, now: int
        ) -> Principal:
            """The key item's principal, if the credentials match it (``Gatekeeper``)."""

        def _headers(
            self, lane: Lane, principal: Principal, item: Mapping[str, Any], now: int
        ) -> dict[str, str]:
            """The ``RateLimit`` headers (``Gatekeeper``)."""

    def _refuse(
        self, lane: Lane, credentials: Credentials, *, model: str | None, source_ip: str, now: int
    ) -> dict[str, str]:
        principal, item = self._count_refusal(lane, credentials, source_ip, now)
        headers = self._headers(lane, principal, item, now)
        if model is not None and not principal.allows(model):
            error = ForbiddenError("forbidden_scope")
            error.headers.update(headers)
            raise error
        return headers

    def _count_refusal(
        self, lane: Lane, credentials: Credentials, source_ip: str, now: int
    ) -> tuple[Principal, Item]:
        limit = self._settings.refusal_limit
        start = window_start(now, limit.window_seconds)
        claims = credentials.claims

        def build(stamp: Stamp, _: tuple[str, ...]) -> RefusalRequest:
            return RefusalRequest(
                pk=credentials.principal_id,
                kind=credentials.kind,
                now=now,
                refusal_attr=refusal_attr(start),
                previous_refusal_attr=refusal_attr(start - limit.window_seconds),
                refusal_limit=limit.count,
                stamp=stamp,
                secret_hash=credentials.secret_hash if credentials.kind == "api_key" else None,
                subject=claims.subject if claims else None,
                issuer=claims.issuer if claims else None,
            )

        # ALL_NEW: a refusal (not the steady path) may be the first this instance sees of the key.
        sent = self._sender.send(
            lane, credentials.principal_id, build=build, call=self._store.charge_refusal, full=True
        )
        item = sent.item
        if claims is not None:
            principal = principal_from_claims(claims)
            status = (item or {}).get("status", "active")
            if not sent.counted and status != "active":
                raise AuthenticationError(
                    status if status in ("revoked", "suspended") else "inactive"
                )
        elif item is None:
            raise self._throttle.failure("unknown_key", source_ip, now, key_id=credentials.key_id)
        elif sent.counted:
            principal = principal_from_item(item, settings=self._settings)
            self._cache.remember(item)
        else:
            principal = self._verify_key_item(credentials, item, source_ip=source_ip, now=now)
        item = item or {}
        if not sent.counted:
            error = RateLimitedError(
                "refusal_limit", retry_after=start + limit.window_seconds - now
            )
            error.headers.update(self._headers(lane, principal, item, now))
            raise error
        return principal, item
