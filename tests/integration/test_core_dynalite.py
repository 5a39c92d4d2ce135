"""Second opinion from dynalite (an independent DynamoDB implementation, stricter on validation)
on the conditional-update core: the exact ``PrincipalStore.charge`` expressions.

dynalite has no ReturnValuesOnConditionCheckFailure (it ignores it), so these tests call the
store directly and judge outcomes by ok/refused and by the item, not by ALL_OLD.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from coresupport import make_client

from security.keys import generate_key, hash_secret
from security.store import ChargeRequest, PrincipalStore, key_pk, rate_attr
from security.writers import Stamp

NOW = 1_900_001_030
WINDOW = rate_attr(NOW - NOW % 60)
_SEQUENCE = iter(range(1, 10**9))


@pytest.fixture()
def dyn(
    dynalite_endpoint: str, create_security_table: Callable[..., str]
) -> tuple[PrincipalStore, Any]:
    client = make_client(dynalite_endpoint)
    table = create_security_table(client, f"dyn-{uuid.uuid4().hex[:12]}", ttl=False)
    return PrincipalStore(client=client, table_name=table), client


def _key(store: PrincipalStore, **extra: Any) -> tuple[str, str]:
    parsed, _ = generate_key()
    secret_hash = hash_secret(parsed.key_id, parsed.secret)
    item = {
        "pk": key_pk(parsed.key_id),
        "kind": "api_key",
        "key_id": parsed.key_id,
        "owner": "o",
        "status": "active",
        "scopes": {"predict:*"},
        "rate_count": 10**6,
        "rate_window": 60,
        "budget": 10**6,
        "output_policy": "label",
        "secret_hash": secret_hash,
        "config_version": 1,
        "rows_used": 0,
        "requests": 0,
        "created_at": NOW,
    }
    item.update(extra)
    store.create_key(item)
    return key_pk(parsed.key_id), secret_hash


def _request(pk: str, secret_hash: str | None = None, **over: Any) -> ChargeRequest:
    base = ChargeRequest(
        pk=pk,
        kind="api_key",
        rows=1,
        now=NOW,
        window_start=NOW - NOW % 60,
        rate_left=10**6 - 1,
        budget_left=10**6 - 1,
        stamp=Stamp("e_" + uuid.uuid4().hex[:5], next(_SEQUENCE)),
        stale_attrs=(rate_attr(NOW - NOW % 60 - 60),),
        secret_hash=secret_hash,
        config_version=1,
    )
    return replace(base, **over)


def test_budget_condition_is_exact_under_threads(dyn: tuple[PrincipalStore, Any]) -> None:
    store, _ = dyn
    budget, threads = 60, 12
    pk, secret_hash = _key(store, budget=budget)
    allowed = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal allowed
        while True:
            outcome = store.charge(_request(pk, secret_hash, budget_left=budget - 1))
            if not outcome.ok:
                return
            with lock:
                allowed += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    item = store.get(pk)
    assert allowed == budget and item is not None
    assert item["rows_used"] == budget and item[WINDOW] == budget


def test_rate_window_condition_and_stale_window_removal(dyn: tuple[PrincipalStore, Any]) -> None:
    store, _ = dyn
    old_window = rate_attr(NOW - NOW % 60 - 60)
    pk, secret_hash = _key(store, **{old_window: 7})
    assert store.charge(_request(pk, secret_hash, rows=3, rate_left=2)).ok
    assert not store.charge(_request(pk, secret_hash, rows=3, rate_left=2)).ok
    item = store.get(pk)
    assert item is not None and item[WINDOW] == 3 and old_window not in item


def test_same_lane_sequence_is_counted_once(dyn: tuple[PrincipalStore, Any]) -> None:
    store, _ = dyn
    pk, secret_hash = _key(store)
    request = _request(pk, secret_hash, rows=2)
    assert store.charge(request).ok
    assert not store.charge(request).ok  # an SDK retry of the same write
    earlier = replace(request, stamp=Stamp(request.stamp.attr, request.stamp.sequence - 1))
    assert not store.charge(earlier).ok  # a sequence behind the lane's is refused too
    later = replace(request, stamp=Stamp(request.stamp.attr, request.stamp.sequence + 1))
    assert store.charge(later).ok  # the lane's next write counts
    item = store.get(pk)
    assert item is not None and item["rows_used"] == 4 and item["requests"] == 2
    assert item[request.stamp.attr] == request.stamp.sequence + 1


def test_successful_charge_returns_updated_new_and_prunes(dyn: tuple[PrincipalStore, Any]) -> None:
    store, _ = dyn
    pk, secret_hash = _key(store, e_old01=5)
    stamp = Stamp("e_mine1", 10_000, prune=("e_old01",), prune_before=1000)
    outcome = store.charge(_request(pk, secret_hash, stamp=stamp))
    assert outcome.ok and outcome.item is not None and "secret_hash" not in outcome.item
    assert outcome.item["rows_used"] == 1 and outcome.item["e_mine1"] == 10_000
    item = store.get(pk)
    assert item is not None and "e_old01" not in item


@pytest.mark.parametrize(
    ("extra", "over"),
    [
        ({"status": "revoked"}, {}),
        ({"status": "suspended"}, {}),
        ({"expires_at": NOW}, {}),
        ({}, {"config_version": 2}),
        ({}, {"secret_hash": "0" * 64}),
        ({"prev_secret_hash": "f" * 64, "prev_secret_until": NOW}, {"secret_hash": "f" * 64}),
    ],
)
def test_principal_conditions_refuse_without_charging(
    dyn: tuple[PrincipalStore, Any], extra: dict[str, Any], over: dict[str, Any]
) -> None:
    store, _ = dyn
    pk, secret_hash = _key(store, **extra)
    fields = {"secret_hash": secret_hash, **over}
    assert not store.charge(_request(pk, **fields)).ok
    item = store.get(pk)
    assert item is not None and item["rows_used"] == 0


def test_previous_secret_works_inside_its_grace(dyn: tuple[PrincipalStore, Any]) -> None:
    store, _ = dyn
    pk, _ = _key(store, prev_secret_hash="e" * 64, prev_secret_until=NOW + 1)
    assert store.charge(_request(pk, "e" * 64)).ok


def test_missing_key_is_refused_and_subject_item_is_created_by_its_first_charge(
    dyn: tuple[PrincipalStore, Any],
) -> None:
    store, _ = dyn
    assert not store.charge(_request(key_pk("Z" * 12), "0" * 64)).ok
    assert store.get(key_pk("Z" * 12)) is None
    subject_pk = f"sub#abcdef0123456789#{uuid.uuid4().hex}"
    subject = _request(
        subject_pk, None, kind="jwt", config_version=None, subject="s", issuer="i", budget_left=0
    )
    assert store.charge(subject).ok
    another = replace(subject, stamp=Stamp("e_other", 1))
    assert not store.charge(another).ok  # budget of 1 row
    item = store.get(subject_pk)
    assert item is not None and item["status"] == "active" and item["rows_used"] == 1


def test_admin_writes_pass_dynalites_stricter_validation(dyn: tuple[PrincipalStore, Any]) -> None:
    # dynalite refuses unused expression names/values and reserved words that moto lets through
    store, _ = dyn
    pk, _ = _key(store)
    key_id = pk.removeprefix("key#")
    assert store.set_status(key_id, "suspended", allowed_from=("active",), now=NOW).status == (
        "suspended"
    )
    assert (
        store.set_status(key_id, "active", allowed_from=("suspended",), now=NOW).config_version == 3
    )
    rotated = store.rotate_secret(key_id, new_hash="a" * 64, grace_until=NOW + 60, now=NOW)
    assert rotated.secret_hash == "a" * 64 and rotated.previous_secret_until == NOW + 60
    assert store.flag_principal(pk, reason="r1", suspend=False, now=NOW)["flags"] == {"r1"}
    assert store.flag_principal(pk, reason="r2", suspend=True, now=NOW)["status"] == "suspended"
    assert (
        store.record_auth_failure("192.0.2.9", window_start=NOW - NOW % 60, window_seconds=60) == 1
    )
    assert (
        store.record_auth_failure("192.0.2.9", window_start=NOW - NOW % 60, window_seconds=60) == 2
    )
    assert [record.key_id for record in store.list_keys(owner="o")] == [key_id]
