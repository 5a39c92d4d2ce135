"""The counting write's cost does not grow with the key's rate (moto server over HTTP).

Each ``Gatekeeper`` here stands for one Lambda execution environment (its own lanes, key cache
and item views), all sharing one client that the capacity meter bills by DynamoDB's rules
(``mlmoat.bench.capacity``): what matters is the item's size before and after each write, and
what the write asks DynamoDB to return.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from coresupport import make_client, settings_for

from mlmoat.bench.capacity import CapacityMeter
from mlmoat.bench.itemsize import item_size
from security.admin import KeyAdmin
from security.auth import Authenticator
from security.errors import AuthenticationError
from security.limits import Gatekeeper
from security.store import PrincipalStore, key_pk
from security.writers import HORIZON_SECONDS

NOW = 1_900_001_030.0
#: Environments that write one key's item within the lanes' horizon and still fit in 1 KB.
ENVIRONMENTS_UNDER_1_KB = 40


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _key(endpoint: str, table: str, clock: Clock, **limits: Any) -> tuple[str, Any]:
    store = PrincipalStore(client=make_client(endpoint), table_name=table)
    admin = KeyAdmin(store=store, settings=settings_for(table), clock=clock)
    created = admin.create(owner=f"cost-{uuid.uuid4().hex[:6]}", **limits)
    credentials = Authenticator(settings=settings_for(table), token_verifier=None).read_credentials(
        {"X-API-Key": created["api_key"]}
    )
    return str(created["key_id"]), credentials


def _environments(client: Any, table: str, clock: Clock, count: int) -> list[Gatekeeper]:
    store = PrincipalStore(client=client, table_name=table)
    return [
        Gatekeeper(store=store, settings=settings_for(table), clock=clock) for _ in range(count)
    ]


def _metered(endpoint: str, clock: Clock) -> tuple[Any, CapacityMeter, Any, list[dict[str, Any]]]:
    """A plain client, a capacity meter reading through it, a client the meter bills, and the
    parameters of every ``UpdateItem`` that client sends, in order."""
    plain = make_client(endpoint)
    meter = CapacityMeter(reader=plain, clock=clock)
    client = meter.attach(make_client(endpoint))
    asked: list[dict[str, Any]] = []
    client.meta.events.register(
        "provide-client-params.dynamodb.UpdateItem", lambda params, **_: asked.append(dict(params))
    )
    return plain, meter, client, asked


def _admit(gatekeeper: Gatekeeper, credentials: Any, rows: int = 1) -> Any:
    return gatekeeper.admit(
        credentials, model="iris", rows=rows, request_id=str(uuid.uuid4()), source_ip="10.4.4.4"
    )


def _raw(client: Any, table: str, pk: str) -> dict[str, Any]:
    item: dict[str, Any] = client.get_item(
        TableName=table, Key={"pk": {"S": pk}}, ConsistentRead=True
    )["Item"]
    return item


def test_one_write_unit_per_request_at_any_rate_and_only_the_counters_returned(
    core_endpoint: str, core_table: str
) -> None:
    # given a key, and one environment whose client is metered and whose requests are recorded
    clock = Clock()
    key_id, credentials = _key(core_endpoint, core_table, clock, rate_limit="100000/minute")
    plain, meter, client, asked = _metered(core_endpoint, clock)
    (gatekeeper,) = _environments(client, core_table, clock, 1)
    # when it sends 600 requests in 6 s (100 a second: the old design's request digests grew
    # the item past 7 KB by then)
    for index in range(600):
        clock.now = NOW + index / 100
        admission = _admit(gatekeeper, credentials)
    # then every counting write cost exactly one write unit, the item never passed 1 KB
    writes = [r for r in meter.records if r.is_write and r.pk == key_pk(key_id)]
    assert len(writes) == 600
    assert {r.write_units for r in writes} == {1.0}
    assert max(r.billed_bytes for r in writes) < 1024
    # and the steady-path write asked for the updated counters only (the first, on a cold
    # environment, follows a read of the whole item: it needs nothing more either)
    assert {params["ReturnValues"] for params in asked} == {"UPDATED_NEW"}
    assert {params["ReturnValuesOnConditionCheckFailure"] for params in asked} == {"ALL_OLD"}
    # and the headers still come from the counters the write returned (one window: NOW is 50 s
    # into its minute)
    assert admission.rate_remaining == 100_000 - 600


def test_the_item_stays_under_1_kb_for_forty_environments(
    core_endpoint: str, core_table: str
) -> None:
    # given a key written by 40 environments (Little's law: ~1,000 requests/s at 40 ms each)
    clock = Clock()
    key_id, credentials = _key(core_endpoint, core_table, clock, rate_limit="100000/minute")
    plain, meter, client, _ = _metered(core_endpoint, clock)
    environments = _environments(client, core_table, clock, ENVIRONMENTS_UNDER_1_KB)
    # when each admits five requests, taking turns, and one request refused for its body is
    # counted (the refusal counter's attributes are on the item too)
    for turn in range(5):
        for index, gatekeeper in enumerate(environments):
            clock.now = NOW + turn + index / 1000
            _admit(gatekeeper, credentials)
    environments[0].refuse(credentials, model="iris", request_id="r-1", source_ip="10.4.4.4")
    # then the item holds one lane attribute per environment and no per-request state
    item = _raw(plain, core_table, key_pk(key_id))
    lanes = [name for name in item if name.startswith("e_")]
    assert len(lanes) == ENVIRONMENTS_UNDER_1_KB
    assert not [name for name in item if name.startswith("rq_")]
    # and it is under 1 KB: every counting write was billed one unit
    assert item_size(item) < 1024
    charges = [r for r in meter.records if r.is_write and r.operation == "UpdateItem"]
    assert len(charges) == 5 * ENVIRONMENTS_UNDER_1_KB + 1
    assert {r.write_units for r in charges} == {1.0}
    assert int(item["rows_used"]["N"]) == 200


def test_stale_lanes_are_pruned_and_live_ones_kept(core_endpoint: str, core_table: str) -> None:
    # given ten environments that wrote a key once, then went quiet
    clock = Clock()
    key_id, credentials = _key(core_endpoint, core_table, clock, rate_limit="100000/hour")
    client = make_client(core_endpoint)
    survivor, *others = _environments(client, core_table, clock, 10)
    _admit(survivor, credentials)
    for gatekeeper in others:
        _admit(gatekeeper, credentials)
    # and one of them wrote again half a horizon later (live)
    clock.now = NOW + HORIZON_SECONDS / 2
    _admit(others[0], credentials)
    # when the survivor keeps writing past the horizon, twice a second (its first write there
    # asks for ALL_NEW, its view being a horizon old; the next, within PRUNE_VIEW_SECONDS of
    # that view, removes the idle lanes)
    for step in range(4):
        clock.now = NOW + HORIZON_SECONDS + 1 + step / 2
        _admit(survivor, credentials)
    # then the lanes idle for longer than the horizon are gone; the live one and its own stay
    item = _raw(client, core_table, key_pk(key_id))
    lanes = sorted(int(value["N"]) for name, value in item.items() if name.startswith("e_"))
    assert lanes == [
        int((NOW + HORIZON_SECONDS / 2) * 1000),
        int((NOW + HORIZON_SECONDS + 2.5) * 1000),
    ]
    assert int(item["rows_used"]["N"]) == 15 and int(item["requests"]["N"]) == 15


def test_a_key_that_many_environments_take_turns_on_stays_under_1_kb(
    core_endpoint: str, core_table: str
) -> None:
    # given a key at 1 request/s served by 100 environments in turn (each sees it every 100 s,
    # so every view it has of the item is older than the horizon: the 10,000 keys shape)
    from security.writers import CLEANUP_AT

    clock = Clock()
    key_id, credentials = _key(core_endpoint, core_table, clock, rate_limit="100000/hour")
    plain, meter, client, asked = _metered(core_endpoint, clock)
    environments = _environments(client, core_table, clock, 100)
    # when it sends 300 requests over 300 s
    for second in range(300):
        clock.now = NOW + second
        _admit(environments[second % len(environments)], credentials)
    # then no counting write failed (a stale view prunes nothing) and each cost one unit
    pk = key_pk(key_id)
    updates = [r for r in meter.records if r.operation == "UpdateItem"]
    assert len(updates) == len(asked) and {r.pk for r in updates} == {pk}
    kinds = [params["UpdateExpression"].startswith("REMOVE ") for params in asked]
    counting = [r for r, cleanup in zip(updates, kinds, strict=True) if not cleanup]
    cleanups = [r for r, cleanup in zip(updates, kinds, strict=True) if cleanup]
    assert len(counting) == 300 and not [r for r in counting if r.condition_failed]
    assert {r.write_units for r in counting} == {1.0}
    # and the item never reached 1 KB: the lanes of the last horizon, and fewer than
    # CLEANUP_AT older ones, which a cleanup write about every CLEANUP_AT requests removes
    assert max(r.billed_bytes for r in updates) < 1024
    assert 0 < len(cleanups) <= 300 // CLEANUP_AT + 1
    assert {r.write_units for r in cleanups} == {1.0}
    assert not [r for r in cleanups if r.condition_failed]
    item = _raw(plain, core_table, pk)
    lanes = [name for name in item if name.startswith("e_")]
    assert len(lanes) < HORIZON_SECONDS + CLEANUP_AT + 1
    assert int(item["rows_used"]["N"]) == 300 and int(item["requests"]["N"]) == 300


def test_two_environments_drawing_one_lane_id_never_count_a_request_twice(
    core_endpoint: str, core_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given two environments whose first lanes got the same id (1 in 10^9 per pair), the
    # second one's clock 5 ms behind the first's
    import security.writers as writers

    drawn = iter(["Dupl1", "Dupl1", "Other", "Else1", "Else2"])
    monkeypatch.setattr(writers, "new_writer_id", lambda: next(drawn))
    clock = Clock()
    key_id, credentials = _key(core_endpoint, core_table, clock, rate_limit="100/hour", budget=50)
    client = make_client(core_endpoint)
    store = PrincipalStore(client=client, table_name=core_table)
    ahead = Gatekeeper(store=store, settings=settings_for(core_table), clock=clock)
    behind = Gatekeeper(
        store=store, settings=settings_for(core_table), clock=lambda: clock.now - 0.005
    )
    # when the one ahead writes, then the one behind (its sequence lower than the attribute's)
    _admit(ahead, credentials, rows=2)
    admission = _admit(behind, credentials, rows=3)
    # then the second was not taken for a retry of the first: it redrew its lane and counted
    assert admission.rows == 3 and admission.budget_remaining == 45
    item = _raw(client, core_table, key_pk(key_id))
    assert int(item["rows_used"]["N"]) == 5 and int(item["requests"]["N"]) == 2
    assert {name for name in item if name.startswith("e_")} == {"e_Dupl1", "e_Other"}


def test_an_item_written_by_the_digest_design_is_cleaned_without_breaking_it(
    core_endpoint: str, core_table: str
) -> None:
    # given a key item as the previous design left it: request-digest sets of three 30 s buckets
    # (the current one, the previous one, and one older than both)
    clock = Clock()
    key_id, credentials = _key(core_endpoint, core_table, clock, rate_limit="100000/hour")
    client = make_client(core_endpoint)
    bucket = int(NOW) // 30
    digests = {f"rq_{b}": {"SS": [uuid.uuid4().hex[:12] for _ in range(50)]} for b in
               (bucket, bucket - 1, bucket - 2)}  # fmt: skip
    names = {f"#b{i}": name for i, name in enumerate(digests)}
    client.update_item(
        TableName=core_table,
        Key={"pk": {"S": key_pk(key_id)}},
        UpdateExpression="SET " + ", ".join(f"{n} = :v{i}" for i, n in enumerate(names)),
        ExpressionAttributeNames=names,
        ExpressionAttributeValues={f":v{i}": v for i, v in enumerate(digests.values())},
    )
    (gatekeeper,) = _environments(client, core_table, clock, 1)
    # when a request is admitted now, the older bucket goes (as the old design removed it
    # itself: an instance still running it keeps its current and previous buckets)
    _admit(gatekeeper, credentials)
    item = _raw(client, core_table, key_pk(key_id))
    assert f"rq_{bucket - 2}" not in item
    assert f"rq_{bucket}" in item and f"rq_{bucket - 1}" in item
    # and a minute later (the environment sees the item whole again) every digest set is gone
    clock.now = NOW + max(60, HORIZON_SECONDS)
    _admit(gatekeeper, credentials)
    _admit(gatekeeper, credentials)
    item = _raw(client, core_table, key_pk(key_id))
    assert not [name for name in item if name.startswith("rq_")]
    assert item_size(item) < 1024 and int(item["rows_used"]["N"]) == 3


class _LaggingReplica:
    """A client whose eventually consistent reads answer from a snapshot taken at ``freeze``:
    the replication lag DynamoDB allows and moto does not model (strong reads are current)."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table
        self._snapshot: dict[str, dict[str, Any]] = {}
        self.reads: list[bool] = []

    def freeze(self, *pks: str) -> None:
        for pk in pks:
            response = self._client.get_item(
                TableName=self._table, Key={"pk": {"S": pk}}, ConsistentRead=True
            )
            self._snapshot[pk] = {k: v for k, v in response.items() if k == "Item"}

    def get_item(self, **params: Any) -> dict[str, Any]:
        consistent = bool(params.get("ConsistentRead"))
        self.reads.append(consistent)
        pk = params["Key"]["pk"]["S"]
        if not consistent and pk in self._snapshot:
            return dict(self._snapshot[pk])
        response: dict[str, Any] = self._client.get_item(**params)
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_key_first_seen_is_read_eventually_consistent_at_half_a_unit(
    core_endpoint: str, core_table: str
) -> None:
    # given a key and a metered client
    clock = Clock()
    key_id, credentials = _key(core_endpoint, core_table, clock, rate_limit="100000/minute")
    meter = CapacityMeter(reader=make_client(core_endpoint), clock=clock)
    client = meter.attach(make_client(core_endpoint))
    # when three environments that never saw it admit it, twice each
    for gatekeeper in _environments(client, core_table, clock, 3):
        _admit(gatekeeper, credentials)
        _admit(gatekeeper, credentials)
    # then each first sight was one eventually consistent read (half a unit for an item under
    # 4 KB) and the second request no read at all
    reads = [r for r in meter.records if not r.is_write and r.pk == key_pk(key_id)]
    assert [r.read_units for r in reads] == [0.5, 0.5, 0.5]
    writes = [r for r in meter.records if r.is_write and r.pk == key_pk(key_id)]
    assert len(writes) == 6


def test_a_lagging_replica_never_refuses_a_new_or_rotated_key(
    core_endpoint: str, core_table: str
) -> None:
    # given a key whose item the replica has not seen yet (created a moment ago) and more
    # first sights than the guessing throttle allows failures at one key id (20 a minute)
    clock = Clock()
    key_id, credentials = _key(core_endpoint, core_table, clock, rate_limit="100000/minute")
    replica = _LaggingReplica(make_client(core_endpoint), core_table)
    replica._snapshot[key_pk(key_id)] = {}  # not replicated yet: no item
    # when 25 environments admit it for the first time
    for gatekeeper in _environments(replica, core_table, clock, 25):
        admission = _admit(gatekeeper, credentials)
    # then every one was served (the miss was read again, strongly, and counted as no guess)
    assert admission.rate_remaining == 100_000 - 25
    assert replica.reads == [False, True] * 25
    # and given the key rotated after the replica's snapshot: it still holds the old secret
    store = PrincipalStore(client=make_client(core_endpoint), table_name=core_table)
    admin = KeyAdmin(store=store, settings=settings_for(core_table), clock=clock)
    replica.freeze(key_pk(key_id))
    rotated = admin.rotate(key_id, grace="1h")
    fresh = Authenticator(settings=settings_for(core_table), token_verifier=None).read_credentials(
        {"X-API-Key": rotated["api_key"]}
    )
    # when a new environment sees the new secret first
    (gatekeeper,) = _environments(replica, core_table, clock, 1)
    replica.reads.clear()
    # then it is served after one strong read, the stale record never refusing it
    assert _admit(gatekeeper, fresh).rate_remaining == 100_000 - 26
    assert replica.reads == [False, True]


def test_a_lagging_replica_cannot_serve_a_revoked_key(core_endpoint: str, core_table: str) -> None:
    # given a key the replica still shows active after it was revoked
    clock = Clock()
    key_id, credentials = _key(core_endpoint, core_table, clock, rate_limit="100000/minute")
    replica = _LaggingReplica(make_client(core_endpoint), core_table)
    replica.freeze(key_pk(key_id))
    store = PrincipalStore(client=make_client(core_endpoint), table_name=core_table)
    KeyAdmin(store=store, settings=settings_for(core_table), clock=clock).revoke(key_id)
    # when an environment that never saw it admits it on the stale record
    (gatekeeper,) = _environments(replica, core_table, clock, 1)
    # then the counting write's condition refuses it and nothing is charged
    with pytest.raises(AuthenticationError) as refused:
        _admit(gatekeeper, credentials)
    assert refused.value.reason == "revoked"
    item = _raw(make_client(core_endpoint), core_table, key_pk(key_id))
    assert int(item.get("rows_used", {"N": "0"})["N"]) == 0
