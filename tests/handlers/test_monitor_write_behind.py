"""MonitorFunction's write-behind buffer through the real handler, as deployed (30 s, 8).

The other handler tests run the monitor with ``SECURITY_MONITOR_FLUSH_SECONDS=0`` (they read a
principal's state right after its batch); this one runs the template's default: a sparse
principal's message is acknowledged and held, each batch logs the environment's buffer position,
and the shutdown flush writes the state.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import boto3
from handlersupport import LambdaContext, import_handler

from logcapture import LineSink
from mlmoat.local.events import sqs_event


def _event(bodies: list[str]) -> dict[str, Any]:
    return sqs_event(
        [
            {"MessageId": str(uuid.uuid4()), "ReceiptHandle": f"handle-{i}", "Body": body}
            for i, body in enumerate(bodies)
        ]
    )


def test_the_deployed_monitor_holds_a_sparse_principal_and_writes_it_at_shutdown(
    predict_module: Any, handler_env: dict[str, str], log_sink: LineSink
) -> None:
    from security.extraction import QueryMessage
    from security.store import PrincipalStore

    env = {**handler_env, "SECURITY_MONITOR_FLUSH_SECONDS": "30"}
    monitor = import_handler("handlers.monitor", env)
    assert monitor.function.settings.monitor_flush_messages == 8
    store = PrincipalStore(
        client=boto3.client(
            "dynamodb", endpoint_url=env["AWS_ENDPOINT_URL_DYNAMODB"], region_name="us-east-1"
        ),
        table_name=env["SECURITY_TABLE_NAME"],
    )
    principal = f"key#buf{uuid.uuid4().hex[:9]}"
    now = time.time()
    messages = [
        QueryMessage(
            principal,
            "iris",
            f"req-{uuid.uuid4().hex[:8]}",
            now,
            ((5.1, 3.5, 1.4, 0.2),),
            ("setosa",),
            (0.97,),
        )  # fmt: skip
        for _ in range(2)
    ]
    since = len(log_sink.records())
    # when two batches bring one message each of a principal
    for message in messages:
        result = monitor.handler(_event([message.to_json()]), LambdaContext())
        # then each is acknowledged (nothing redelivered) and held: no state yet
        assert result == {"batchItemFailures": []}
    assert store.load_monitor_state(principal, "iris") == (None, 0)
    # and each batch logged where the environment's buffer stands
    positions = [
        r["monitor_buffer"]
        for r in log_sink.records()[since:]
        if r.get("message") == "monitor_buffer"
    ]
    assert [(p["buffered"], p["flushed"], p["pending"], p["lost"]) for p in positions] == [
        (1, 0, 1, 0),
        (2, 0, 2, 0),
    ]
    assert len({p["env"] for p in positions}) == 1 and len(positions[0]["env"]) == 8
    # when the environment shuts down (atexit, SIGTERM: ``ExtractionMonitor.flush``)
    monitor.function.monitor.flush()
    # then both messages are applied with one write, and the last position says so
    blob, version = store.load_monitor_state(principal, "iris")
    from security.extraction import DetectorState

    assert version == 1 and blob is not None and DetectorState.from_bytes(blob).rows_seen == 2
    last = [r for r in log_sink.records()[since:] if r.get("message") == "monitor_buffer"][-1]
    assert last["monitor_buffer"]["pending"] == 0 and last["monitor_buffer"]["flushed"] == 2
