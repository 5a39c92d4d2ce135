"""Sharded keys: one key's counting spread over N items, each owning a share of every limit.

One item takes at most 1,000 write units a second. A key created with ``--shards N`` (N > 1)
keeps its item ``key#<id>`` as the authority for its status, secrets and configuration (read
through the verification cache, never written by an allowed request) and counts on N items
``key#<id>#s<k>``. Shard ``k`` owns ``share(limit, N, k)`` rows of every rate window and of the
budget: the shares add up to the limits exactly, and each shard's condition is exact on its own,
so no number of instances ever counts a row over a limit summed over the shards.

* **Routing.** A lane has two home shards (hashes of its id) and counts on the one it last saw
  less full in this window ("two choices": the hottest shard stays within about 20% of the
  mean, where one fixed shard per lane left it 40-100% above). An environment writes only its
  two homes, so a shard item holds the lane attributes of about 2/N of the environments, and one
  allowed request is still one write of one unit.
* **Spill.** When the homes have no room for the request, it tries the others (in a random
  rotation), skipping those this environment already saw too full for it in this window (or
  budget); it is refused only when every shard refused or was seen too full. So a request of R
  rows is refused only when every shard has fewer than R rows left: at most N*(R-1) rows of a
  window (or of the budget) stay unused, none for one-row requests. At least one shard is
  written for every request (a home shard when all are known full): the refusal is fresh.
* **Batches** can be at most the largest share, ``ceil(limit / N)``, of a window or the budget:
  larger ones can never fit and are refused as such.
* **Revocation** binds from the next request: every admin change of a sharded key (status,
  rotation, a monitor's suspension) moves the shards' ``config_version`` with the key's in one
  transaction, and each shard write is conditioned on it; a shard's failed condition on the
  version sends the request back to read the key item.
* **Headers.** ``RateLimit`` for a sharded key is estimated from the shard that counted the
  request (its share's remainder times the shard count: exact when traffic is spread evenly).
* Refusals of requests refused after authentication are counted on the key item, as for any key.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from security.admission import Admission, estimate, rate_headers
from security.errors import AuthenticationError, RateLimitedError, StoreUnavailableError
from security.records import SHARD_KIND
from security.store import ChargeRequest
from security.throttle import window_start

if TYPE_CHECKING:
    from security.auth import Principal
    from security.charging import Sender
    from security.itemviews import Counts
    from security.records import Counters
    from security.store import PrincipalStore
    from security.verification import KeyVerifier
    from security.writers import Lane, Stamp

#: The most shards a key may have: a transaction (an admin change) holds at most 100 items.
MAX_SHARDS = 64


def share(total: int, shards: int, index: int) -> int:
    """Shard ``index``'s share of ``total``: the shares of all shards add up to ``total``."""
    return total // shards + (1 if index < total % shards else 0)


def max_share(total: int, shards: int) -> int:
    """The largest share of ``total`` over ``shards`` shards (``total`` for one shard)."""
    return -(-total // shards)


def fits(principal: Principal, rows: int) -> bool:
    """Whether ``rows`` rows can ever be admitted at once (in a window, within the budget)."""
    if rows > max_share(principal.rate_limit.count, principal.shards):
        return False
    return principal.budget is None or rows <= max_share(principal.budget, principal.shards)


class ShardedCharging:
    """The counting of a sharded key (a part of ``limits.Gatekeeper``)."""

    _sender: Sender
    _store: PrincipalStore
    _keys: KeyVerifier

    def _charge_shards(
        self, lane: Lane, principal: Principal, *, rows: int, now: int
    ) -> Admission | None:
        """Count ``rows`` on a shard; None when a shard shows our configuration is stale (the
        caller reads the key item again).

        Raises:
            AuthenticationError: the key expired.
            RateLimitedError: no shard has room (``rate_limited``) or budget left
                (``budget_exhausted``) for the request.
            StoreUnavailableError: DynamoDB failed, a shard is missing or a condition failed for
                no reason ALL_OLD shows.
        """
        if principal.expires_at is not None and principal.expires_at <= now:
            self._keys.forget(principal.principal_id)
            raise AuthenticationError("expired")
        count, rate = principal.shards, principal.rate_limit
        start = window_start(now, rate.window_seconds)
        homes = lane.homes(count)
        order, short, full = self._shard_order(principal, homes, rows=rows, window_start=start)
        for index in order:
            rate_share = share(rate.count, count, index)
            budget_share = (
                None if principal.budget is None else share(principal.budget, count, index)
            )

            def build(stamp: Stamp, windows: tuple[str, ...], shard: int = index,
                      room: int = rate_share, budget: int | None = budget_share
                      ) -> ChargeRequest:  # fmt: skip
                return ChargeRequest(
                    pk=principal.principal_id,
                    shard=shard,
                    kind=SHARD_KIND,
                    rows=rows,
                    now=now,
                    window_start=start,
                    rate_left=room - rows,
                    budget_left=None if budget is None else budget - rows,
                    stamp=stamp,
                    stale_attrs=windows,
                    config_version=principal.config_version,
                )

            sent = self._sender.send(
                lane,
                principal.principal_id,
                shard=index,
                build=build,
                call=self._store.charge,
                window_start=start,
                window_seconds=rate.window_seconds,
            )
            where = f"{principal.principal_id} shard {index}"
            if sent.counted:
                return self._shard_admission(principal, index, sent.counters, rows=rows, now=now)
            if not sent.found:
                raise StoreUnavailableError("shard_missing", detail=where)
            old = sent.counters
            if old.config_version != principal.config_version:
                return None
            if budget_share is not None and (old.rows_used or 0) + rows > budget_share:
                short.add(index)
            elif (old.window_rows(start) or 0) + rows > rate_share:
                full.add(index)
            else:
                raise StoreUnavailableError("unexplained_condition_failure", detail=where)
        raise self._shards_refused(principal, homes[0], now=now, budget=len(short) == count)

    def _shard_order(
        self, principal: Principal, homes: tuple[int, int], *, rows: int, window_start: int
    ) -> tuple[list[int], set[int], set[int]]:
        """The shards to try: the lane's two homes first (the one last seen less full in this
        window first), then the others in a random rotation, without those seen too full for
        ``rows``; with the skipped ones, as (order, short of budget, window full). The first
        home is tried when every shard is known full."""
        count, rate = principal.shards, principal.rate_limit
        seen: dict[int, Counts] = {
            index: self._sender.seen(principal.principal_id, window_start, shard=index)
            for index in range(count)
        }

        def fill(index: int) -> float:
            return (seen[index].window_rows or 0) / max(1, share(rate.count, count, index))

        first, second = sorted(homes, key=fill) if homes[0] != homes[1] else homes
        others = [index for index in range(count) if index not in homes]
        offset = secrets.randbelow(len(others)) if others else 0
        order: list[int] = []
        short: set[int] = set()
        full: set[int] = set()
        for index in dict.fromkeys([first, second, *others[offset:], *others[:offset]]):
            budget = principal.budget
            spent = seen[index].rows_used or 0
            if budget is not None and rows > share(budget, count, index) - spent:
                short.add(index)
            elif rows > share(rate.count, count, index) - (seen[index].window_rows or 0):
                full.add(index)
            else:
                order.append(index)
        if not order:
            short.discard(first)
            full.discard(first)
            order = [first]
        return order, short, full

    def _shard_admission(
        self, principal: Principal, index: int, counters: Counters, *, rows: int, now: int
    ) -> Admission:
        rate_left, reset, budget_left = _shard_remaining(
            principal,
            index,
            counters.window_rows(now - now % principal.rate_limit.window_seconds),
            counters.rows_used,
            now,
        )
        return Admission(
            principal=principal,
            rows=rows,
            rate_remaining=rate_left,
            reset_seconds=reset,
            budget_remaining=budget_left,
        )

    def _shard_headers(self, principal: Principal, home: int, now: int) -> dict[str, str]:
        """``RateLimit`` headers estimated from what this environment last saw of a shard."""
        rate = principal.rate_limit
        seen = self._sender.seen(
            principal.principal_id, window_start(now, rate.window_seconds), shard=home
        )
        return rate_headers(
            principal, *_shard_remaining(principal, home, seen.window_rows, seen.rows_used, now)
        )

    def _shards_refused(
        self, principal: Principal, home: int, *, now: int, budget: bool, never_fits: bool = False
    ) -> RateLimitedError:
        rate = principal.rate_limit
        reset = window_start(now, rate.window_seconds) + rate.window_seconds - now
        if budget:  # a budget never refills: no Retry-After would be true
            error = RateLimitedError("budget_exhausted", retry_after=None)
        else:
            error = RateLimitedError("rate_limited", retry_after=reset)
        error.headers.update(self._shard_headers(principal, home, now))
        if never_fits:
            error.detail = "never_fits"  # a counted refusal: the monitor hears of it
        return error


def _shard_remaining(
    principal: Principal, index: int, window_rows: int | None, rows_used: int | None, now: int
) -> tuple[int, int, int | None]:
    """Rows left in the window and the budget, estimated from what shard ``index`` holds (rows
    in the current window, rows used), and seconds until the window ends."""
    count, rate = principal.shards, principal.rate_limit
    start = window_start(now, rate.window_seconds)
    rate_share = share(rate.count, count, index)
    rate_left = estimate(rate.count, rate_share, rate_share - (window_rows or 0))
    budget_left = None
    if principal.budget is not None:
        budget_share = share(principal.budget, count, index)
        spent = rows_used or 0
        budget_left = estimate(principal.budget, budget_share, budget_share - spent)
    return rate_left, start + rate.window_seconds - now, budget_left
