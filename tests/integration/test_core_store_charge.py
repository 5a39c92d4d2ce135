"""PrincipalStore.charge's returned item and its stamp: what the write updated, nothing more.

The counting write returns ``UPDATED_NEW`` (the counters for the ``RateLimit`` headers, the
lane's sequence), never the whole item, unless its stamp asks for ``ALL_NEW``; on a failed
condition ``ALL_OLD`` is the whole item, which is how a retried write is told from a refusal.
"""

from __future__ import annotations

import uuid

from coresupport import make_client

from security.store import ChargeRequest, PrincipalStore
from security.writers import Stamp

NOW = 1_900_001_030
WINDOW = f"rw_{NOW - NOW % 60}"


def _request(pk: str, stamp: Stamp, *, stale: tuple[str, ...] = ()) -> ChargeRequest:
    return ChargeRequest(
        pk=pk,
        kind="jwt",
        rows=2,
        now=NOW,
        window_start=NOW - NOW % 60,
        rate_left=1000,
        budget_left=None,
        stamp=stamp,
        stale_attrs=stale,
        subject="subject-1",
        issuer="https://issuer.example",
    )


def test_successful_charge_returns_only_what_it_updated(
    core_endpoint: str, core_table: str
) -> None:
    # given a subject charged three times by one lane (three sequences)
    store = PrincipalStore(client=make_client(core_endpoint), table_name=core_table)
    pk = f"sub#{uuid.uuid4().hex[:12]}#subject-1"
    outcomes = [store.charge(_request(pk, Stamp("e_lane1", seq))) for seq in (10, 11, 12)]
    # then every write succeeded and reports the counters it changed
    assert all(outcome.ok and not outcome.full for outcome in outcomes)
    item = outcomes[-1].item
    assert item is not None
    assert item["rows_used"] == 6 and item["requests"] == 3 and item[WINDOW] == 6
    assert item["e_lane1"] == 12
    # and nothing it did not update (UPDATED_NEW): no key, no creation time kept by if_not_exists
    assert "pk" not in item and "secret_hash" not in item
    # and the item holds one number for the lane, not one entry per request
    stored = store.get(pk)
    assert stored is not None and stored["e_lane1"] == 12
    assert not [name for name in stored if name.startswith("rq_")]


def test_a_stamp_asking_for_the_whole_item_gets_it(core_endpoint: str, core_table: str) -> None:
    store = PrincipalStore(client=make_client(core_endpoint), table_name=core_table)
    pk = f"sub#{uuid.uuid4().hex[:12]}#subject-1"
    outcome = store.charge(_request(pk, Stamp("e_lane1", 1, full=True)))
    assert outcome.ok and outcome.full and outcome.item is not None
    assert outcome.item["pk"] == pk and outcome.item["subject"] == "subject-1"


def test_a_retried_write_fails_with_its_sequence_in_all_old(
    core_endpoint: str, core_table: str
) -> None:
    # given a subject charged by two lanes
    store = PrincipalStore(client=make_client(core_endpoint), table_name=core_table)
    pk = f"sub#{uuid.uuid4().hex[:12]}#subject-1"
    first = Stamp("e_lane1", 100)
    assert store.charge(_request(pk, first)).ok
    assert store.charge(_request(pk, Stamp("e_lane2", 50))).ok
    # when the first write is sent again (an SDK retry resends the identical request)
    retry = store.charge(_request(pk, first))
    # then the condition fails, nothing is counted, and ALL_OLD shows the lane at that sequence
    assert not retry.ok and retry.item is not None
    assert first.counted(retry.item) and not first.overtaken(retry.item)
    assert retry.item["rows_used"] == 4
    # and the lane's next write (a higher sequence) counts
    assert store.charge(_request(pk, Stamp("e_lane1", 101))).ok


def test_stale_lanes_are_pruned_only_while_still_stale(core_endpoint: str, core_table: str) -> None:
    # given a subject with two other lanes, one idle (sequence 5) and one that just wrote (900)
    store = PrincipalStore(client=make_client(core_endpoint), table_name=core_table)
    pk = f"sub#{uuid.uuid4().hex[:12]}#subject-1"
    assert store.charge(_request(pk, Stamp("e_idle", 5))).ok
    assert store.charge(_request(pk, Stamp("e_busy", 900))).ok
    # when a write prunes both as older than 800 (its view of e_busy was out of date)
    racing = Stamp("e_mine", 1000, prune=("e_idle", "e_busy"), prune_before=800)
    refused = store.charge(_request(pk, racing))
    # then it is refused (e_busy is not stale any more), and ALL_OLD says so
    assert not refused.ok and refused.item is not None and racing.prune_raced(refused.item)
    # and a write pruning only what is stale removes it, and keeps the live lane
    pruned = store.charge(_request(pk, Stamp("e_mine", 1001, prune=("e_idle",), prune_before=800)))
    assert pruned.ok
    stored = store.get(pk)
    assert stored is not None and "e_idle" not in stored
    assert stored["e_busy"] == 900 and stored["e_mine"] == 1001 and stored["rows_used"] == 6
