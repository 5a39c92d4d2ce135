"""DynamoDB faults injected under the real function, end to end through ``start-api``.

Each test sends real HTTP requests to ``PredictFunction`` (served by ``mlmoat local start-api``)
whose DynamoDB endpoint is the fault proxy, and judges the outcome from three records that do
not depend on the fault: the HTTP response, the function's audit record, and the key's counters
read straight from the moto server behind the proxy. The invariants, for every fault:

* the documented status (503 with ``Retry-After``, the generic error envelope, no prediction);
* never an uncounted prediction: a 200 always has its rows in ``rows_used``;
* never a double count: a request's rows are in ``rows_used`` at most once, SDK retries included;
* never a lost audit record: exactly one record per request, carrying its ``X-Request-Id``.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from faultstack import Api, FaultStack, Response

from mlmoat.local.stack import table_name
from security.store import PrincipalStore

ROW = {"features": [5.1, 3.5, 1.4, 0.2]}
BATCH = {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]}


@pytest.fixture(scope="module")
def api(fault_stack: FaultStack) -> Api:
    return fault_stack.start_api("dynamodb-faults")


@pytest.fixture(autouse=True)
def clean_proxy(fault_stack: FaultStack):
    fault_stack.proxy.clear()
    fault_stack.proxy.reset_log()
    yield
    fault_stack.proxy.clear()
    if fault_stack.proxy._listener is None:  # a test stopped listening: reopen for the next
        fault_stack.proxy.start_listening()


def _key(stack: FaultStack, **limits) -> tuple[str, str]:
    return stack.create_key(f"fault-{uuid.uuid4().hex[:10]}", **limits)


def _warm(api: Api, stack: FaultStack, api_key: str, key_id: str) -> int:
    """One clean request so the instance has the key cached; returns rows_used after it."""
    response = api.post(ROW, api_key=api_key)
    assert response.status == 200, response.body
    return stack.rows_used(key_id)


def _assert_one_audit_record(api: Api, response: Response, *, status: int, key_id: str) -> dict:
    records = api.audit_for(response.request_id)
    assert len(records) == 1, records
    record = records[0]
    assert record["status"] == status
    assert record["decision"] == ("allow" if status == 200 else "deny")
    assert record.get("key_id") == key_id
    return record


def _assert_fail_closed(api: Api, response: Response, *, key_id: str) -> dict:
    assert response.status == 503, response.body
    assert int(response.headers["retry-after"]) >= 1
    body = response.json
    assert set(body) == {"error"}
    assert set(body["error"]) >= {"code", "message", "request_id"}
    assert body["error"]["request_id"] == response.request_id
    assert "predictions" not in response.body.decode()
    for secret_word in ("Traceback", "botocore", "DynamoDB", "Throughput", "127.0.0.1"):
        assert secret_word not in response.body.decode()
    record = _assert_one_audit_record(api, response, status=503, key_id=key_id)
    assert record["reason"] in ("store_unavailable", "dependency_unavailable")
    return record


def test_baseline_each_request_is_counted_once_and_audited_once(
    api: Api, fault_stack: FaultStack
) -> None:
    # given a fresh key and a proxy that forwards everything
    key_id, api_key = _key(fault_stack)
    # when a single row and a batch of three are predicted
    first = api.post(ROW, api_key=api_key)
    second = api.post(BATCH, api_key=api_key)
    # then both are served, counted exactly (1 + 3 rows, 2 requests) and audited once each
    assert (first.status, second.status) == (200, 200)
    item = fault_stack.key_item(key_id)
    assert (int(item["rows_used"]), int(item["requests"])) == (4, 2)
    _assert_one_audit_record(api, first, status=200, key_id=key_id)
    assert _assert_one_audit_record(api, second, status=200, key_id=key_id)["rows"] == 3


def test_throttling_on_every_attempt_fails_closed_and_counts_nothing(
    api: Api, fault_stack: FaultStack
) -> None:
    # given a warm key, and DynamoDB answering every counting write with
    # ProvisionedThroughputExceededException (its own 400 JSON error)
    key_id, api_key = _key(fault_stack)
    before = _warm(api, fault_stack, api_key, key_id)
    fault_stack.proxy.reset_log()
    fault_stack.proxy.set_fault("throttle", operations={"UpdateItem"}, pk_prefix="key#")
    # when a prediction is requested
    response = api.post(ROW, api_key=api_key)
    # then 503 with Retry-After, the SDK retried (more than one attempt), nothing was counted
    _assert_fail_closed(api, response, key_id=key_id)
    assert fault_stack.proxy.count("UpdateItem", "throttled", pk=f"key#{key_id}") >= 2
    assert fault_stack.proxy.count("UpdateItem", "forwarded", pk=f"key#{key_id}") == 0
    assert fault_stack.rows_used(key_id) == before


def test_one_throttled_attempt_is_retried_and_counted_exactly_once(
    api: Api, fault_stack: FaultStack
) -> None:
    # given a warm key and one throttled counting write, then a healthy table
    key_id, api_key = _key(fault_stack)
    before = _warm(api, fault_stack, api_key, key_id)
    fault_stack.proxy.reset_log()
    fault_stack.proxy.set_fault("throttle", operations={"UpdateItem"}, pk_prefix="key#", count=1)
    # when three rows are predicted
    response = api.post(BATCH, api_key=api_key)
    # then the SDK's retry lands once: served, and counted 3 rows, not 6
    assert response.status == 200, response.body
    assert fault_stack.proxy.count("UpdateItem", "throttled", pk=f"key#{key_id}") == 1
    assert fault_stack.proxy.count("UpdateItem", "forwarded", pk=f"key#{key_id}") == 1
    assert fault_stack.rows_used(key_id) == before + 3
    _assert_one_audit_record(api, response, status=200, key_id=key_id)


def test_timeout_before_the_write_lands_fails_closed_and_counts_nothing(
    api: Api, fault_stack: FaultStack
) -> None:
    # given a warm key, and counting writes that never reach DynamoDB (held, then dropped)
    key_id, api_key = _key(fault_stack)
    before = _warm(api, fault_stack, api_key, key_id)
    fault_stack.proxy.reset_log()
    fault_stack.proxy.set_fault(
        "hold_before", operations={"UpdateItem"}, pk_prefix="key#", hold_seconds=60
    )
    # when a prediction is requested
    response = api.post(ROW, api_key=api_key)
    # then 503 after the SDK's timeouts; no attempt reached the table; nothing counted
    _assert_fail_closed(api, response, key_id=key_id)
    assert fault_stack.proxy.count("UpdateItem", "held_before", pk=f"key#{key_id}") >= 1
    assert fault_stack.proxy.count("UpdateItem", "forwarded", pk=f"key#{key_id}") == 0
    assert fault_stack.rows_used(key_id) == before


def test_timeout_after_the_write_lands_is_counted_once_and_served(
    api: Api, fault_stack: FaultStack
) -> None:
    # given a warm key, and one counting write that lands in DynamoDB but whose answer is lost
    key_id, api_key = _key(fault_stack)
    before = _warm(api, fault_stack, api_key, key_id)
    fault_stack.proxy.reset_log()
    fault_stack.proxy.set_fault(
        "drop_after", operations={"UpdateItem"}, pk_prefix="key#", count=1, hold_seconds=60
    )
    # when three rows are predicted
    response = api.post(BATCH, api_key=api_key)
    # then the SDK's retry finds the request already counted (idempotency set): served once,
    # counted 3 rows (never 6), audited once
    assert fault_stack.proxy.count("UpdateItem", "dropped_after", pk=f"key#{key_id}") == 1
    assert fault_stack.proxy.count("UpdateItem", "forwarded", pk=f"key#{key_id}") == 1
    assert fault_stack.rows_used(key_id) == before + 3
    assert int(fault_stack.key_item(key_id)["requests"]) == 2
    assert response.status == 200, response.body
    assert len(response.json["predictions"]) == 3
    _assert_one_audit_record(api, response, status=200, key_id=key_id)


def test_every_answer_lost_after_the_write_counts_once_and_fails_closed(
    api: Api, fault_stack: FaultStack
) -> None:
    # given a warm key, and every counting write landing but none of the answers returning
    key_id, api_key = _key(fault_stack)
    before = _warm(api, fault_stack, api_key, key_id)
    fault_stack.proxy.reset_log()
    fault_stack.proxy.set_fault(
        "drop_after", operations={"UpdateItem"}, pk_prefix="key#", hold_seconds=60
    )
    # when one row is predicted
    response = api.post(ROW, api_key=api_key)
    # then 503 (nothing served) and the row counted once although several attempts reached
    # the table: the idempotency condition refused every retry
    _assert_fail_closed(api, response, key_id=key_id)
    assert fault_stack.proxy.count("UpdateItem", "dropped_after", pk=f"key#{key_id}") >= 2
    assert fault_stack.rows_used(key_id) == before + 1


def test_connection_refused_fails_closed_and_counts_nothing(
    api: Api, fault_stack: FaultStack
) -> None:
    # given a warm key, and nothing listening at the DynamoDB endpoint
    key_id, api_key = _key(fault_stack)
    before = _warm(api, fault_stack, api_key, key_id)
    fault_stack.proxy.stop_listening()
    # when a prediction is requested
    response = api.post(ROW, api_key=api_key)
    # then 503, nothing counted; and once the endpoint is back the next request is served
    _assert_fail_closed(api, response, key_id=key_id)
    assert fault_stack.rows_used(key_id) == before
    fault_stack.proxy.start_listening()
    again = api.post(ROW, api_key=api_key)
    assert again.status == 200, again.body
    assert fault_stack.rows_used(key_id) == before + 1


def test_connection_reset_fails_closed_and_counts_nothing(
    api: Api, fault_stack: FaultStack
) -> None:
    # given a warm key, and every connection to DynamoDB reset before a byte is read
    key_id, api_key = _key(fault_stack)
    before = _warm(api, fault_stack, api_key, key_id)
    fault_stack.proxy.set_fault("reset")
    # when a prediction is requested / then 503, nothing counted
    response = api.post(ROW, api_key=api_key)
    _assert_fail_closed(api, response, key_id=key_id)
    assert fault_stack.rows_used(key_id) == before


def test_first_request_of_a_key_fails_closed_when_the_read_is_throttled(
    api: Api, fault_stack: FaultStack
) -> None:
    # given a key this instance has never seen, and its authenticating read throttled
    key_id, api_key = _key(fault_stack)
    fault_stack.proxy.set_fault("throttle", operations={"GetItem"}, pk_prefix="key#")
    # when it is used / then 503, nothing counted (not 401: an outage is not a bad key)
    response = api.post(ROW, api_key=api_key)
    _assert_fail_closed(api, response, key_id=key_id)
    assert fault_stack.rows_used(key_id) == 0


def test_monitor_flags_landing_during_a_request_do_not_fail_it(
    api: Api, fault_stack: FaultStack
) -> None:
    # given a warm key, and the extraction monitor flagging it (through the store's own
    # flag_principal, as the monitor does) right before each of the request's counting writes:
    # two monitor instances flagging the same principal 50 ms apart, as the load test saw
    key_id, api_key = _key(fault_stack)
    before = _warm(api, fault_stack, api_key, key_id)
    store = PrincipalStore(client=fault_stack.client("dynamodb"), table_name=table_name())
    reasons = iter(["extraction:off_manifold", "extraction:prada"])

    def monitor_flags() -> None:
        store.flag_principal(f"key#{key_id}", reason=next(reasons), suspend=False, now=1)

    fault_stack.proxy.set_fault(
        "call", operations={"UpdateItem"}, pk_prefix="key#", count=2, callback=monitor_flags
    )
    # when a prediction is requested
    response = api.post(ROW, api_key=api_key)
    # then it is served and counted once (a flag alone is not a configuration change)
    assert response.status == 200, response.body
    assert fault_stack.rows_used(key_id) == before + 1
    assert set(fault_stack.key_item(key_id)["flags"]) >= {"extraction:off_manifold"}
    _assert_one_audit_record(api, response, status=200, key_id=key_id)


def test_server_stopped_mid_run_fails_closed_then_recovers_with_exact_counts(
    api: Api, fault_stack: FaultStack
) -> None:
    # given a key with a budget of 40 rows and a client sending single rows without pause
    key_id, api_key = _key(fault_stack, budget=40)
    responses: list[Response] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set() and len(responses) < 400:
            responses.append(api.post(ROW, api_key=api_key))

    worker = threading.Thread(target=client)
    worker.start()
    try:
        # when the DynamoDB server stops listening mid-run and comes back 3 s later
        _wait_for(lambda: sum(r.status == 200 for r in responses) >= 5, timeout_s=60)
        fault_stack.stop_moto_listener()
        stopped_at = len(responses)
        _wait_for(lambda: len(responses) >= stopped_at + 2, timeout_s=120)
        time.sleep(1.0)
        fault_stack.start_moto_listener()
        restarted_at = len(responses)
        _wait_for(
            lambda: sum(r.status == 200 for r in responses[restarted_at:]) >= 5, timeout_s=120
        )
    finally:
        stop.set()
        worker.join(timeout=120)
    statuses = {r.status for r in responses}
    # then only 200, 503 (fail closed, Retry-After) or 429 (budget) were seen, some 503s
    assert statuses <= {200, 429, 503}, statuses
    outage = [r for r in responses if r.status == 503]
    assert outage, "no request met the stopped server"
    for response in outage:
        assert int(response.headers["retry-after"]) >= 1
        assert "predictions" not in response.body.decode()
    # every served row is counted, exactly, and the budget held
    served = sum(len(r.json["predictions"]) for r in responses if r.status == 200)
    assert fault_stack.rows_used(key_id) == served <= 40
    # and every request has exactly one audit record with its status
    records = api.audit()
    for response in responses:
        mine = [r for r in records if r.get("request_id") == response.request_id]
        assert len(mine) == 1, response.request_id
        assert mine[0]["status"] == response.status


def _wait_for(predicate, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)
