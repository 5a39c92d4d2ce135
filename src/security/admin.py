"""Key administration: the logic behind ``mlmoat keys ...`` and the admin API.

``KeyAdmin`` validates what an operator asks for, builds key items, and goes through
``PrincipalStore`` for every read and write. Every change of a key's configuration or status
bumps its ``config_version``, so cached configurations on warm instances are refreshed by the
next counting write (see ``limits``). Views never contain secret hashes.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from security.errors import InvalidPayloadError, NotFoundError
from security.keys import generate_key, hash_secret, is_key_id
from security.limits import window_start
from security.policy import OutputPolicy, is_output_policy, rate_capped
from security.records import Counters, KeyRecord, NewKey, SubjectRecord, subject_pk
from security.settings import RateSpec, Settings
from security.shards import MAX_SHARDS
from security.store import PrincipalStore

DEFAULT_SCOPES = ("predict:*",)
_OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")
_SCOPE_RE = re.compile(r"^predict:(\*|[a-z0-9][a-z0-9-]{0,62})$")
# A JWT ``sub`` may be an e-mail, ``auth0|123``, a UUID...: printable, no '#', bounded.
_SUBJECT_RE = re.compile(r"^[^\x00-\x20\x7f#]{1,256}$")
_DURATION_RE = re.compile(r"^(?P<n>[1-9][0-9]{0,6})(?P<unit>[smhdw])$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_GRACE_SECONDS = 7 * 86400


def uncapped(settings: Settings) -> Settings:
    """``settings`` with the caps on created keys lifted: for tooling with direct table access
    that measures the system (load, benchmarks, the red team), never for the admin API."""
    return dataclasses.replace(
        settings,
        key_max_rate=RateSpec(10**9, 1),
        key_max_budget=10**12,
        key_max_lifetime_seconds=10 * 366 * 86400,
        key_max_output_policy="probabilities:6",  # the grammar's most revealing
    )


def parse_duration(text: str) -> int:
    """Seconds in ``"90s"``, ``"15m"``, ``"1h"``, ``"30d"`` or ``"2w"``.

    Raises:
        InvalidPayloadError: the text is not a duration (``invalid_duration``).
    """
    match = _DURATION_RE.match(text.strip())
    if match is None:
        raise InvalidPayloadError("invalid_duration")
    return int(match["n"]) * _DURATION_UNITS[match["unit"]]


def _check_key_id(key_id: str) -> None:
    if not is_key_id(key_id):
        raise InvalidPayloadError("invalid_key_id")


class KeyAdmin:
    """Create, inspect and change API keys."""

    def __init__(
        self, *, store: PrincipalStore, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock

    def create(
        self,
        *,
        owner: str,
        scopes: Iterable[str] = (),
        rate_limit: str | None = None,
        budget: int | None = None,
        output_policy: str | None = None,
        expires_in: str | None = None,
        shards: int = 1,
    ) -> dict[str, Any]:
        """Create a key; returns ``{"key_id", "api_key", "key"}`` (the secret is shown only here).

        ``shards`` > 1 spreads its counting over that many items (``security.shards``): for a key
        that must carry more than one item's 1,000 writes a second; each shard owns a share of
        the rate and of the budget, so both must be at least ``shards``.

        Raises:
            InvalidPayloadError: an argument is invalid (``invalid_owner``, ``invalid_scope``,
                ``invalid_rate_limit``, ``invalid_budget``, ``invalid_output_policy``,
                ``invalid_duration``, ``invalid_shards``).
            StoreUnavailableError: DynamoDB failed.
        """
        if not _OWNER_RE.match(owner):
            raise InvalidPayloadError("invalid_owner")
        scope_set = sorted(set(scopes) or set(DEFAULT_SCOPES))
        if not all(_SCOPE_RE.match(scope) for scope in scope_set):
            raise InvalidPayloadError("invalid_scope")
        if not all(self._grantable(scope) for scope in scope_set):
            raise InvalidPayloadError("scope_not_grantable")
        try:
            rate = RateSpec.parse(rate_limit) if rate_limit else self._settings.default_rate_limit
        except ValueError as exc:
            raise InvalidPayloadError("invalid_rate_limit") from exc
        cap = self._settings.key_max_rate
        if not rate_capped(rate.count, rate.window_seconds, cap.count, cap.window_seconds):
            raise InvalidPayloadError("rate_limit_over_cap")
        rows_budget = self._settings.default_budget if budget is None else budget
        if isinstance(rows_budget, bool) or not 1 <= rows_budget <= 10**12:
            raise InvalidPayloadError("invalid_budget")
        if rows_budget > self._settings.key_max_budget:
            raise InvalidPayloadError("budget_over_cap")
        policy = output_policy or self._settings.default_output_policy
        if not is_output_policy(policy):
            raise InvalidPayloadError("invalid_output_policy")
        if not OutputPolicy.parse(policy).reveals_no_more_than(
            OutputPolicy.parse(self._settings.key_max_output_policy)
        ):
            raise InvalidPayloadError("output_policy_over_cap")
        lifetime = self._settings.key_max_lifetime_seconds
        if expires_in:
            lifetime_asked = parse_duration(expires_in)
            if lifetime_asked > lifetime:
                raise InvalidPayloadError("lifetime_over_cap")
            lifetime = lifetime_asked
        if isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
            raise InvalidPayloadError("invalid_shards")
        if shards > min(rate.count, rows_budget):  # every shard owns a row of each limit
            raise InvalidPayloadError("invalid_shards")
        now = int(self._clock())
        parsed, api_key = generate_key()
        record = self._store.create_key(
            NewKey(
                key_id=parsed.key_id,
                owner=owner,
                scopes=frozenset(scope_set),
                rate_limit=rate,
                budget=rows_budget,
                output_policy=policy,
                secret_hash=hash_secret(parsed.key_id, parsed.secret),
                created_at=now,
                # Every key ends: at most SECURITY_KEY_MAX_LIFETIME_SECONDS after its creation.
                expires_at=now + lifetime,
                shards=shards,
            )
        )
        return {"key_id": parsed.key_id, "api_key": api_key, "key": key_view(record, now=now)}

    def _grantable(self, scope: str) -> bool:
        grantable = self._settings.key_grantable_scopes
        return "predict:*" in grantable or scope in grantable

    def list(self, *, owner: str | None = None) -> list[dict[str, Any]]:
        """Views of every key (optionally one owner's).

        Raises:
            StoreUnavailableError: DynamoDB failed.
        """
        now = int(self._clock())
        return [self._view(record, now) for record in self._store.list_keys(owner=owner)]

    def _view(self, record: KeyRecord, now: int) -> dict[str, Any]:
        count = record.shards
        shards = self._store.get_shards(record.principal_id, count) if count > 1 else []
        return key_view(record, now=now, shards=shards)

    def show(self, key_id: str) -> dict[str, Any]:
        """The view of one key: status, configuration, counters, flags.

        Raises:
            InvalidPayloadError: the key id is malformed.
            NotFoundError: no such key.
            StoreUnavailableError: DynamoDB failed.
        """
        _check_key_id(key_id)
        return self._view(self._store.get_key(key_id), int(self._clock()))

    def usage(self, key_id: str) -> dict[str, Any]:
        """Counters of one key: rows used, requests, budget left, current window.

        Raises:
            InvalidPayloadError: the key id is malformed.
            NotFoundError: no such key.
            StoreUnavailableError: DynamoDB failed.
        """
        view = self.show(key_id)
        return {name: view[name] for name in ("key_id", "status", "usage")}

    def revoke(self, key_id: str) -> dict[str, Any]:
        """Revoke a key for good (effective on its very next request).

        Raises:
            InvalidPayloadError: malformed id, or the key is already revoked.
            NotFoundError: no such key.
            StoreUnavailableError: DynamoDB failed.
        """
        return self._move(key_id, "revoked", ("active", "suspended"))

    def suspend(self, key_id: str) -> dict[str, Any]:
        """Suspend an active key (reversible with ``reinstate``).

        Raises:
            InvalidPayloadError: malformed id, or the key is not active.
            NotFoundError: no such key.
            StoreUnavailableError: DynamoDB failed.
        """
        return self._move(key_id, "suspended", ("active",))

    def reinstate(self, key_id: str) -> dict[str, Any]:
        """Make a suspended key active again (a revoked key stays revoked).

        Raises:
            InvalidPayloadError: malformed id, or the key is not suspended.
            NotFoundError: no such key.
            StoreUnavailableError: DynamoDB failed.
        """
        return self._move(key_id, "active", ("suspended",))

    def rotate(self, key_id: str, *, grace: str = "1h") -> dict[str, Any]:
        """Issue a new secret; the old one stays valid for ``grace``; counters are carried over.

        Returns ``{"key_id", "api_key", "key"}`` (the only time the new secret is shown).

        Raises:
            InvalidPayloadError: malformed id or grace, grace over 7 days, or the key is revoked.
            NotFoundError: no such key.
            StoreUnavailableError: DynamoDB failed.
        """
        _check_key_id(key_id)
        grace_seconds = 0 if grace.strip() in ("0", "0s") else parse_duration(grace)
        if grace_seconds > MAX_GRACE_SECONDS:
            raise InvalidPayloadError("invalid_duration")
        now = int(self._clock())
        parsed, api_key = generate_key(key_id)
        record = self._store.rotate_secret(
            key_id,
            new_hash=hash_secret(parsed.key_id, parsed.secret),
            grace_until=now + grace_seconds,
            now=now,
        )
        return {"key_id": key_id, "api_key": api_key, "key": self._view(record, now)}

    def show_subject(self, subject: str, *, issuer: str | None = None) -> dict[str, Any]:
        """The view of one JWT subject (its status and counters).

        Raises:
            InvalidPayloadError: the subject is malformed, or no issuer is configured.
            NotFoundError: the subject never called and was never suspended.
            StoreUnavailableError: DynamoDB failed.
        """
        pk, _ = self._subject(subject, issuer)
        record = self._store.read_subject(pk)
        if record is None:
            raise NotFoundError("unknown_subject")
        return subject_view(record, now=int(self._clock()))

    def suspend_subject(self, subject: str, *, issuer: str | None = None) -> dict[str, Any]:
        """Suspend a JWT subject: every token for it is refused from its next request on (a
        subject that never called is suspended before its first).

        Raises:
            InvalidPayloadError: the subject is malformed, or no issuer is configured.
            ConflictError: the subject is not active.
            StoreUnavailableError: DynamoDB failed.
        """
        return self._move_subject(subject, issuer, "suspended", ("active",), create=True)

    def reinstate_subject(self, subject: str, *, issuer: str | None = None) -> dict[str, Any]:
        """Make a suspended JWT subject active again.

        Raises:
            InvalidPayloadError: the subject is malformed, or no issuer is configured.
            NotFoundError: no such subject.
            ConflictError: the subject is not suspended.
            StoreUnavailableError: DynamoDB failed.
        """
        return self._move_subject(subject, issuer, "active", ("suspended",), create=False)

    def _subject(self, subject: str, issuer: str | None) -> tuple[str, str]:
        chosen = issuer or self._settings.jwt_issuer
        if not chosen:
            raise InvalidPayloadError("issuer_required")
        if not _SUBJECT_RE.match(subject):
            raise InvalidPayloadError("invalid_subject")
        return subject_pk(chosen, subject), chosen

    def _move_subject(
        self,
        subject: str,
        issuer: str | None,
        status: str,
        allowed_from: tuple[str, ...],
        *,
        create: bool,
    ) -> dict[str, Any]:
        pk, chosen = self._subject(subject, issuer)
        now = int(self._clock())
        record = self._store.set_subject_status(
            pk,
            status,
            allowed_from=allowed_from,
            subject=subject,
            issuer=chosen,
            now=now,
            create=create,
        )
        return subject_view(record, now=now)

    def _move(self, key_id: str, status: str, allowed_from: tuple[str, ...]) -> dict[str, Any]:
        _check_key_id(key_id)
        now = int(self._clock())
        record = self._store.set_status(key_id, status, allowed_from=allowed_from, now=now)
        return self._view(record, now)


def key_view(record: KeyRecord, *, now: int, shards: Iterable[Counters] = ()) -> dict[str, Any]:
    """A JSON-safe view of a key, without secret hashes; a sharded key's counters are the sums
    over its key item and its ``shards``."""
    rate = record.rate_limit or RateSpec(1, 60)
    start = window_start(now, rate.window_seconds)
    counting: list[Counters] = [record, *shards]
    window_rows = sum(part.window_rows(start) or 0 for part in counting)
    budget = record.budget
    rows_used = sum(part.rows_used or 0 for part in counting)
    grace_until = record.previous_secret_until
    used_at = [at for part in counting if (at := part.last_used_at) is not None]
    return {
        "key_id": record.key_id,
        "owner": record.owner,
        "status": record.status,
        "scopes": sorted(record.scopes),
        "rate_limit": str(rate),
        "budget": budget,
        "output_policy": record.output_policy,
        "shards": record.shards,
        "expires_at": record.expires_at,
        "created_at": record.created_at,
        "last_used_at": max(used_at, default=None),
        "rotated_at": record.rotated_at,
        "previous_secret_valid_until": grace_until if grace_until > now else None,
        "config_version": record.config_version,
        "flags": record.flags,
        "flagged_at": record.flagged_at,
        "usage": {
            "rows_used": rows_used,
            "requests": sum(part.requests for part in counting),
            "refusals": record.refusals,
            "budget_remaining": None if budget is None else max(0, budget - rows_used),
            "window_start": start,
            "window_rows": window_rows,
            "window_remaining": max(0, rate.count - window_rows),
            "live_windows": sorted({name for part in counting for name in part.live_windows}),
        },
    }


def subject_view(record: SubjectRecord, *, now: int) -> dict[str, Any]:
    """A JSON-safe view of a JWT subject (its limits come from its tokens' claims)."""
    return {
        "subject": record.subject,
        "issuer": record.issuer,
        "status": record.status,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "last_used_at": record.last_used_at,
        "flags": record.flags,
        "usage": {
            "rows_used": record.rows_used or 0,
            "requests": record.requests,
            "refusals": record.refusals,
            "live_windows": record.live_windows,
        },
        "as_of": now,
    }
