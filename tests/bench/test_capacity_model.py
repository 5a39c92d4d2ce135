"""The DynamoDB capacity model (``mlmoat bench --capacity``): its rules, its meter, its replay.

(a) the size and unit rules against items computed by hand; (b) the meter, attached to a client
of the session's moto server, on real calls, agreeing with those rules; (c) the replay of one
key at a simulated 100 requests/s through the real prediction app and monitor, whose counter
write units are checked against the sizes the meter observed; one write unit per prediction on
the counter at every simulated rate; and one sharded key at a simulated 10,000 requests/s with
no item above the partition's 1,000 write units a second. (d) the monitor's bound: at most one
write unit and one read unit per prediction, amortised, at 100 requests/s and at 1,000 rows/s
from one principal, every row monitored.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from mlmoat.bench.capacity import CallRecord, CapacityMeter, peak
from mlmoat.bench.capacity_report import lanes_under_1_kb, summarise
from mlmoat.bench.itemsize import (
    ITEM_LIMIT_BYTES,
    KB,
    PARTITION_WRITE_UNITS_PER_SECOND,
    ItemTooLargeError,
    item_size,
    number_size,
    read_units,
    value_size,
    write_units,
)
from mlmoat.bench.replay import START, CapacityReplay, CounterItem, Scenario, ScenarioResult

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ (a) the rules, by hand
@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 2),  # zero: one significant digit
        ("7", 2),
        ("123", 3),  # ceil(3 / 2) + 1
        ("1234", 3),
        ("1000", 2),  # trailing zeros trimmed: one digit
        ("0.0012300", 3),  # leading and trailing zeros trimmed: 123
        ("-12.5", 3),  # sign and point dropped: 125
        ("1E+3", 2),
        ("1800000017", 6),  # 10 digits
        ("9" * 38, 20),  # DynamoDB's 38 digits
        ("9" * 41, 21),  # capped
    ],
)
def test_number_size_counts_significant_digits(text: str, size: int) -> None:
    assert number_size(text) == size


def test_value_sizes_of_each_type_by_hand() -> None:
    assert value_size({"S": "héllo"}) == 6  # UTF-8 bytes, not characters
    assert value_size({"S": ""}) == 0
    assert value_size({"B": b"\x00\x01\x02"}) == 3
    assert value_size({"B": "AAEC"}) == 3  # base64 text counts the bytes it encodes
    assert value_size({"BOOL": True}) == 1
    assert value_size({"NULL": True}) == 1
    assert value_size({"SS": ["ab", "cde"]}) == 5
    assert value_size({"NS": ["1", "22", "333"]}) == 2 + 2 + 3
    assert value_size({"BS": [b"ab", b"c"]}) == 3
    # a list: 3 bytes + each element + 1 byte each
    assert value_size({"L": [{"S": "ab"}, {"N": "1"}]}) == 3 + (1 + 2) + (1 + 2)
    assert value_size({"L": []}) == 3
    # a map: 3 bytes + each element's name and value + 1 byte each
    assert value_size({"M": {"a": {"S": "xy"}, "bb": {"BOOL": False}}}) == 3 + 4 + 4
    nested = {"M": {"l": {"L": [{"M": {}}]}}}
    assert value_size(nested) == 3 + (1 + 1 + (3 + (1 + 3)))
    with pytest.raises(ValueError, match="unknown DynamoDB type"):
        value_size({"X": "?"})


def test_item_size_sums_names_and_values() -> None:
    item = {
        "pk": {"S": "key#abcdefghijkl"},  # 2 + 16
        "rows_used": {"N": "153"},  # 9 + 3
        "rq_60000000": {"SS": ["a" * 12, "b" * 12]},  # 11 + 24
        "flags": {"M": {"x": {"NULL": True}}},  # 5 + 3 + (1 + 1 + 1)
    }
    assert item_size(item) == 18 + 12 + 35 + 11
    assert item_size(None) == 0 and item_size({}) == 0


def test_write_units_round_up_per_kb_of_the_larger_size() -> None:
    assert write_units(0, 0) == 1  # at least one (a failed condition on no item)
    assert write_units(0, 1024) == 1
    assert write_units(0, 1025) == 2
    assert write_units(3000, 100) == 3  # the larger of before and after: a shrinking write
    assert write_units(500, 500) == 1  # a failed condition: the existing item's size
    assert write_units(0, 1500, transactional=True) == 4  # 2 x 2
    assert write_units(ITEM_LIMIT_BYTES, ITEM_LIMIT_BYTES) == 400


def test_read_units_round_up_per_4kb_and_halve_when_eventually_consistent() -> None:
    assert read_units(0, consistent=True) == 1.0  # at least one (an item that is not there)
    assert read_units(4096, consistent=True) == 1.0
    assert read_units(4097, consistent=True) == 2.0
    assert read_units(4097, consistent=False) == 1.0
    assert read_units(100, consistent=False) == 0.5
    assert read_units(5000, consistent=True, transactional=True) == 4.0


def _record(pk: str, at: float, wcu: float = 0.0, rcu: float = 0.0) -> CallRecord:
    return CallRecord(1, "UpdateItem", "t", pk, 0, 0, wcu, rcu, False, None, 0.0, at)


def test_peak_takes_the_hottest_whole_second_of_the_hottest_item() -> None:
    records = [_record("a", START + 0.1, wcu=300), _record("a", START + 0.9, wcu=800)]
    records += [_record("a", START + 1.5, wcu=200), _record("b", START + 1.2, wcu=950)]
    records += [_record("a", START + 2.5, wcu=5000)]  # outside the window: counts nowhere
    hottest = peak(records, start=START, end=START + 2, kind="write")
    assert (hottest.pk, hottest.units_per_second, hottest.limit) == ("a", 1100.0, 1000)
    assert hottest.share == pytest.approx(1.1)
    table = peak(records, start=START, end=START + 2, kind="write", group=lambda pk: "t")
    assert table.units_per_second == 1150.0  # second 1: 200 + 950
    assert peak(records, start=START, end=START + 2, kind="read").units_per_second == 0.0


def test_peak_of_a_sub_second_window_stands_for_its_rate() -> None:
    records = [_record("a", START + i / 1000, wcu=2) for i in range(50)]  # 50 ms at 1,000/s
    assert peak(records, start=START, end=START + 0.05, kind="write").units_per_second == (
        pytest.approx(2000)
    )
    # 50 keys sending once each in 5 ms at one request per second each: 2 WCU/s per item
    many = [_record(f"k{i}", START + i / 10_000, wcu=2) for i in range(50)]
    assert peak(many, start=START, end=START + 0.005, kind="write", span=1.0).units_per_second == 2
    with pytest.raises(ValueError, match="kind"):
        peak(records, start=START, end=START + 1, kind="both")


def test_lanes_under_1_kb_follow_the_measured_item() -> None:
    # 300 bytes of other attributes and 10 lanes of 15 bytes: (1,024 - 300) / 15 = 48 lanes
    item = CounterItem("key#x", size=300 + 150, lanes=10, lane_bytes=150, window_attrs=())
    projected = lanes_under_1_kb(item)
    assert projected is not None
    assert projected["bytes_per_lane"] == 15.0 and projected["other_bytes"] == 300
    assert projected["lanes_under_1_kb"] == 48
    assert write_units(300 + 48 * 15, 300 + 48 * 15) == 1.0
    assert write_units(300 + 49 * 15, 300 + 49 * 15) == 2.0
    empty = CounterItem("key#y", size=300, lanes=0, lane_bytes=0, window_attrs=())
    assert lanes_under_1_kb(empty) is None


# ------------------------------------------------------------------ (b) the meter, real calls
@pytest.fixture()
def metered(
    moto_server: Any, create_security_table: Callable[..., str]
) -> Iterator[tuple[Any, CapacityMeter, str]]:
    from mlmoat.local.awsenv import dynamodb_client

    plain = dynamodb_client(moto_server.endpoint, "us-east-1")
    table = create_security_table(plain, f"cap-{uuid.uuid4().hex[:12]}", ttl=False)
    meter = CapacityMeter(reader=plain, clock=lambda: START)
    client = meter.attach(dynamodb_client(moto_server.endpoint, "us-east-1"))
    yield client, meter, table
    plain.delete_table(TableName=table)


def _only(meter: CapacityMeter) -> CallRecord:
    assert len(meter.records) == 1, meter.records
    record = meter.records[0]
    meter.clear()
    return record


def test_meter_charges_writes_on_the_item_before_and_after(
    metered: tuple[Any, CapacityMeter, str],
) -> None:
    client, meter, table = metered
    item = {"pk": {"S": "key#a"}, "blob": {"S": "x" * 900}}
    client.put_item(TableName=table, Item=item)
    put = _only(meter)
    assert (put.operation, put.pk, put.size_before, put.size_after) == ("PutItem", "key#a", 0, 911)
    assert (put.write_units, put.read_units, put.simulated) == (1.0, 0.0, START)
    client.update_item(
        TableName=table,
        Key={"pk": {"S": "key#a"}},
        UpdateExpression="SET more = :m",
        ExpressionAttributeValues={":m": {"S": "y" * 200}},
    )
    grown = _only(meter)
    assert (grown.size_before, grown.size_after, grown.write_units) == (911, 911 + 4 + 200, 2.0)
    client.update_item(  # shrinking: charged on the larger item before it
        TableName=table, Key={"pk": {"S": "key#a"}}, UpdateExpression="REMOVE more"
    )
    shrunk = _only(meter)
    assert (shrunk.size_before, shrunk.size_after, shrunk.write_units) == (1115, 911, 2.0)
    client.delete_item(TableName=table, Key={"pk": {"S": "key#a"}})
    deleted = _only(meter)
    assert (deleted.size_before, deleted.size_after, deleted.write_units) == (911, 0, 1.0)


def test_meter_charges_a_failed_condition_on_the_existing_item(
    metered: tuple[Any, CapacityMeter, str],
) -> None:
    client, meter, table = metered
    client.put_item(TableName=table, Item={"pk": {"S": "key#c"}, "v": {"S": "z" * 3000}})
    meter.clear()
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):
        client.update_item(
            TableName=table,
            Key={"pk": {"S": "key#c"}},
            UpdateExpression="SET v = :v",
            ConditionExpression="attribute_not_exists(pk)",
            ExpressionAttributeValues={":v": {"S": "w"}},
        )
    failed = _only(meter)
    assert failed.condition_failed and failed.error == "ConditionalCheckFailedException"
    assert (failed.size_before, failed.size_after) == (3008, 3008)  # nothing written
    assert failed.write_units == 3.0  # ceil(3,008 / 1,024), charged all the same


def test_meter_reads_strong_eventual_projected_and_batched(
    metered: tuple[Any, CapacityMeter, str],
) -> None:
    client, meter, table = metered
    for pk in ("key#r1", "key#r2"):
        client.put_item(TableName=table, Item={"pk": {"S": pk}, "v": {"S": "q" * 5000}})
    meter.clear()  # each item: 2 + 6 + 1 + 5,000 = 5,009 bytes
    client.get_item(TableName=table, Key={"pk": {"S": "key#r1"}}, ConsistentRead=True)
    strong = _only(meter)
    assert (strong.size_after, strong.read_units, strong.write_units) == (5009, 2.0, 0.0)
    client.get_item(TableName=table, Key={"pk": {"S": "key#r1"}})
    assert _only(meter).read_units == 1.0  # eventually consistent: half
    client.get_item(  # a projection returns less but reads (and costs) the whole item
        TableName=table, Key={"pk": {"S": "key#r1"}}, ProjectionExpression="pk", ConsistentRead=True
    )
    assert _only(meter).size_after == 5009
    client.get_item(TableName=table, Key={"pk": {"S": "key#none"}}, ConsistentRead=True)
    assert _only(meter).read_units == 1.0  # an absent item costs the minimum
    client.batch_get_item(
        RequestItems={
            table: {
                "Keys": [{"pk": {"S": "key#r1"}}, {"pk": {"S": "key#r2"}}],
                "ConsistentRead": True,
            }
        }
    )
    batch = list(meter.records)
    assert sorted(r.pk for r in batch) == ["key#r1", "key#r2"]
    assert [r.read_units for r in batch] == [2.0, 2.0]  # each item rounded on its own


def test_meter_query_sums_sizes_before_rounding(moto_server: Any) -> None:
    from mlmoat.local.awsenv import dynamodb_client

    plain = dynamodb_client(moto_server.endpoint, "us-east-1")
    table = f"cap-q-{uuid.uuid4().hex[:8]}"
    plain.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    try:
        meter = CapacityMeter(reader=plain)
        client = meter.attach(dynamodb_client(moto_server.endpoint, "us-east-1"))
        for sk in ("a", "b", "c"):  # 2 + 1 + 2 + 1 + 1 + 1,993 = 2,000 bytes each
            client.put_item(
                TableName=table,
                Item={"pk": {"S": "p"}, "sk": {"S": sk}, "v": {"S": "d" * 1993}},
            )
        assert [r.write_units for r in meter.records] == [2.0, 2.0, 2.0]
        meter.clear()
        query = {
            "TableName": table,
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "p"}},
        }
        client.query(**query, ConsistentRead=True)
        summed = _only(meter)
        # 6,000 bytes summed, then rounded: 2 units (3 if each item were rounded)
        assert (summed.pk, summed.size_after, summed.read_units) == ("p", 6000, 2.0)
        client.query(**query)
        assert _only(meter).read_units == 1.0
        # a filter that keeps one item still reads (and costs) all three
        filtered = {**query, "ExpressionAttributeValues": {":p": {"S": "p"}, ":s": {"S": "a"}}}
        response = client.query(**filtered, FilterExpression="sk = :s", ConsistentRead=True)
        assert len(response["Items"]) == 1
        assert _only(meter).size_after == 6000
    finally:
        plain.delete_table(TableName=table)


def test_meter_doubles_transactions_and_charges_batch_writes_per_item(
    metered: tuple[Any, CapacityMeter, str],
) -> None:
    client, meter, table = metered
    big = {"pk": {"S": "key#t"}, "v": {"S": "t" * 1500}}  # 1,508 bytes: 2 units, x2
    client.transact_write_items(TransactItems=[{"Put": {"TableName": table, "Item": big}}])
    transact = _only(meter)
    assert (transact.operation, transact.write_units) == ("TransactWriteItems", 4.0)
    client.batch_write_item(
        RequestItems={
            table: [
                {"PutRequest": {"Item": {"pk": {"S": "key#b1"}, "v": {"S": "s" * 2000}}}},
                {"DeleteRequest": {"Key": {"pk": {"S": "key#t"}}}},
            ]
        }
    )
    units = {r.pk: r.write_units for r in meter.records}
    assert units == {"key#b1": 2.0, "key#t": 2.0}
    assert len({r.call for r in meter.records}) == 1  # one call, two items


def test_meter_refuses_an_item_over_400_kb(
    moto_server: Any, metered: tuple[Any, CapacityMeter, str]
) -> None:
    from mlmoat.local.awsenv import dynamodb_client

    client, meter, table = metered
    huge = {"pk": {"S": "key#h"}, "v": {"S": "h" * ITEM_LIMIT_BYTES}}
    strict = CapacityMeter(reader=dynamodb_client(moto_server.endpoint, "us-east-1"), strict=True)
    strict_client = strict.attach(dynamodb_client(moto_server.endpoint, "us-east-1"))
    with pytest.raises(ItemTooLargeError) as raised:
        strict_client.put_item(TableName=table, Item=huge)
    assert raised.value.size == ITEM_LIMIT_BYTES + 8 and strict.violations[0].pk == "key#h"
    assert "Item" not in client.get_item(TableName=table, Key={"pk": {"S": "key#h"}})
    # not strict: recorded; the server (moto refuses past ~405,000 of its bytes) refuses too
    client.put_item(TableName=table, Item={"pk": {"S": "key#h"}, "v": {"S": "h" * 300_000}})
    meter.clear()
    with pytest.raises(ClientError, match="maximum allowed size"):
        client.update_item(
            TableName=table,
            Key={"pk": {"S": "key#h"}},
            UpdateExpression="SET w = :w",
            ExpressionAttributeValues={":w": {"S": "h" * 150_000}},
        )
    (violation,) = meter.violations
    assert (violation.pk, violation.size, violation.operation) == ("key#h", None, "UpdateItem")
    refused = _only(meter)
    assert refused.error == "ValidationException" and refused.write_units == 0.0


# ------------------------------------------------------------------ (c) the replay at 100/s
@pytest.fixture(scope="module")
def replay_100(moto_server: Any) -> ScenarioResult:
    if not (REPO / "models" / "iris" / "manifest.json").is_file():
        pytest.skip("models/ not trained yet (mlmoat train)")
    replay = CapacityReplay(REPO, moto_server.endpoint)
    return replay.run(Scenario("1 key x 100/s", keys=1, rate_per_key=100.0, seconds=1.5))


def test_replay_counter_units_are_the_models_of_the_sizes_it_observed(
    replay_100: ScenarioResult,
) -> None:
    result = replay_100
    assert result.statuses == {200: 150} and result.monitor_failures == 0
    assert not result.violations
    (pk,) = result.key_pks
    counter = [r for r in result.records if r.pk == pk]
    writes = [r for r in counter if r.is_write]
    # 100/s at 25 ms an invocation: 3 environments, each reading the key once (a cold cache)
    assert result.environments == 3
    assert [r.operation for r in counter if not r.is_write] == ["GetItem"] * 3
    assert len(writes) == 150 and {r.operation for r in writes} == {"UpdateItem"}
    # the simulated clock drove the gatekeeper: 1.5 s at 100/s, one rate window
    assert [r.simulated for r in writes] == pytest.approx([START + i / 100 for i in range(150)])
    (item,) = result.counter_items
    assert item.window_attrs == (f"rw_{int(START)}",)
    # the meter's reads around the writes saw one item evolving, as the final read sees it
    for earlier, later in zip(writes, writes[1:], strict=False):
        assert later.size_before == earlier.size_after
    assert writes[-1].size_after == item.size and item.lanes == 3
    # and it does not grow with the requests: one lane per environment, not one entry per
    # request (147 more requests once the 3 lanes exist; the replaced design's digests grew the
    # item 12 bytes a request: 1,764 bytes); only numbers gain a digit now and then
    sizes = [r.size_after for r in writes[2:]]
    assert max(sizes) - min(sizes) <= 24 and max(sizes) < 400
    # every counter write is charged what the model computes from the sizes observed ...
    expected = [write_units(r.size_before, r.size_after) for r in writes]
    assert [r.write_units for r in writes] == expected
    # ... and the report's figure per prediction is their mean
    summary = summarise(result)
    assert summary["counter"]["write_units"] == pytest.approx(sum(expected) / 150)
    # the monitor consumed every message, dealt at random to the event source's 5 pollers, each
    # batching its own (100 messages or a 20 s window: neither within 1.5 s, so one batch each
    # at the end) and invoking its own monitor environment: one state read and one state write
    # per batch (each holds over 8 of the principal's messages: written at once), not per
    # prediction
    assert result.pollers == 5 and len(result.monitor_batches) == 5
    assert sum(result.monitor_batches) == 150 and min(result.monitor_batches) >= 8
    assert result.rows_monitored == 150
    assert result.queue_calls == 15  # the predict path's SendMessageBatch: 10 requests a call
    monitor = [r for r in result.records if r.pk.startswith("mon#")]
    assert sum(r.is_write for r in monitor) == 5 and len(monitor) == 10


@pytest.fixture(scope="module")
def replay(moto_server: Any) -> CapacityReplay:
    if not (REPO / "models" / "iris" / "manifest.json").is_file():
        pytest.skip("models/ not trained yet (mlmoat train)")
    return CapacityReplay(REPO, moto_server.endpoint)


@pytest.fixture(scope="module")
def replay_10000_sharded(replay: CapacityReplay) -> ScenarioResult:
    # 10,000/s at 25 ms an invocation: 250 environments; 500 requests (each environment twice)
    scenario = Scenario("1 key (20 shards) x 10,000/s", 1, 10_000.0, 0.05, shards=20, monitor=False)
    return replay.run(scenario)


def test_replay_counter_costs_one_write_unit_per_prediction_at_every_rate(
    replay: CapacityReplay, replay_100: ScenarioResult, replay_10000_sharded: ScenarioResult
) -> None:
    # One key at 1, 10, 100 and 1,000 requests/s (1, 1, 3 and 25 environments), and a sharded
    # key at 10,000/s (250): the counting write costs one unit per prediction whatever the rate.
    # (The design this replaced added a 12-byte digest per request to the key's item: 1.07 units
    # per prediction at 1/s, 4.36 at 10/s, 12.55 at 100/s, the item reaching 400 KB at ~570/s.)
    results = [
        replay.run(Scenario("1 key x 1/s", 1, 1.0, 40.0, monitor=False)),
        replay.run(Scenario("1 key x 10/s", 1, 10.0, 4.0, monitor=False)),
        replay_100,
        replay.run(Scenario("1 key x 1,000/s", 1, 1_000.0, 0.1, monitor=False)),
        replay_10000_sharded,
    ]
    for result in results:
        summary = summarise(result)
        label = summary["scenario"]
        assert summary["allowed"] == summary["requests"], label
        writes = [r for r in result.records if r.is_write and r.pk in result.key_pks]
        assert len(writes) == summary["allowed"], label  # one counting write per prediction
        assert {r.write_units for r in writes} == {1.0}, label
        assert summary["counter"]["write_units"] == 1.0, label
        assert max(item.size for item in result.counter_items) < KB, label


def test_replay_one_sharded_key_sustains_10000_requests_per_second(
    replay_10000_sharded: ScenarioResult,
) -> None:
    result = replay_10000_sharded
    summary = summarise(result)
    assert result.statuses == {200: 500} and result.environments == 250
    # the key's item is the authority, read once per environment, never written by a request
    (key,) = {pk for pk in result.key_pks if "#s" not in pk}
    key_records = [r for r in result.records if r.pk == key]
    assert {r.operation for r in key_records} == {"GetItem"} and len(key_records) == 250
    # the counting goes to the 20 shards, each within its partition's limit with room to spare
    # (the whole key writes 10,000 units a second: on one item, ten times the limit)
    shards = {r.pk for r in result.records if r.is_write}
    assert len(shards) == 20 and all(pk.startswith(key + "#s") for pk in shards)
    hottest = summary["counter"]["hottest_write"]
    assert hottest["units_per_second"] < PARTITION_WRITE_UNITS_PER_SECOND
    assert hottest["share_of_limit"] < 0.8
    table = summary["table"]["write_units_per_second"]
    assert table == pytest.approx(10_000, rel=0.01)
    # and every shard item stays under 1 KB: one write unit per prediction
    assert len(result.counter_items) == 20
    assert max(item.size for item in result.counter_items) < KB
    assert not result.violations


# ------------------------------------------------------------------ (d) the monitor's bound
@pytest.fixture(scope="module")
def monitor_replays(moto_server: Any) -> dict[str, ScenarioResult]:
    if not (REPO / "models" / "iris" / "manifest.json").is_file():
        pytest.skip("models/ not trained yet (mlmoat train)")
    replay = CapacityReplay(REPO, moto_server.endpoint)
    return {
        # past the state's plateau: 300 rows fill the detectors' windows and PRADA's sets
        "100 requests/s": replay.run(Scenario("1 key x 100/s", 1, 100.0, seconds=3.0)),
        "1,000 rows/s": replay.run(
            Scenario("1 key x 100/s x 10 rows", 1, 100.0, seconds=2.0, rows_per_request=10)
        ),
    }


@pytest.mark.parametrize("name", ["100 requests/s", "1,000 rows/s"])
def test_the_monitor_costs_at_most_one_write_and_one_read_unit_per_prediction(
    monitor_replays: dict[str, ScenarioResult], name: str
) -> None:
    result = monitor_replays[name]
    scenario = result.scenario
    assert result.statuses == {200: scenario.requests} and not result.violations
    # every served row reached the monitor's state (the sink's buffer, the event source's
    # batches and the grouped state writes lose nothing)
    assert result.monitor_failures == 0
    assert result.rows_monitored == scenario.requests * scenario.rows_per_request
    monitor = summarise(result)["monitor"]
    # amortised per allowed prediction: the bound, 1 write unit and 1 read unit
    assert monitor["write_units"] <= 1.0, monitor
    assert monitor["read_units"] <= 1.0, monitor
    # and the principal's one monitor item stays far from the partition's 1,000 WCU/s
    assert monitor["hottest_write"]["share_of_limit"] < 0.1, monitor["hottest_write"]
    # because its state is read and written once per batch and stays within one read unit
    writes = [r for r in result.records if r.pk.startswith("mon#") and r.is_write]
    assert len(writes) == len(result.monitor_batches) < scenario.requests
    assert max(r.size_after for r in writes) <= 4096
