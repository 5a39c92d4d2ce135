"""Counting requests refused after authentication (a part of ``limits.Gatekeeper``).

A request refused for its body, its size, a batch that can never fit, a model it may not use or
a squeezing refusal is counted by one conditional write on the principal's item
(``PrincipalStore.charge_refusal``): it authenticates as the admission's write does (secret,
status, expiry) and spends one of ``settings.refusal_limit`` refusals (``rf_<window>``), never
rows; past the allowance, 429 ``refusal_limit``. Idempotent by the lane's stamp, like every
counting write; a sharded key's refusals are counted on its key item.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from security.auth import Credentials, Principal, principal_from_claims
from security.counters import RefusalRequest
from security.errors import AuthenticationError, ForbiddenError, RateLimitedError
from security.throttle import window_start

if TYPE_CHECKING:
    from security.charging import Sender
    from security.records import Counters
    from security.settings import Settings
    from security.store import PrincipalStore
    from security.verification import KeyVerifier
    from security.writers import Lane, Stamp


class RefusalCounting:
    """``Gatekeeper``'s refusal counting."""

    _settings: Settings
    _store: PrincipalStore
    _sender: Sender
    _keys: KeyVerifier

    if TYPE_CHECKING:

        def _headers(
            self, lane: Lane, principal: Principal, counters: Counters, now: int
        ) -> dict[str, str]:
            """The ``RateLimit`` headers (``Gatekeeper``)."""

    def _refuse(
        self, lane: Lane, credentials: Credentials, *, model: str | None, source_ip: str, now: int
    ) -> dict[str, str]:
        principal, counters = self._count_refusal(lane, credentials, source_ip, now)
        headers = self._headers(lane, principal, counters, now)
        if model is not None and not principal.allows(model):
            error = ForbiddenError("forbidden_scope")
            error.headers.update(headers)
            raise error
        return headers

    def _count_refusal(
        self, lane: Lane, credentials: Credentials, source_ip: str, now: int
    ) -> tuple[Principal, Counters]:
        limit = self._settings.refusal_limit
        start = window_start(now, limit.window_seconds)
        claims = credentials.claims

        def build(stamp: Stamp, _: tuple[str, ...]) -> RefusalRequest:
            return RefusalRequest(
                pk=credentials.principal_id,
                kind=credentials.kind,
                now=now,
                window_start=start,
                window_seconds=limit.window_seconds,
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
        if claims is not None:
            principal = principal_from_claims(claims)
            if not sent.counted and not sent.subject.active:
                raise AuthenticationError(sent.subject.refusal_reason)
        elif not sent.found:
            raise self._keys.unknown(credentials, source_ip=source_ip, now=now)
        elif sent.counted:
            principal = self._keys.admitted(sent.key)
        else:
            principal = self._keys.verify(credentials, sent.key, source_ip=source_ip, now=now)
        if not sent.counted:
            error = RateLimitedError(
                "refusal_limit", retry_after=start + limit.window_seconds - now
            )
            error.headers.update(self._headers(lane, principal, sent.counters, now))
            raise error
        return principal, sent.counters
