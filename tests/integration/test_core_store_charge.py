"""PrincipalStore.charge's returned item: counters in full, request-id digests only on a failure.

The ``rq_*`` sets hold every request-id digest of the live idempotency buckets, so they grow with
the key's request rate; after a successful write only their names are needed (stale buckets are
removed by name), and on a failed condition ALL_OLD must carry them in full to tell a retry.
"""

from __future__ import annotations

import uuid

from coresupport import make_client

from security.store import ChargeRequest, PrincipalStore

NOW = 1_900_001_030
BUCKET = NOW // 30


def _request(pk: str, digest: str, *, stale: tuple[str, ...] = ()) -> ChargeRequest:
    return ChargeRequest(
        pk=pk,
        kind="jwt",
        rows=2,
        now=NOW,
        rate_attr=f"rw_{NOW - NOW % 60}",
        rate_left=1000,
        budget_left=None,
        request_attr=f"rq_{BUCKET}",
        previous_request_attr=f"rq_{BUCKET - 1}",
        request_digest=digest,
        stale_attrs=stale,
        subject="subject-1",
        issuer="https://issuer.example",
    )


def test_successful_charge_returns_counters_and_digest_sets_by_name_only(
    core_endpoint: str, core_table: str
) -> None:
    # given a subject charged three times (three distinct request ids)
    store = PrincipalStore(client=make_client(core_endpoint), table_name=core_table)
    pk = f"sub#{uuid.uuid4().hex[:12]}#subject-1"
    digests = [uuid.uuid4().hex[:12] for _ in range(3)]
    outcomes = [store.charge(_request(pk, digest)) for digest in digests]
    # then every write succeeded and reports the counters in full
    assert all(outcome.ok for outcome in outcomes)
    item = outcomes[-1].item
    assert item is not None
    assert item["rows_used"] == 6 and item["requests"] == 3
    assert item[f"rw_{NOW - NOW % 60}"] == 6
    # and the digest set is present by name (for stale-bucket removal) but not deserialised
    assert f"rq_{BUCKET}" in item and item[f"rq_{BUCKET}"] is None
    # and what is stored is every digest (the write itself is unchanged)
    stored = store.get(pk)
    assert stored is not None and stored[f"rq_{BUCKET}"] == set(digests)


def test_a_retried_request_fails_with_the_digests_in_full(
    core_endpoint: str, core_table: str
) -> None:
    # given a subject charged twice
    store = PrincipalStore(client=make_client(core_endpoint), table_name=core_table)
    pk = f"sub#{uuid.uuid4().hex[:12]}#subject-1"
    first, second = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    assert store.charge(_request(pk, first)).ok and store.charge(_request(pk, second)).ok
    # when the first request is retried (same digest)
    retry = store.charge(_request(pk, first))
    # then the condition fails, nothing is counted, and ALL_OLD carries the digests to tell why
    assert not retry.ok and retry.item is not None
    assert retry.item[f"rq_{BUCKET}"] == {first, second}
    assert retry.item["rows_used"] == 4
