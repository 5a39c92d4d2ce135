"""Admission: authenticate, check scope, and count rows against the rate window and the budget.

The algorithm (``docs/limits.md`` has it in full, with the data model and the cost):

* **Fixed windows aligned to the epoch.** A rate ``N/W`` allows at most ``N`` rows in each window
  ``[k*W, (k+1)*W)``. Each window has its own attribute ``rw_<k*W>`` on the principal's item;
  stale window attributes are removed in the same write that counts the current one.
* **One conditional ``UpdateItem`` per allowed request** (``PrincipalStore.charge``) checks the
  status, the secret hash (current, or previous within its rotation grace), the expiry, the
  config version, room in the window and in the budget, and that the request id was not already
  counted; and, all or nothing, adds the rows to the window and to ``rows_used``. DynamoDB
  applies conditional updates to one item serially, so any number of Lambda instances together
  never exceed a limit by one row.
* **Cached configuration, never cached status.** An instance caches a key's configuration
  (scopes, limits, output policy) with its ``config_version``; every admin change bumps the
  version and the write's condition includes it, so a stale cache fails the write, whose ALL_OLD
  refreshes the cache before one retry. Status, secret and expiry are in every condition, so a
  revocation or suspension takes effect on the very next request.
* **Idempotent under retries.** A digest of (principal, request id) is ADDed to a string set per
  30-second bucket, under the condition that neither the current nor the previous bucket holds it.
  An SDK retry of a write that already landed fails that condition; ALL_OLD then shows the digest
  and the request is treated as counted, once.
* **Refusals are never charged**: a failed condition writes nothing.
* **Guessing is slow.** Unknown keys and wrong secrets take the same path (one consistent read,
  then one failure-counter write) and raise the same error class; past
  ``settings.auth_failure_limit`` failures from one source IP in a window, that IP is refused with
  429 ``auth_throttled`` (the instance remembers it until the window ends, without I/O).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from security.auth import Credentials, Principal, principal_from_claims, principal_from_item
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
    RATE_ATTR_PREFIX,
    REQUEST_ATTR_PREFIX,
    ChargeRequest,
    Item,
    PrincipalStore,
    rate_attr,
    request_attr,
)
from security.throttle import GuessingThrottle
from security.throttle import window_start as window_start  # re-exported (admin, tests)

IDEMPOTENCY_BUCKET_SECONDS = 30
_CACHE_SIZE = 4096


def request_digest(principal_id: str, request_id: str) -> str:
    """A short digest of (principal, request id) for the idempotency sets (72 bits, base64url).

    72 bits keep the sets small (item size is write cost) while a false "already counted" needs
    a collision among the few thousand digests of one principal's last minute: ~1e-19.
    """
    digest = hashlib.sha256(f"{principal_id}\x00{request_id}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:9]).decode("ascii")


def _is_older(attr: str, *, window: int, bucket: int) -> bool:
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
        return _rate_headers(
            self.principal, self.rate_remaining, self.reset_seconds, self.budget_remaining
        )


def _rate_headers(
    principal: Principal, rate_remaining: int, reset_seconds: int, budget_remaining: int | None
) -> dict[str, str]:
    rate = principal.rate_limit
    policy = f'"rows";q={rate.count};w={rate.window_seconds}'
    state = f'"rows";r={max(0, rate_remaining)};t={max(0, reset_seconds)}'
    if principal.budget is not None and budget_remaining is not None:
        policy += f', "budget";q={principal.budget}'
        state += f', "budget";r={max(0, budget_remaining)}'
    return {"RateLimit-Policy": policy, "RateLimit": state}


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
        self._throttle.check(source_ip, now)
        if credentials.kind == "jwt":
            return self._admit_subject(
                credentials, model=model, rows=rows, request_id=request_id, now=now
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
        self._throttle.check(source_ip, now)
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
                error = ForbiddenError("forbidden_scope")
                error.headers.update(self._headers_from_item(principal, item, now))
                raise error
            request = self._charge_request(
                credentials, principal, rows=rows, request_id=request_id, now=now
            )
            if request is None:  # the rows can never fit: refuse (after a fresh authentication)
                if item is None:
                    principal, item = self._read_key(credentials, source_ip=source_ip, now=now)
                    continue  # judge again on the fresh configuration
                raise self._over_limit(principal, item, rows=rows, now=now)
            outcome = self._store.charge(request)
            if outcome.ok and outcome.item is not None:
                self._cache.remember(outcome.item)
                return self._admission(principal, outcome.item, rows=rows, now=now)
            old = outcome.item
            if old is None:
                self._cache.forget(credentials.principal_id)
                raise self._throttle.failure("unknown_key", source_ip, now)
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
            raise self._throttle.failure("unknown_key", source_ip, now)
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
            raise self._throttle.failure("bad_secret", source_ip, now)
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
        self, credentials: Credentials, *, model: str, rows: int, request_id: str, now: int
    ) -> Admission:
        assert credentials.claims is not None
        principal = principal_from_claims(credentials.claims)
        if not principal.allows(model):
            _, item = self._read_subject(credentials)
            error = ForbiddenError("forbidden_scope")
            error.headers.update(self._headers_from_item(principal, item, now))
            raise error
        request = self._charge_request(
            credentials, principal, rows=rows, request_id=request_id, now=now
        )
        if request is None:
            _, item = self._read_subject(credentials)
            raise self._over_limit(principal, item, rows=rows, now=now)
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
            if _is_older(a, window=start, bucket=bucket - 1)
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
    def _already_counted(item: Mapping[str, Any], request: ChargeRequest) -> bool:
        digest = request.request_digest
        return digest in item.get(request.request_attr, set()) or digest in item.get(
            request.previous_request_attr, set()
        )

    def _remaining(
        self, principal: Principal, item: Mapping[str, Any], now: int
    ) -> tuple[int, int, int | None]:
        rate = principal.rate_limit
        start = window_start(now, rate.window_seconds)
        used = int(item.get(rate_attr(start), 0))
        budget_left = None
        if principal.budget is not None:
            budget_left = principal.budget - int(item.get("rows_used", 0))
        return rate.count - used, start + rate.window_seconds - now, budget_left

    def _admission(
        self, principal: Principal, item: Mapping[str, Any], *, rows: int, now: int
    ) -> Admission:
        rate_left, reset, budget_left = self._remaining(principal, item, now)
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
        rate_left, reset, budget_left = self._remaining(principal, item, now)
        return _rate_headers(principal, rate_left, reset, budget_left)

    def _over_limit(
        self, principal: Principal, item: Mapping[str, Any], *, rows: int, now: int
    ) -> SecurityError:
        rate_left, reset, budget_left = self._remaining(principal, item, now)
        if budget_left is not None and rows > budget_left:
            # A budget never refills: no Retry-After would be true.
            error: SecurityError = RateLimitedError("budget_exhausted", retry_after=None)
        elif rows > rate_left:
            error = RateLimitedError("rate_limited", retry_after=reset)
        else:
            # The condition failed for no reason we can see in ALL_OLD: fail closed.
            error = StoreUnavailableError("unexplained_condition_failure")
        error.headers.update(_rate_headers(principal, rate_left, reset, budget_left))
        return error
