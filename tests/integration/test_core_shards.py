"""Sharded keys against moto server over HTTP: exact across shards, bounded under-serving,
revocation on the next request, one write per allowed request.

A sharded key's item stays the authority (status, secrets, configuration) and is not written
by allowed requests; its rows are counted on ``key#<id>#s<k>`` items, each owning a share of
every limit (``security.shards``).
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from typing import Any

import pytest
from coresupport import make_client, record_calls, settings_for
from coreworkers import hammer

from security.admin import KeyAdmin
from security.auth import Authenticator, Credentials
from security.errors import (
    AuthenticationError,
    InvalidPayloadError,
    RateLimitedError,
    StoreUnavailableError,
)
from security.limits import Gatekeeper
from security.store import PrincipalStore, key_pk, shard_pk
from security.writers import Lane

NOW = 1_900_001_030.0
PROCESSES = 3
THREADS = 8


def _admin(endpoint: str, table: str) -> KeyAdmin:
    store = PrincipalStore(client=make_client(endpoint), table_name=table)
    return KeyAdmin(store=store, settings=settings_for(table), clock=lambda: NOW)


def _gatekeeper(endpoint: str, table: str, client: Any | None = None) -> Gatekeeper:
    store = PrincipalStore(client=client or make_client(endpoint), table_name=table)
    return Gatekeeper(store=store, settings=settings_for(table), clock=lambda: NOW)


def _creds(table: str, api_key: str) -> Credentials:
    authenticator = Authenticator(settings=settings_for(table), token_verifier=None)
    return authenticator.read_credentials({"X-API-Key": api_key})


def _admit(gatekeeper: Gatekeeper, creds: Credentials, rows: int = 1) -> Any:
    return gatekeeper.admit(
        creds, model="iris", rows=rows, request_id=str(uuid.uuid4()), source_ip="10.6.6.6"
    )


def _item(endpoint: str, table: str, pk: str) -> dict[str, Any]:
    store = PrincipalStore(client=make_client(endpoint), table_name=table)
    item = store.get(pk)
    assert item is not None, pk
    return item


def _run_instances(
    endpoint: str, table: str, api_key: str, *, rows: int
) -> tuple[int, dict[str, int], dict[str, int]]:
    context = multiprocessing.get_context("spawn")
    kwargs = {"threads": THREADS, "rows": rows, "fixed_now": NOW, "max_requests": 200}
    with context.Pool(PROCESSES) as pool:
        results = [
            pool.apply_async(hammer, (endpoint, table, api_key), kwargs) for _ in range(PROCESSES)
        ]
        outcomes = [r.get(timeout=120) for r in results]
    reasons: dict[str, int] = {}
    calls: dict[str, int] = {}
    for _, refused, made in outcomes:
        for reason, count in refused.items():
            reasons[reason] = reasons.get(reason, 0) + count
        for operation, count in made.items():
            calls[operation] = calls.get(operation, 0) + count
    return sum(allowed for allowed, _, _ in outcomes), reasons, calls


def test_a_sharded_key_is_created_with_its_shards_and_validated(
    core_endpoint: str, core_table: str
) -> None:
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="shardy", rate_limit="400/minute", budget=1000, shards=4)
    key_id = created["key_id"]
    assert created["key"]["shards"] == 4 and admin.show(key_id)["shards"] == 4
    key = _item(core_endpoint, core_table, key_pk(key_id))
    assert key["shards"] == 4 and key["rows_used"] == 0
    for index in range(4):
        shard = _item(core_endpoint, core_table, shard_pk(key_pk(key_id), index))
        assert shard["kind"] == "shard" and shard["config_version"] == key["config_version"]
        assert "secret_hash" not in shard  # the secrets stay on the key item
    # shards are not keys: listing shows the key once
    assert [view["key_id"] for view in admin.list(owner="shardy")] == [key_id]
    for bad in ({"shards": 0}, {"shards": 65}, {"shards": 8, "budget": 7}):
        with pytest.raises(InvalidPayloadError, match="invalid_shards"):
            admin.create(owner="shardy", rate_limit="400/minute", **{"budget": 1000, **bad})


def test_budget_is_exact_across_shards_processes_and_threads(
    core_endpoint: str, core_table: str
) -> None:
    # given a key with 4 shards and a budget of 150 rows (shares 38, 38, 37, 37)
    budget = 150
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="crowd", rate_limit="100000/hour", budget=budget, shards=4)
    # when 3 processes x 8 threads (24 lanes, each with its home shard) admit 1-row requests
    allowed, refused, calls = _run_instances(core_endpoint, core_table, created["api_key"], rows=1)
    # then exactly the budget was allowed over all shards: none over, none left unused
    assert allowed == budget
    assert refused == {"budget_exhausted": PROCESSES * THREADS}
    usage = admin.usage(created["key_id"])["usage"]
    assert usage["rows_used"] == budget and usage["requests"] == budget
    shards = [
        _item(core_endpoint, core_table, shard_pk(key_pk(created["key_id"]), k)) for k in range(4)
    ]
    assert [s["rows_used"] for s in shards] == [38, 38, 37, 37]
    # and the key item was never written by a request (its counters are on the shards)
    assert _item(core_endpoint, core_table, key_pk(created["key_id"]))["rows_used"] == 0
    # and every allowed request was one write; a refusal costs at most one write per shard
    assert budget <= calls["UpdateItem"] <= budget + PROCESSES * THREADS * 4 + 4 * PROCESSES


def test_rate_is_exact_across_shards_and_under_serving_stays_in_its_bound(
    core_endpoint: str, core_table: str
) -> None:
    # given a key of 122 rows/hour over 4 shards (shares 31, 31, 30, 30) and 2-row requests
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="burst", rate_limit="122/hour", budget=10**6, shards=4)
    # when 3 processes x 8 threads admit until refused
    allowed, refused, _ = _run_instances(core_endpoint, core_table, created["api_key"], rows=2)
    # then never more than the limit, and the rows left unused are the shards' odd rows only:
    # each shard of 31 keeps 1 row no 2-row request fits (bound: 4 shards x (2 - 1) rows)
    assert allowed == 120
    assert refused == {"rate_limited": PROCESSES * THREADS}
    assert admin.usage(created["key_id"])["usage"]["window_rows"] == 120


def test_one_row_requests_use_every_row_of_every_shard(core_endpoint: str, core_table: str) -> None:
    # given a key of 61 rows/hour over 4 shards, written by 3 environments of 2 threads
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="ones", rate_limit="61/hour", budget=10**6, shards=4)
    creds = _creds(core_table, created["api_key"])
    environments = [_gatekeeper(core_endpoint, core_table) for _ in range(3)]
    allowed = 0
    lock = threading.Lock()

    def worker(gatekeeper: Gatekeeper) -> None:
        nonlocal allowed
        while True:
            try:
                _admit(gatekeeper, creds)
            except RateLimitedError as exc:
                assert exc.reason == "rate_limited"
                return
            with lock:
                allowed += 1

    threads = [threading.Thread(target=worker, args=(g,)) for g in environments for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # then exactly the limit: one-row requests are never under-served (they spill until every
    # shard is full)
    assert allowed == 61


def _ids_with_homes(homes: tuple[int, int], shards: int, count: int) -> list[str]:
    ids = [f"h{n:04d}" for n in range(10_000)]
    return [i for i in ids if Lane(i).homes(shards) == homes][:count]


def test_a_full_shard_is_spilled_from_once_then_skipped(
    core_endpoint: str, core_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a key of 4 rows/hour over 4 shards (1 row each), and two environments whose lanes
    # have the same two home shards, 0 and 1
    import security.writers as writers

    monkeypatch.setattr(writers, "new_writer_id", iter(_ids_with_homes((0, 1), 4, 2)).__next__)
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="spill", rate_limit="4/hour", budget=100, shards=4)
    creds = _creds(core_table, created["api_key"])
    client_a, client_b = make_client(core_endpoint), make_client(core_endpoint)
    env_a = _gatekeeper(core_endpoint, core_table, client_a)
    env_b = _gatekeeper(core_endpoint, core_table, client_b)
    made_a, made_b = record_calls(client_a), record_calls(client_b)
    # when A counts a row (on its first home: shard 0 is full now)
    _admit(env_a, creds)
    assert made_a == ["GetItem", "UpdateItem"]  # the cold read, then one write
    # then B, who knows nothing of it, is refused by shard 0 once and counts on shard 1
    _admit(env_b, creds)
    assert made_b == ["GetItem", "UpdateItem", "UpdateItem"]
    made_b.clear()
    # and B's next requests go straight to shards with room: its homes are known full
    _admit(env_b, creds)
    _admit(env_b, creds)
    assert made_b == ["UpdateItem", "UpdateItem"]
    made_b.clear()
    # and once every shard is known full, a refusal costs B one (fresh) write
    with pytest.raises(RateLimitedError) as refused:
        _admit(env_b, creds)
    assert refused.value.reason == "rate_limited" and refused.value.retry_after is not None
    assert made_b == ["UpdateItem"]
    # and A, who saw only shard 0, tries each other shard once before it is refused
    made_a.clear()
    with pytest.raises(RateLimitedError):
        _admit(env_a, creds)
    assert made_a == ["UpdateItem"] * 3
    usage = admin.usage(created["key_id"])["usage"]
    assert usage["window_rows"] == 4 and usage["rows_used"] == 4


def test_revocation_suspension_and_rotation_bind_on_every_shard_at_the_next_request(
    core_endpoint: str, core_table: str
) -> None:
    # given a warm environment with a sharded key cached
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="authority", rate_limit="1000/hour", budget=1000, shards=3)
    key_id = created["key_id"]
    creds = _creds(core_table, created["api_key"])
    gatekeeper = _gatekeeper(core_endpoint, core_table)
    # (its RateLimit headers are estimated from the shard that counted the row: 332 or 333 of
    # its share left, times 3)
    assert _admit(gatekeeper, creds).rate_remaining in (996, 997)
    # when the key is suspended, the next request is refused (no shard accepts the old version)
    admin.suspend(key_id)
    with pytest.raises(AuthenticationError, match="suspended"):
        _admit(gatekeeper, creds)
    admin.reinstate(key_id)
    assert _admit(gatekeeper, creds).rows == 1
    # and a rotation without grace refuses the old secret from the next request
    rotated = admin.rotate(key_id, grace="0s")
    with pytest.raises(AuthenticationError):
        _admit(gatekeeper, creds)
    assert _admit(gatekeeper, _creds(core_table, rotated["api_key"])).rows == 1
    # and the monitor's suspension (flag_principal) binds on the shards too
    store = PrincipalStore(client=make_client(core_endpoint), table_name=core_table)
    store.flag_principal(key_pk(key_id), reason="extraction", suspend=True, now=int(NOW))
    with pytest.raises(AuthenticationError, match="suspended"):
        _admit(gatekeeper, _creds(core_table, rotated["api_key"]))
    # and revocation is for good
    admin.revoke(key_id)
    with pytest.raises(AuthenticationError, match="revoked"):
        _admit(gatekeeper, _creds(core_table, rotated["api_key"]))
    key = _item(core_endpoint, core_table, key_pk(key_id))
    for index in range(3):
        shard = _item(core_endpoint, core_table, shard_pk(key_pk(key_id), index))
        assert shard["config_version"] == key["config_version"]
    usage = admin.usage(key_id)["usage"]
    assert usage["rows_used"] == 3 == usage["requests"]


def test_budget_stays_exact_on_shards_while_admins_keep_changing_the_key(
    core_endpoint: str, core_table: str
) -> None:
    # given two environments x 6 threads on a 4-shard key, while an operator keeps suspending
    # and reinstating it (each change is a transaction over the key and its shards)
    budget = 90
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="churn", rate_limit="100000/hour", budget=budget, shards=4)
    creds = _creds(core_table, created["api_key"])
    environments = [_gatekeeper(core_endpoint, core_table) for _ in range(2)]
    allowed = 0
    transient: dict[str, int] = {}
    lock = threading.Lock()

    def worker(gatekeeper: Gatekeeper) -> None:
        nonlocal allowed
        for _ in range(2000):
            try:
                admission = _admit(gatekeeper, creds)
            except RateLimitedError:
                return
            except (AuthenticationError, StoreUnavailableError) as exc:
                with lock:
                    transient[exc.reason] = transient.get(exc.reason, 0) + 1
                continue
            with lock:
                allowed += admission.rows

    threads = [threading.Thread(target=worker, args=(g,)) for g in environments for _ in range(6)]
    for thread in threads:
        thread.start()
    changes = 0
    while any(t.is_alive() for t in threads) and changes < 40:
        admin.suspend(created["key_id"])
        admin.reinstate(created["key_id"])
        changes += 2
    for thread in threads:
        thread.join(60)
    usage = admin.usage(created["key_id"])["usage"]
    assert allowed == budget == usage["rows_used"] == usage["requests"]
    assert changes >= 2 and set(transient) <= {"suspended", "config_contention"}


def test_batches_larger_than_a_share_never_fit(core_endpoint: str, core_table: str) -> None:
    # given 10 rows/hour and a budget of 7 over 2 shards: at most 5 rows of a window, 4 of the
    # budget, in one request
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="batch", rate_limit="10/hour", budget=7, shards=2)
    creds = _creds(core_table, created["api_key"])
    gatekeeper = _gatekeeper(core_endpoint, core_table)
    with pytest.raises(RateLimitedError) as budget:
        _admit(gatekeeper, creds, rows=5)
    assert budget.value.reason == "budget_exhausted" and budget.value.detail == "never_fits"
    assert _admit(gatekeeper, creds, rows=4).rows == 4
    usage = admin.usage(created["key_id"])["usage"]
    assert usage["rows_used"] == 4 and usage["refusals"] == 1
