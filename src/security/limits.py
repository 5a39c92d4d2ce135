"""Admission: authenticate, check scope, and count rows against the rate window and the budget.

``docs/limits.md`` has the algorithm in full, with the data model and the cost. In short:

* **Fixed windows aligned to the epoch**, one ``rw_<k*W>`` attribute per live window; stale
  ones are removed by the write that counts the current one.
* **One conditional ``UpdateItem`` per allowed request** (``PrincipalStore.charge``) checks
  status, secret hash, expiry, config version, room in the window and the budget, and that the
  request id was not already counted, and adds the rows, all or nothing. DynamoDB applies
  conditional updates to one item serially: no number of instances exceeds a limit by a row.
* **Cached configuration, never cached status**: a stale cached config version fails the
  write, whose ALL_OLD refreshes the cache before one retry; revocation binds on the next request.
* **Idempotent under retries**: request-id digests per 30-second bucket; a retried write finds
  its digest in ALL_OLD and the request is counted once.
* **Refusals cost a refusal, not rows**: a request refused after authentication (its body, a
  batch that can never fit, a model it may not use, a squeezing refusal) is counted by one
  conditional write (``PrincipalStore.charge_refusal``) against ``settings.refusal_limit``;
  past it, 429 ``refusal_limit``. A rate-limit refusal (a failed charge) writes nothing.
* **Guessing is slow** (``security.throttle``): failures are counted per source address, key id
  and in total, after the credential was checked, so a valid credential is never throttled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from security.admission import (
    IDEMPOTENCY_BUCKET_SECONDS,
    Admission,
    is_older,
    rate_headers,
    remaining,
    request_digest,
)
from security.auth import Credentials, Principal, principal_from_claims, principal_from_item
from security.counters import RefusalRequest, refusal_attr
from security.errors import (
    AuthenticationError,
    ForbiddenError,
    RateLimitedError,
    SecurityError,
    StoreUnavailableError,
)
from security.keycache import KeyCache
from security.keys import secret_matches
from security.settings import Settings
from security.store import (
    ChargeRequest,
    Item,
    PrincipalStore,
    rate_attr,
    request_attr,
)
from security.throttle import GuessingThrottle
from security.throttle import window_start as window_start  # re-exported (admin, tests)

NEVER_FITS = "never_fits"


class Gatekeeper:
    """Authenticates principals against DynamoDB and admits requests with one conditional write."""

    def __init__(
        self,
        *,
        store: PrincipalStore,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._cache = KeyCache(settings=settings)
        self._throttle = GuessingThrottle(store=store, settings=settings)

    # ------------------------------------------------------------------ public
    def admit(
        self, credentials: Credentials, *, model: str, rows: int, request_id: str, source_ip: str
    ) -> Admission:
        """Authenticate, check scope and count ``rows``: one conditional write on the steady path.

        Raises:
            AuthenticationError: unknown key or wrong secret (``unknown_key``/``bad_secret``),
                ``revoked``, ``suspended`` or ``expired``.
            ForbiddenError: the principal lacks ``predict:<model>``/``predict:*``.
            RateLimitedError: ``rate_limited``, ``budget_exhausted`` or ``auth_throttled``.
            StoreUnavailableError: DynamoDB failed (fail closed: nothing was served uncounted).
        """
        if rows < 1:
            raise ValueError("rows must be positive")
        now = int(self._clock())
        if credentials.kind == "jwt":
            return self._admit_subject(
                credentials,
                model=model,
                rows=rows,
                request_id=request_id,
                source_ip=source_ip,
                now=now,
            )
        return self._admit_key(
            credentials, model=model, rows=rows, request_id=request_id, source_ip=source_ip, now=now
        )

    def authenticate(
        self, credentials: Credentials, *, model: str | None, source_ip: str
    ) -> Principal:
        """One consistent read, nothing charged: for requests refused for their body.

        With ``model=None`` no predict scope is required (the admin API checks ``admin`` itself).

        Raises:
            AuthenticationError: as ``admit``.
            ForbiddenError: the principal lacks the model's scope.
            RateLimitedError: ``auth_throttled`` only.
            StoreUnavailableError: DynamoDB failed.
        """
        principal, _ = self.authenticate_with_headers(credentials, model=model, source_ip=source_ip)
        return principal

    def authenticate_with_headers(
        self, credentials: Credentials, *, model: str | None, source_ip: str
    ) -> tuple[Principal, dict[str, str]]:
        """``authenticate``, plus the ``RateLimit`` headers read from the same item (no write).

        Raises:
            AuthenticationError: as ``admit``.
            ForbiddenError: the principal lacks the model's scope.
            RateLimitedError: ``auth_throttled`` only.
            StoreUnavailableError: DynamoDB failed.
        """
        now = int(self._clock())
        if credentials.kind == "jwt":
            principal, item = self._read_subject(credentials)
        else:
            principal, item = self._read_key(credentials, source_ip=source_ip, now=now)
        headers = self._headers_from_item(principal, item, now)
        if model is not None and not principal.allows(model):
            error = ForbiddenError("forbidden_scope")
            error.headers.update(headers)
            raise error
        return principal, headers

    def refuse(
        self, credentials: Credentials, *, model: str | None, request_id: str, source_ip: str
    ) -> dict[str, str]:
        """Count a request refused after authentication (its body, its size, its model): one
        conditional write that authenticates as the admission does and spends one of the
        principal's ``settings.refusal_limit`` refusals instead of rows. Returns the
        ``RateLimit`` headers for the refusal.

        Raises:
            AuthenticationError: as ``admit``.
            ForbiddenError: the principal lacks the model's scope (the refusal is counted).
            RateLimitedError: ``refusal_limit`` (the allowance is spent) or ``auth_throttled``.
            StoreUnavailableError: DynamoDB failed.
        """
        now = int(self._clock())
        principal, item = self._count_refusal(credentials, request_id, source_ip, now)
        headers = self._headers_from_item(principal, item, now)
        if model is not None and not principal.allows(model):
            error = ForbiddenError("forbidden_scope")
            error.headers.update(headers)
            raise error
        return headers

    def credential_failure(self, error: AuthenticationError, *, source_ip: str) -> SecurityError:
        """What to raise for credentials refused before any lookup (a token's bad signature is
        a guess and counts against the guessing throttle; a malformed key costs nothing).

        Raises:
            StoreUnavailableError: the failure could not be counted (fail closed).
        """
        counted = self._throttle.failure(error.reason, source_ip, int(self._clock()))
        return error if isinstance(counted, AuthenticationError) else counted

    def _count_refusal(
        self, credentials: Credentials, request_id: str, source_ip: str, now: int
    ) -> tuple[Principal, Item]:
        limit = self._settings.refusal_limit
        start = window_start(now, limit.window_seconds)
        bucket = now // IDEMPOTENCY_BUCKET_SECONDS
        claims = credentials.claims
        request = RefusalRequest(
            pk=credentials.principal_id,
            kind=credentials.kind,
            now=now,
            refusal_attr=refusal_attr(start),
            previous_refusal_attr=refusal_attr(start - limit.window_seconds),
            refusal_limit=limit.count,
            request_attr=request_attr(bucket),
            previous_request_attr=request_attr(bucket - 1),
            # Its own digest: a request refused after it was admitted (a squeezing refusal)
            # is counted as a refusal too, not taken for a retry of its admission.
            request_digest=request_digest(credentials.principal_id, request_id + "#refused"),
            secret_hash=credentials.secret_hash if credentials.kind == "api_key" else None,
            subject=claims.subject if claims else None,
            issuer=claims.issuer if claims else None,
        )
        outcome = self._store.charge_refusal(request)
        item = outcome.item
        if claims is not None:
            principal = principal_from_claims(claims)
            status = (item or {}).get("status", "active")
            if not outcome.ok and status != "active":
                raise AuthenticationError(
                    status if status in ("revoked", "suspended") else "inactive"
                )
            if outcome.ok and item is not None:
                self._cache.note_attrs(item)
        elif item is None:
            raise self._throttle.failure("unknown_key", source_ip, now, key_id=credentials.key_id)
        elif outcome.ok:
            principal = principal_from_item(item, settings=self._settings)
            self._cache.remember(item)
        else:
            principal = self._verify_key_item(credentials, item, source_ip=source_ip, now=now)
        item = item or {}
        if not outcome.ok and not self._already_counted(item, request):
            error = RateLimitedError(
                "refusal_limit", retry_after=start + limit.window_seconds - now
            )
            error.headers.update(self._headers_from_item(principal, item, now))
            raise error
        return principal, item

    # ---------------------------------------------------------------- API keys
    def _admit_key(
        self,
        credentials: Credentials,
        *,
        model: str,
        rows: int,
        request_id: str,
        source_ip: str,
        now: int,
    ) -> Admission:
        assert credentials.key_id is not None and credentials.secret_hash is not None
        cached = self._cache.match(credentials, now)
        if cached is None:
            principal, item = self._read_key(credentials, source_ip=source_ip, now=now)
        else:
            principal, item = cached.principal, None
        for _attempt in range(2):
            if not principal.allows(model):
                if item is None:  # confirm a cached refusal against the table before refusing
                    principal, item = self._read_key(credentials, source_ip=source_ip, now=now)
                    if principal.allows(model):
                        continue
                self.refuse(credentials, model=model, request_id=request_id, source_ip=source_ip)
                raise ForbiddenError("forbidden_scope")  # the scope was granted meanwhile
            request = self._charge_request(
                credentials, principal, rows=rows, request_id=request_id, now=now
            )
            if request is None:  # the rows can never fit: refuse (after a fresh authentication)
                if item is None:
                    principal, item = self._read_key(credentials, source_ip=source_ip, now=now)
                    continue  # judge again on the fresh configuration
                principal, item = self._count_refusal(credentials, request_id, source_ip, now)
                raise self._over_limit(principal, item, rows=rows, now=now, never_fits=True)
            outcome = self._store.charge(request)
            if outcome.ok and outcome.item is not None:
                self._cache.remember(outcome.item)
                return self._admission(principal, outcome.item, rows=rows, now=now)
            old = outcome.item
            if old is None:
                self._cache.forget(credentials.principal_id)
                raise self._throttle.failure(
                    "unknown_key", source_ip, now, key_id=credentials.key_id
                )
            if self._already_counted(old, request):
                return self._admission(principal, old, rows=rows, now=now)
            self._cache.remember(old)  # ALL_OLD is the current item: refresh what we cache
            fresh = self._verify_key_item(credentials, old, source_ip=source_ip, now=now)
            if fresh.config_version != principal.config_version:
                # Our cached configuration was stale: ALL_OLD is the current item; retry once.
                principal, item = fresh, old
                continue
            raise self._over_limit(principal, old, rows=rows, now=now)
        raise StoreUnavailableError("config_contention", detail="config changed twice")

    def _read_key(
        self, credentials: Credentials, *, source_ip: str, now: int
    ) -> tuple[Principal, Item]:
        item = self._store.get(credentials.principal_id)
        if item is None:
            raise self._throttle.failure("unknown_key", source_ip, now, key_id=credentials.key_id)
        principal = self._verify_key_item(credentials, item, source_ip=source_ip, now=now)
        self._cache.remember(item)
        return principal, item

    def _verify_key_item(
        self, credentials: Credentials, item: Item, *, source_ip: str, now: int
    ) -> Principal:
        presented = credentials.secret_hash or ""
        current_ok = secret_matches(item.get("secret_hash"), presented)
        previous_ok = int(item.get("prev_secret_until", 0)) > now and secret_matches(
            item.get("prev_secret_hash"), presented
        )
        if not (current_ok or previous_ok):
            # The cached entry stays: a wrong guess must not make the owner's next request dearer.
            raise self._throttle.failure("bad_secret", source_ip, now, key_id=credentials.key_id)
        status = item.get("status")
        if status != "active":
            self._cache.forget(credentials.principal_id)
            reason = status if status in ("revoked", "suspended") else "inactive"
            raise AuthenticationError(reason)
        expires = item.get("expires_at")
        if expires is not None and int(expires) <= now:
            self._cache.forget(credentials.principal_id)
            raise AuthenticationError("expired")
        return principal_from_item(item, settings=self._settings)

    # ------------------------------------------------------------ token subjects
    def _admit_subject(
        self,
        credentials: Credentials,
        *,
        model: str,
        rows: int,
        request_id: str,
        source_ip: str,
        now: int,
    ) -> Admission:
        assert credentials.claims is not None
        principal = principal_from_claims(credentials.claims)
        if not principal.allows(model):
            self.refuse(credentials, model=model, request_id=request_id, source_ip=source_ip)
        request = self._charge_request(
            credentials, principal, rows=rows, request_id=request_id, now=now
        )
        if request is None:
            _, item = self._count_refusal(credentials, request_id, source_ip, now)
            raise self._over_limit(principal, item, rows=rows, now=now, never_fits=True)
        outcome = self._store.charge(request)
        if outcome.ok and outcome.item is not None:
            self._cache.note_attrs(outcome.item)
            return self._admission(principal, outcome.item, rows=rows, now=now)
        old = outcome.item or {}
        if self._already_counted(old, request):
            return self._admission(principal, old, rows=rows, now=now)
        status = old.get("status", "active")
        if status != "active":
            raise AuthenticationError(status if status in ("revoked", "suspended") else "inactive")
        raise self._over_limit(principal, old, rows=rows, now=now)

    def _read_subject(self, credentials: Credentials) -> tuple[Principal, Item]:
        assert credentials.claims is not None
        principal = principal_from_claims(credentials.claims)
        item = self._store.get(credentials.principal_id) or {}
        status = item.get("status", "active")
        if status != "active":
            raise AuthenticationError(status if status in ("revoked", "suspended") else "inactive")
        return principal, item

    # ------------------------------------------------------------------ shared
    def _charge_request(
        self,
        credentials: Credentials,
        principal: Principal,
        *,
        rows: int,
        request_id: str,
        now: int,
    ) -> ChargeRequest | None:
        rate = principal.rate_limit
        if rows > rate.count or (principal.budget is not None and rows > principal.budget):
            return None
        start = window_start(now, rate.window_seconds)
        bucket = now // IDEMPOTENCY_BUCKET_SECONDS
        current_w, current_rq, previous_rq = (
            rate_attr(start),
            request_attr(bucket),
            request_attr(bucket - 1),
        )
        seen = self._cache.seen(principal.principal_id)
        stale = tuple(
            a
            for a in (rate_attr(start - rate.window_seconds), request_attr(bucket - 2), *seen)
            if is_older(a, window=start, bucket=bucket - 1)
        )
        claims = credentials.claims
        return ChargeRequest(
            pk=principal.principal_id,
            kind=principal.kind,
            rows=rows,
            now=now,
            rate_attr=current_w,
            rate_left=rate.count - rows,
            budget_left=None if principal.budget is None else principal.budget - rows,
            request_attr=current_rq,
            previous_request_attr=previous_rq,
            request_digest=request_digest(principal.principal_id, request_id),
            stale_attrs=stale,
            secret_hash=credentials.secret_hash if credentials.kind == "api_key" else None,
            config_version=principal.config_version if credentials.kind == "api_key" else None,
            subject=claims.subject if claims else None,
            issuer=claims.issuer if claims else None,
        )

    @staticmethod
    def _already_counted(item: Mapping[str, Any], request: ChargeRequest | RefusalRequest) -> bool:
        digest = request.request_digest
        return digest in item.get(request.request_attr, set()) or digest in item.get(
            request.previous_request_attr, set()
        )

    def _admission(
        self, principal: Principal, item: Mapping[str, Any], *, rows: int, now: int
    ) -> Admission:
        rate_left, reset, budget_left = remaining(principal, item, now)
        return Admission(
            principal=principal,
            rows=rows,
            rate_remaining=max(0, rate_left),
            reset_seconds=reset,
            budget_remaining=None if budget_left is None else max(0, budget_left),
        )

    def _headers_from_item(
        self, principal: Principal, item: Mapping[str, Any], now: int
    ) -> dict[str, str]:
        rate_left, reset, budget_left = remaining(principal, item, now)
        return rate_headers(principal, rate_left, reset, budget_left)

    def _over_limit(
        self,
        principal: Principal,
        item: Mapping[str, Any],
        *,
        rows: int,
        now: int,
        never_fits: bool = False,
    ) -> SecurityError:
        rate_left, reset, budget_left = remaining(principal, item, now)
        if budget_left is not None and rows > budget_left:
            # A budget never refills: no Retry-After would be true.
            error: SecurityError = RateLimitedError("budget_exhausted", retry_after=None)
        elif rows > rate_left:
            error = RateLimitedError("rate_limited", retry_after=reset)
        else:
            # The condition failed for no reason we can see in ALL_OLD: fail closed.
            error = StoreUnavailableError("unexplained_condition_failure")
        error.headers.update(rate_headers(principal, rate_left, reset, budget_left))
        if never_fits:
            error.detail = NEVER_FITS  # a counted refusal: the monitor hears of it
        return error
