"""Exactness under concurrency and under faults, against moto server over HTTP.

Several processes (each its own boto3 client and Gatekeeper, like Lambda instances) with many
threads each hammer one key; the shared table must allow exactly the limit. Faults: the server
stopped mid-run (fail closed, nothing served uncounted) and a timeout after the write landed (the
SDK's retry is counted once).
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from typing import Any

import urllib3
from botocore.exceptions import ReadTimeoutError
from coresupport import make_client, settings_for
from coreworkers import hammer

from mlmoat.local.server import EmbeddedDynamoDB
from security.admin import KeyAdmin
from security.auth import Authenticator
from security.errors import AuthenticationError, RateLimitedError, StoreUnavailableError
from security.limits import Gatekeeper
from security.store import PrincipalStore

NOW = 1_900_001_030.0
PROCESSES = 3
THREADS = 8


def _admin(endpoint: str, table: str) -> KeyAdmin:
    store = PrincipalStore(client=make_client(endpoint), table_name=table)
    return KeyAdmin(store=store, settings=settings_for(table), clock=lambda: NOW)


def _run_instances(
    endpoint: str, table: str, api_key: str, *, rows: int
) -> tuple[int, dict[str, int], dict[str, int]]:
    context = multiprocessing.get_context("spawn")
    args = [(endpoint, table, api_key) for _ in range(PROCESSES)]
    kwargs = {"threads": THREADS, "rows": rows, "fixed_now": NOW, "max_requests": 200}
    with context.Pool(PROCESSES) as pool:
        results = [pool.apply_async(hammer, a, kwargs) for a in args]
        outcomes = [r.get(timeout=60) for r in results]
    total = sum(allowed for allowed, _, _ in outcomes)
    reasons: dict[str, int] = {}
    calls: dict[str, int] = {}
    for _, refused, made in outcomes:
        for reason, count in refused.items():
            reasons[reason] = reasons.get(reason, 0) + count
        for operation, count in made.items():
            calls[operation] = calls.get(operation, 0) + count
    return total, reasons, calls


def test_budget_is_exact_across_processes_and_threads(core_endpoint: str, core_table: str) -> None:
    # given a key with a budget of B rows and a rate limit that never binds
    budget = 150
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="crowd", rate_limit="100000/hour", budget=budget)
    # when 3 processes x 8 threads admit 1-row requests until refused
    allowed, refused, calls = _run_instances(core_endpoint, core_table, created["api_key"], rows=1)
    # then exactly B rows were allowed, every thread was stopped by the budget, and the table agrees
    assert allowed == budget
    assert refused == {"budget_exhausted": PROCESSES * THREADS}
    # and each allowed or refused request was one write; reads only on each cold instance
    # (its threads start together, so each may read once) and to confirm the final refusals
    assert calls["UpdateItem"] == budget + PROCESSES * THREADS
    assert calls.get("GetItem", 0) <= 2 * PROCESSES * THREADS
    usage = admin.usage(created["key_id"])["usage"]
    assert usage["rows_used"] == budget and usage["requests"] == budget


def test_budget_is_exact_through_mlmoat_local_dynamodb(local_dynamodb_cli: str) -> None:
    # given the server `mlmoat local dynamodb` runs, with the table its bootstrap created, and a
    # key whose budget is the one moto's own threaded server overshot (242-263 rows of 240)
    budget = 240
    table = "mlmoat-local-SecurityTable"
    client = make_client(local_dynamodb_cli)
    client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 0.2})
    admin = _admin(local_dynamodb_cli, table)
    created = admin.create(owner="cli-crowd", rate_limit="100000/hour", budget=budget)
    # when 3 processes x 8 threads admit 1-row requests until refused
    allowed, refused, _ = _run_instances(local_dynamodb_cli, table, created["api_key"], rows=1)
    # then exactly the budget was allowed, and no ADD was lost on the item
    assert allowed == budget
    assert refused == {"budget_exhausted": PROCESSES * THREADS}
    usage = admin.usage(created["key_id"])["usage"]
    assert usage["rows_used"] == budget and usage["requests"] == budget


def test_rate_limit_is_exact_across_processes_and_threads(
    core_endpoint: str, core_table: str
) -> None:
    # given a key whose rate window (fixed clock, one window) binds long before its budget
    rate = 120
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="burst", rate_limit=f"{rate}/hour", budget=10**6)
    # when 3 processes x 8 threads admit 2-row requests until refused
    allowed, refused, _ = _run_instances(core_endpoint, core_table, created["api_key"], rows=2)
    # then exactly the window's quota was allowed
    assert allowed == rate
    assert refused == {"rate_limited": PROCESSES * THREADS}
    assert admin.usage(created["key_id"])["usage"]["window_rows"] == rate


def test_server_stopped_mid_run_fails_closed_with_nothing_served_uncounted(
    core_endpoint: str, core_table: str
) -> None:
    # given a second moto server front (same in-process backend) that we will stop mid-run
    doomed = EmbeddedDynamoDB().start()
    endpoint = doomed.endpoint
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="outage", rate_limit="100000/hour", budget=10**6)
    settings = settings_for(core_table)
    gatekeeper = Gatekeeper(
        store=PrincipalStore(client=make_client(endpoint, max_attempts=2), table_name=core_table),
        settings=settings,
        clock=lambda: NOW,
    )
    creds = Authenticator(settings=settings, token_verifier=None).read_credentials(
        {"X-API-Key": created["api_key"]}
    )
    served = 0
    failures: list[BaseException] = []
    lock = threading.Lock()
    stop_at = threading.Event()

    def worker() -> None:
        nonlocal served
        for _ in range(400):
            try:
                admission = gatekeeper.admit(
                    creds, model="iris", rows=1, request_id=str(uuid.uuid4()), source_ip="10.1.1.1"
                )
            except StoreUnavailableError as exc:
                with lock:
                    failures.append(exc)
                return
            with lock:
                served += admission.rows
                if served >= 60:
                    stop_at.set()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    # when the server goes away mid-run
    assert stop_at.wait(30)
    doomed.stop()
    for thread in threads:
        thread.join(30)
    # then every thread ended on StoreUnavailableError (503), and every served row was counted
    assert len(failures) == 4
    assert all(isinstance(f, StoreUnavailableError) for f in failures)
    counted = admin.usage(created["key_id"])["usage"]["rows_used"]
    # (a write in flight when the server died may have landed unserved: over-count, never under)
    assert served <= counted <= served + 4


class _DropResponseAfterWrite:
    """A botocore before-send hook: the first UpdateItem is sent for real, then its response is
    'lost' (ReadTimeoutError), so the SDK retries a write that already landed."""

    def __init__(self) -> None:
        self.sent = 0
        self.dropped = 0
        self._http = urllib3.PoolManager()

    def __call__(self, request: Any, **_: Any) -> Any:
        self.sent += 1
        if self.dropped:
            return None  # let botocore send the retry itself
        response = self._http.request(
            request.method, request.url, body=request.body, headers=dict(request.headers)
        )
        assert response.status == 200  # the write landed
        self.dropped += 1
        raise ReadTimeoutError(endpoint_url=request.url)


def test_timeout_after_the_write_lands_counts_the_retried_request_once(
    core_endpoint: str, core_table: str
) -> None:
    # given a warm instance (configuration cached) whose next write's response will be lost
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="flaky", rate_limit="100/hour", budget=50)
    settings = settings_for(core_table)
    client = make_client(core_endpoint)
    gatekeeper = Gatekeeper(
        store=PrincipalStore(client=client, table_name=core_table),
        settings=settings,
        clock=lambda: NOW,
    )
    creds = Authenticator(settings=settings, token_verifier=None).read_credentials(
        {"X-API-Key": created["api_key"]}
    )
    gatekeeper.admit(
        creds, model="iris", rows=1, request_id=str(uuid.uuid4()), source_ip="10.2.2.2"
    )
    hook = _DropResponseAfterWrite()
    client.meta.events.register("before-send.dynamodb.UpdateItem", hook)
    # when a 3-row request's write lands, its response times out and the SDK retries it
    admission = gatekeeper.admit(
        creds, model="iris", rows=3, request_id=str(uuid.uuid4()), source_ip="10.2.2.2"
    )
    # then the retry found its request id already counted: admitted, and charged once
    assert hook.dropped == 1 and hook.sent == 2
    assert admission.rows == 3 and admission.budget_remaining == 46
    usage = admin.usage(created["key_id"])["usage"]
    assert usage["rows_used"] == 4 and usage["requests"] == 2


def test_same_request_id_is_never_counted_twice(core_endpoint: str, core_table: str) -> None:
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="replay", rate_limit="100/hour", budget=50)
    settings = settings_for(core_table)
    clock = [NOW]
    gatekeeper = Gatekeeper(
        store=PrincipalStore(client=make_client(core_endpoint), table_name=core_table),
        settings=settings,
        clock=lambda: clock[0],
    )
    creds = Authenticator(settings=settings, token_verifier=None).read_credentials(
        {"X-API-Key": created["api_key"]}
    )
    request_id = str(uuid.uuid4())
    for delay in (0, 5, 20):  # the same id again, in the same and in the next 30-second bucket
        clock[0] = NOW + delay
        gatekeeper.admit(creds, model="iris", rows=2, request_id=request_id, source_ip="10.3.3.3")
    assert admin.usage(created["key_id"])["usage"]["rows_used"] == 2


def test_budget_stays_exact_while_admins_keep_changing_the_key(
    core_endpoint: str, core_table: str
) -> None:
    # given two warm instances x 6 threads on one key, while an operator keeps suspending and
    # reinstating it (each change bumps config_version, so cached configs go stale again and again)
    budget = 90
    admin = _admin(core_endpoint, core_table)
    created = admin.create(owner="churn", rate_limit="100000/hour", budget=budget)
    settings = settings_for(core_table)
    creds = Authenticator(settings=settings, token_verifier=None).read_credentials(
        {"X-API-Key": created["api_key"]}
    )
    instances = [
        Gatekeeper(
            store=PrincipalStore(client=make_client(core_endpoint), table_name=core_table),
            settings=settings,
            clock=lambda: NOW,
        )
        for _ in range(2)
    ]
    allowed = 0
    transient: dict[str, int] = {}
    lock = threading.Lock()

    def worker(gatekeeper: Gatekeeper) -> None:
        nonlocal allowed
        for _ in range(2000):
            try:
                admission = gatekeeper.admit(
                    creds, model="iris", rows=1, request_id=str(uuid.uuid4()), source_ip="10.4.4.4"
                )
            except RateLimitedError:
                return  # budget_exhausted: this thread is done
            except (AuthenticationError, StoreUnavailableError) as exc:
                with lock:  # suspended for a moment, or two changes during one request
                    transient[exc.reason] = transient.get(exc.reason, 0) + 1
                continue
            with lock:
                allowed += admission.rows

    threads = [threading.Thread(target=worker, args=(g,)) for g in instances for _ in range(6)]
    for thread in threads:
        thread.start()
    changes = 0
    while any(t.is_alive() for t in threads) and changes < 40:
        admin.suspend(created["key_id"])
        admin.reinstate(created["key_id"])
        changes += 2
    for thread in threads:
        thread.join(60)
    # then the budget held exactly, and the table agrees with what was served
    usage = admin.usage(created["key_id"])["usage"]
    assert allowed == budget == usage["rows_used"] == usage["requests"]
    assert changes >= 2 and set(transient) <= {"suspended", "config_contention"}
    assert admin.show(created["key_id"])["config_version"] == 1 + changes
