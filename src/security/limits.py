"""Admission: authenticate, check scope, and count rows against the rate window and the budget.

``docs/limits.md`` has the algorithm in full, with the data model and the cost. In short:

* **Fixed windows aligned to the epoch**, one ``rw_<k*W>`` attribute per live window; stale
  ones are removed by the write that counts the current one.
* **One conditional ``UpdateItem`` per allowed request** (``PrincipalStore.charge``) checks
  status, secret hash, expiry, config version, room in the window and the budget, and that this
  write did not land already, and adds the rows, all or nothing. DynamoDB applies conditional
  updates to one item serially: no number of instances exceeds a limit by a row.
* **Constant cost**: the write returns ``UPDATED_NEW`` (the counters it changed, for the
  ``RateLimit`` headers) and the item stays under 1 KB: one write unit per allowed request.
* **Idempotent under retries** without per-request state (``security.writers``): the write sets
  its lane's sequence ``e_<lane>`` under ``e_<lane> < :seq``; an SDK retry of a write that landed
  fails there, ALL_OLD shows the sequence, and the request is counted once.
* **Sharded keys** (``security.shards``): counting spread over N items, each with a share of
  every limit; the key item stays the authority, read through the verification cache.
* **Cached configuration, never cached status**: a stale cached config version fails the
  write, whose ALL_OLD refreshes the cache before one retry; revocation binds on the next request.
* **Refusals cost a refusal, not rows**: a request refused after authentication (its body, a
  batch that can never fit, a model it may not use, a squeezing refusal) is counted by one
  conditional write (``PrincipalStore.charge_refusal``) against ``settings.refusal_limit``;
  past it, 429 ``refusal_limit``. A rate-limit refusal (a failed charge) writes nothing.
* **Guessing is slow** (``security.throttle``): failures are counted per source address, key id
  and in total, after the credential was checked, so a valid credential is never throttled.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from security.admission import Admission, RecentAdmissions, rate_headers, remaining
from security.auth import Credentials, Principal, principal_from_claims
from security.charging import Sender, Sent
from security.errors import (
    AuthenticationError,
    ForbiddenError,
    RateLimitedError,
    SecurityError,
    StoreUnavailableError,
)
from security.itemviews import ItemViews
from security.records import Counters, SubjectRecord
from security.refusals import RefusalCounting
from security.settings import Settings
from security.shards import ShardedCharging, fits, max_share
from security.store import ChargeRequest, PrincipalStore
from security.throttle import GuessingThrottle
from security.throttle import window_start as window_start  # re-exported (admin, tests)
from security.verification import KeyVerifier
from security.writers import Lane, Stamp, WriterPool

NEVER_FITS = "never_fits"


class Gatekeeper(RefusalCounting, ShardedCharging):
    """Authenticates principals against DynamoDB and admits requests with one conditional write.

    Its parts: ``KeyVerifier`` (verification and its cache), ``GuessingThrottle`` (failed
    authentications), ``Sender`` (the stamped counting write) and the admission loop here, with
    its refusal counting (``security.refusals``) and sharded keys (``security.shards``).
    """

    def __init__(
        self,
        *,
        store: PrincipalStore,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        writers: WriterPool | None = None,
    ) -> None:
        """``writers``: this environment's lanes (a pool of its own unless given)."""
        self._store = store
        self._settings = settings
        self._clock = clock
        self._throttle = GuessingThrottle(store=store, settings=settings)
        self._writers = writers or WriterPool()
        self._sender = Sender(views=ItemViews(), clock=clock, prune=store.prune_lanes)
        self._keys = KeyVerifier(
            store=store, settings=settings, throttle=self._throttle, sender=self._sender
        )
        self._recent = RecentAdmissions()

    def after_restore(self) -> None:
        """After a SnapStart restore: new lane ids (every restored environment shares the
        snapshot's memory, and two environments must never write under one lane)."""
        self._writers.reset()

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
        recent = self._recent.get(credentials, request_id, now)
        if recent is not None:
            return recent
        with self._writers.lane() as lane:
            if credentials.kind == "jwt":
                admission = self._admit_subject(
                    lane, credentials, model=model, rows=rows, source_ip=source_ip, now=now
                )
            else:
                admission = self._admit_key(
                    lane, credentials, model=model, rows=rows, source_ip=source_ip, now=now
                )
        self._recent.put(credentials, request_id, admission, now)
        return admission

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
        record: Counters
        if credentials.kind == "jwt":
            principal, record = self._read_subject(credentials)
        else:
            principal, record = self._keys.read(credentials, source_ip=source_ip, now=now)
        with self._writers.lane() as lane:
            headers = self._headers(lane, principal, record, now)
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
        ``RateLimit`` headers for the refusal. (``request_id`` names the request; the write is
        idempotent by its lane's sequence.)

        Raises:
            AuthenticationError: as ``admit``.
            ForbiddenError: the principal lacks the model's scope (the refusal is counted).
            RateLimitedError: ``refusal_limit`` (the allowance is spent) or ``auth_throttled``.
            StoreUnavailableError: DynamoDB failed.
        """
        now = int(self._clock())
        with self._writers.lane() as lane:
            return self._refuse(lane, credentials, model=model, source_ip=source_ip, now=now)

    def credential_failure(self, error: AuthenticationError, *, source_ip: str) -> SecurityError:
        """What to raise for credentials refused before any lookup (a token's bad signature is
        a guess and counts against the guessing throttle; a malformed key costs nothing).

        Raises:
            StoreUnavailableError: the failure could not be counted (fail closed).
        """
        counted = self._throttle.failure(error.reason, source_ip, int(self._clock()))
        return error if isinstance(counted, AuthenticationError) else counted

    # ---------------------------------------------------------------- API keys
    def _admit_key(
        self,
        lane: Lane,
        credentials: Credentials,
        *,
        model: str,
        rows: int,
        source_ip: str,
        now: int,
    ) -> Admission:
        assert credentials.key_id is not None and credentials.secret_hash is not None
        keys = self._keys
        cached = keys.cached(credentials, now)
        # Whether ``principal`` is the table's current word (a consistent read or a write's
        # ALL_OLD), not the cache's or an eventually consistent first sight: refuse only on it.
        confirmed = False
        if cached is None:
            principal, _ = keys.read(credentials, source_ip=source_ip, now=now, first_sight=True)
        else:
            principal = cached
        for _attempt in range(3):  # a first sight, a confirmation, a stale configuration
            if not principal.allows(model):
                if not confirmed:  # confirm the refusal against the table before refusing
                    principal, _ = keys.read(credentials, source_ip=source_ip, now=now)
                    confirmed = True
                    if principal.allows(model):
                        continue
                self._refuse(lane, credentials, model=model, source_ip=source_ip, now=now)
                raise ForbiddenError("forbidden_scope")  # the scope was granted meanwhile
            if not fits(principal, rows):  # can never fit: refuse (after a fresh authentication)
                if not confirmed:
                    principal, _ = keys.read(credentials, source_ip=source_ip, now=now)
                    confirmed = True
                    continue  # judge again on the fresh configuration
                principal, counters = self._count_refusal(lane, credentials, source_ip, now)
                raise self._over_limit(
                    lane, principal, counters, rows=rows, now=now, never_fits=True
                )
            if principal.shards > 1:
                admission = self._charge_shards(lane, principal, rows=rows, now=now)
                if admission is not None:
                    return admission
                # A shard's config_version moved: the key changed; read it (and verify) again.
                principal, _ = keys.read(credentials, source_ip=source_ip, now=now)
                confirmed = True
                continue
            sent = self._send_charge(lane, credentials, principal, rows=rows, now=now)
            if sent.counted and sent.found:
                if sent.full:
                    keys.remember(sent.key)
                return self._admission(principal, sent.counters, rows=rows, now=now)
            if not sent.found:
                raise keys.unknown(credentials, source_ip=source_ip, now=now)
            old = sent.key
            keys.remember(old)  # ALL_OLD is the current item: refresh what we cache
            fresh = keys.verify(credentials, old, source_ip=source_ip, now=now)
            if fresh.config_version != principal.config_version:
                # Our cached configuration was stale: ALL_OLD is the current item; retry once.
                principal, confirmed = fresh, True
                continue
            raise self._over_limit(lane, principal, old, rows=rows, now=now)
        raise StoreUnavailableError("config_contention", detail="config changed twice")

    # ------------------------------------------------------------ token subjects
    def _admit_subject(
        self,
        lane: Lane,
        credentials: Credentials,
        *,
        model: str,
        rows: int,
        source_ip: str,
        now: int,
    ) -> Admission:
        assert credentials.claims is not None
        principal = principal_from_claims(credentials.claims)
        if not principal.allows(model):
            self._refuse(lane, credentials, model=model, source_ip=source_ip, now=now)
        if not fits(principal, rows):
            _, counters = self._count_refusal(lane, credentials, source_ip, now)
            raise self._over_limit(lane, principal, counters, rows=rows, now=now, never_fits=True)
        sent = self._send_charge(lane, credentials, principal, rows=rows, now=now)
        if sent.counted and sent.found:
            return self._admission(principal, sent.counters, rows=rows, now=now)
        old = sent.subject
        if not old.active:
            raise AuthenticationError(old.refusal_reason)
        raise self._over_limit(lane, principal, old, rows=rows, now=now)

    def _read_subject(self, credentials: Credentials) -> tuple[Principal, SubjectRecord]:
        assert credentials.claims is not None
        principal = principal_from_claims(credentials.claims)
        record = self._store.read_subject(credentials.principal_id) or SubjectRecord(None)
        if not record.active:
            raise AuthenticationError(record.refusal_reason)
        return principal, record

    # ------------------------------------------------------------------ shared
    def _send_charge(
        self, lane: Lane, credentials: Credentials, principal: Principal, *, rows: int, now: int
    ) -> Sent:
        """The counting write of an unsharded principal (a key or a token subject)."""
        rate = principal.rate_limit
        return self._sender.send(
            lane,
            principal.principal_id,
            build=self._charge_builder(credentials, principal, rows=rows, now=now),
            call=self._store.charge,
            window_start=window_start(now, rate.window_seconds),
            window_seconds=rate.window_seconds,
        )

    def _charge_builder(
        self, credentials: Credentials, principal: Principal, *, rows: int, now: int
    ) -> Callable[[Stamp, tuple[str, ...]], ChargeRequest]:
        rate = principal.rate_limit
        claims = credentials.claims

        def build(stamp: Stamp, windows: tuple[str, ...]) -> ChargeRequest:
            return ChargeRequest(
                pk=principal.principal_id,
                kind=principal.kind,
                rows=rows,
                now=now,
                window_start=window_start(now, rate.window_seconds),
                rate_left=rate.count - rows,
                budget_left=None if principal.budget is None else principal.budget - rows,
                stamp=stamp,
                stale_attrs=windows,
                secret_hash=credentials.secret_hash if credentials.kind == "api_key" else None,
                config_version=principal.config_version if credentials.kind == "api_key" else None,
                subject=claims.subject if claims else None,
                issuer=claims.issuer if claims else None,
            )

        return build

    def _admission(
        self, principal: Principal, counters: Counters, *, rows: int, now: int
    ) -> Admission:
        rate_left, reset, budget_left = remaining(principal, counters, now)
        return Admission(
            principal=principal,
            rows=rows,
            rate_remaining=max(0, rate_left),
            reset_seconds=reset,
            budget_remaining=None if budget_left is None else max(0, budget_left),
        )

    def _headers(
        self, lane: Lane, principal: Principal, counters: Counters, now: int
    ) -> dict[str, str]:
        if principal.shards > 1:  # the key item holds no counters: what a shard last showed
            return self._shard_headers(principal, lane.homes(principal.shards)[0], now)
        rate_left, reset, budget_left = remaining(principal, counters, now)
        return rate_headers(principal, rate_left, reset, budget_left)

    def _over_limit(
        self,
        lane: Lane,
        principal: Principal,
        counters: Counters,
        *,
        rows: int,
        now: int,
        never_fits: bool = False,
    ) -> SecurityError:
        if principal.shards > 1:  # only a batch that can never fit is refused here
            budget = principal.budget is not None and rows > max_share(
                principal.budget, principal.shards
            )
            home = lane.homes(principal.shards)[0]
            return self._shards_refused(
                principal, home, now=now, budget=budget, never_fits=never_fits
            )
        rate_left, reset, budget_left = remaining(principal, counters, now)
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
