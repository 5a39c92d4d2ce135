"""An unknown key id and a wrong secret are refused after the same work, in the same time.

The outside test measured unknown ids answered ~20% faster than wrong secrets (median 35 vs
44 ms, twice): the difference told a guesser which key ids exist. Both paths now do the same
I/O (one conditional ``UpdateItem`` that authenticates, then the throttle's three counter
writes), which ``test_core_admission`` pins by operation; this test measures the time through
the real handler against the session's DynamoDB (moto over HTTP), a few hundred of each,
interleaved so that any drift in the machine's load falls on both alike.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from typing import Any

import pytest
from handlersupport import import_handler, invoke, new_key, rest_event

from logcapture import remember_key

PAIRS = 200
_ROW = json.dumps({"features": [5.1, 3.5, 1.4, 0.2]}).encode()


@pytest.fixture(scope="module")
def unthrottled(handler_env: dict[str, str]) -> Any:
    """The predict function with the guessing throttle out of the way (every request is a guess)."""
    env = {
        **handler_env,
        "SECURITY_AUTH_FAILURE_LIMIT": "1000000/minute",
        "SECURITY_AUTH_FAILURE_KEY_LIMIT": "1000000/minute",
        "SECURITY_AUTH_FAILURE_GLOBAL_LIMIT": "1000000/minute",
    }
    return import_handler("handlers.predict", env)


def _timed(module: Any, key: str) -> tuple[float, float, int, str]:
    event = rest_event(
        path="/predict", body=_ROW, headers={"Content-Type": "application/json", "X-API-Key": key}
    )
    event["requestContext"]["identity"]["sourceIp"] = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    started, cpu = time.perf_counter(), time.thread_time()
    response = invoke(module, event)
    wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
    return wall, cpu, response["statusCode"], response["body"]


def test_unknown_ids_and_wrong_secrets_take_the_same_time(unthrottled: Any, admin: Any) -> None:
    from security.keys import format_key, new_key_id, new_secret, parse_key

    real = parse_key(new_key(admin)["api_key"])
    wrong_secret = remember_key(format_key(real.key_id, new_secret()))
    unknown_id = remember_key(format_key(new_key_id(), new_secret()))
    for _ in range(20):  # warm both paths (connections, first-call imports)
        _timed(unthrottled, unknown_id), _timed(unthrottled, wrong_secret)

    times: dict[str, dict[str, list[float]]] = {
        "unknown": {"wall": [], "cpu": []},
        "wrong": {"wall": [], "cpu": []},
    }
    bodies = set()
    for i in range(PAIRS):
        order = (unknown_id, wrong_secret) if i % 2 else (wrong_secret, unknown_id)
        for key in order:
            wall, cpu, status, body = _timed(unthrottled, key)
            assert status == 401
            bodies.add(json.dumps({**json.loads(body)["error"], "request_id": ""}))
            path = times["unknown" if key == unknown_id else "wrong"]
            path["wall"].append(wall)
            path["cpu"].append(cpu)

    # The same answer, byte for byte apart from the request id
    assert len(bodies) == 1
    median = {
        (path, kind): statistics.median(values)
        for path, kinds in times.items()
        for kind, values in kinds.items()
    }
    cpu_ratio = median["wrong", "cpu"] / median["unknown", "cpu"]
    wall_ratio = median["wrong", "wall"] / median["unknown", "wall"]
    print(
        f"\nover {PAIRS} each, median unknown id / wrong secret: function CPU "
        f"{median['unknown', 'cpu'] * 1e3:.2f} / {median['wrong', 'cpu'] * 1e3:.2f} ms "
        f"(ratio {cpu_ratio:.3f}); wall {median['unknown', 'wall'] * 1e3:.2f} / "
        f"{median['wrong', 'wall'] * 1e3:.2f} ms (ratio {wall_ratio:.3f})"
    )
    # The function's own work (its thread's CPU time: what Lambda runs) is the same within
    # noise. The wall time adds the stand-in's: moto takes ~5 ms longer to serialise an item
    # it returns than to answer "no such item", which DynamoDB's ~1 KB difference does not;
    # it is bounded well below the 1.26 the outside test measured before.
    assert 0.9 < cpu_ratio < 1.1
    assert wall_ratio < 1.2
