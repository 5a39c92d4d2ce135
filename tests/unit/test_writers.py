"""Writer lanes, their stamps, the item views that plan pruning, and the shard shares.

Pure logic, no DynamoDB: what the counting write's idempotency and pruning rest on.
"""

from __future__ import annotations

import threading

from security.itemviews import ItemViews
from security.shards import fits, max_share, share
from security.writers import (
    HORIZON_SECONDS,
    PRUNE_PER_WRITE,
    PRUNE_VIEW_SECONDS,
    Lane,
    Stamp,
    WriterPool,
    new_writer_id,
)

NOW = 1_900_000_000.0


def test_a_lanes_sequence_only_grows_and_follows_the_clock() -> None:
    lane = Lane(new_writer_id())
    first = lane.next_sequence(NOW)
    assert first == int(NOW * 1000)
    # the same millisecond, or a clock that went back: still strictly above the last one
    assert lane.next_sequence(NOW) == first + 1
    assert lane.next_sequence(NOW - 5) == first + 2
    assert lane.next_sequence(NOW + 1) == first + 1000
    attr = lane.attr
    lane.redraw()
    assert lane.attr != attr and lane.attr.startswith("e_") and len(lane.attr) == 7
    assert lane.next_sequence(NOW + 1) == first + 1001  # a new id keeps the sequence


def test_concurrent_requests_hold_distinct_lanes_and_reuse_them() -> None:
    pool = WriterPool()
    held: list[str] = []
    barrier = threading.Barrier(4)

    def request() -> None:
        with pool.lane() as lane:
            held.append(lane.id)
            barrier.wait(5)  # all four in flight at once

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(set(held)) == 4  # never two requests in flight on one lane
    with pool.lane() as again:
        assert again.id in held  # reused, not a new attribute per request
    pool.reset()  # a SnapStart restore
    with pool.lane() as fresh:
        assert fresh.id not in held


def test_a_lanes_two_home_shards_are_stable_distinct_and_spread() -> None:
    lanes = [Lane(new_writer_id()) for _ in range(2000)]
    homes = [lane.homes(8) for lane in lanes]
    assert homes == [lane.homes(8) for lane in lanes]
    assert all(first != second for first, second in homes)
    counts = [sum(k in pair for pair in homes) for k in range(8)]
    assert min(counts) > 400 and max(counts) < 600  # 500 each on average
    assert {lane.homes(1) for lane in lanes} == {(0, 0)}
    assert {frozenset(lane.homes(2)) for lane in lanes} == {frozenset({0, 1})}


def test_a_stamp_tells_its_own_landed_write_from_another_lane_and_a_prune_race() -> None:
    stamp = Stamp("e_abcde", 500, prune=("e_old01",), prune_before=400)
    assert stamp.counted({"e_abcde": 500})
    assert not stamp.counted({"e_abcde": 499}) and not stamp.counted({})
    assert stamp.overtaken({"e_abcde": 501}) and not stamp.overtaken({"e_abcde": 500})
    assert stamp.prune_raced({"e_old01": 400}) and not stamp.prune_raced({"e_old01": 399})
    assert not stamp.prune_raced({})
    names: dict[str, str] = {}
    values: dict[str, object] = {}
    set_clause, conditions, removals = stamp.expression(names, values)
    assert set_clause == "#e = :seq" and removals == ["#p0"]
    assert conditions == [
        "(attribute_not_exists(#e) OR #e < :seq)",
        "(attribute_not_exists(#p0) OR #p0 < :prune_before)",
    ]
    assert names == {"#e": "e_abcde", "#p0": "e_old01"}
    assert stamp.return_values == "UPDATED_NEW"
    assert Stamp("e_abcde", 1, full=True).return_values == "ALL_NEW"


def test_views_plan_pruning_from_what_was_last_seen_whole() -> None:
    views = ItemViews()
    before = int((NOW - HORIZON_SECONDS) * 1000)
    # nothing seen: ask for the whole item, remove only the previous window
    plan = views.plan("key#a", own="e_mine1", now=NOW, window_start=600, previous="rw_540")
    assert plan.full and plan.windows == ("rw_540",) and plan.writers == ()
    stale = {f"e_old{i:02d}": before - 1 - i for i in range(PRUNE_PER_WRITE + 3)}
    item = {
        "pk": "key#a",
        "rw_480": 3,
        "rw_600": 9,
        "rw_660": 1,  # a clock ahead opened the next window: kept
        "e_live1": before + 5,
        "e_mine1": before - 10_000,  # our own attribute is never pruned
        **stale,
    }
    views.note("key#a", item, now=NOW, full=True)
    plan = views.plan("key#a", own="e_mine1", now=NOW, window_start=600, previous="rw_540")
    assert not plan.full and plan.prune_before == before
    assert plan.windows == ("rw_480", "rw_540")
    assert len(plan.writers) == PRUNE_PER_WRITE and "e_live1" not in plan.writers
    assert "e_mine1" not in plan.writers and plan.writers[0] == f"e_old{PRUNE_PER_WRITE + 2:02d}"
    # a write's UPDATED_NEW adds what it set and forgets what it removed
    views.note("key#a", {"e_mine1": before + 99, "rw_600": 10}, now=NOW, full=False,
               removed=plan.writers)  # fmt: skip
    assert set(views.writers("key#a")) == {"e_live1", "e_mine1", "e_old00", "e_old01", "e_old02"}
    assert views.counts("key#a", "rw_600").window_rows == 10
    # seen whole more than PRUNE_VIEW_SECONDS ago: other lanes may have written since (a
    # removal of one of them would fail the counting write and cost a second), so no pruning,
    # though the view still serves the windows and is not yet old enough to ask for ALL_NEW
    later = views.plan("key#a", own="e_mine1", now=NOW + PRUNE_VIEW_SECONDS + 0.5,
                       window_start=600, previous="rw_540")  # fmt: skip
    assert later.writers == () and not later.full and later.windows == ("rw_480", "rw_540")
    assert views.plan("key#a", own="e_mine1", now=NOW + PRUNE_VIEW_SECONDS, window_start=600,
                      previous="rw_540").writers  # fmt: skip
    # seen whole HORIZON_SECONDS ago: the next write asks for ALL_NEW again
    assert views.plan("key#a", own="x", now=NOW + HORIZON_SECONDS, window_start=600,
                      previous=None).full  # fmt: skip


def test_shares_add_up_to_the_limit_exactly() -> None:
    for total in (4, 7, 100, 101, 1_200_000):
        for shards in (1, 2, 3, 4, 16, 20):
            if shards > total:
                continue
            shares = [share(total, shards, k) for k in range(shards)]
            assert sum(shares) == total and max(shares) - min(shares) <= 1
            assert max(shares) == max_share(total, shards)


def test_a_batch_larger_than_the_largest_share_never_fits() -> None:
    from security.auth import Principal
    from security.settings import RateSpec

    def principal(shards: int) -> Principal:
        return Principal("key#x", "api_key", "x", None, None, frozenset(), "label",
                         RateSpec(10, 60), 7, shards=shards)  # fmt: skip

    assert fits(principal(1), 7) and not fits(principal(1), 8)  # the budget
    assert fits(principal(4), 2) and not fits(principal(4), 3)  # ceil(7/4) = 2 of the budget
    assert fits(principal(2), 4) and not fits(principal(2), 5)  # ceil(7/2) = 4


def test_the_horizon_outlasts_twice_any_retry_of_the_counting_client() -> None:
    # A retry is botocore resending the request within the counting client's retry budget: its
    # attempts' connect and read timeouts and the standard mode's backoffs (at most 2^(n-1) s
    # before attempt n + 1, capped at 20 s). A lane's attribute must outlive the latest retry.
    from security.wiring import DYNAMODB_FAST

    retries = DYNAMODB_FAST.retries or {}
    assert retries["mode"] == "standard"
    attempts = int(retries["total_max_attempts"])
    timeouts = float(DYNAMODB_FAST.connect_timeout) + float(DYNAMODB_FAST.read_timeout)
    backoffs = sum(min(2.0 ** (n - 1), 20.0) for n in range(1, attempts))
    span = attempts * timeouts + backoffs
    assert span == 12.0
    assert 2 * span <= HORIZON_SECONDS
