"""The worker of the concurrency tests, run in spawned processes: it imports only what a Lambda
instance would (boto3 and the security layer, through ``coresupport``), so each process starts
fast."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

from coresupport import make_client, record_calls

from security.auth import Authenticator
from security.errors import RateLimitedError, SecurityError
from security.limits import Gatekeeper
from security.settings import Settings
from security.store import PrincipalStore


def hammer(
    endpoint: str,
    table: str,
    api_key: str,
    *,
    threads: int,
    rows: int,
    fixed_now: float,
    max_requests: int,
) -> tuple[int, dict[str, int], dict[str, int]]:
    """One 'Lambda instance': its own client and Gatekeeper, ``threads`` threads admitting
    ``rows`` rows per request until refused (or ``max_requests`` each). Returns rows allowed,
    refusals by reason and DynamoDB calls by operation."""
    settings = Settings(table_name=table, model_dir="/nonexistent")
    client = make_client(endpoint, read_timeout=60)
    calls = record_calls(client)
    store = PrincipalStore(client=client, table_name=table)
    gatekeeper = Gatekeeper(store=store, settings=settings, clock=lambda: fixed_now)
    credentials = Authenticator(settings=settings, token_verifier=None).read_credentials(
        {"X-API-Key": api_key}
    )
    allowed = Counter[str]()
    refused = Counter[str]()
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(max_requests):
            try:
                admission = gatekeeper.admit(
                    credentials,
                    model="iris",
                    rows=rows,
                    request_id=str(uuid.uuid4()),
                    source_ip="127.0.0.1",
                )
            except RateLimitedError as exc:
                with lock:
                    refused[exc.reason] += 1
                return
            except SecurityError as exc:
                with lock:
                    refused[exc.reason] += 1
                return
            with lock:
                allowed["rows"] += admission.rows

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return allowed["rows"], dict(refused), dict(Counter(calls))
