"""Exactness of the extraction queue on the serving path: every served query reaches the queue,
or the request's audit record is flagged and the ``MonitorQueueFailures`` metric counts it."""

from __future__ import annotations

import json
import socket
from typing import Any

import boto3
from handlersupport import LambdaContext, header, load_event, response_body
from mangum import Mangum

from security.audit import MONITOR_QUEUE_FAILED, AuditLog
from security.extraction import QueryMessage
from security.wiring import Clients, build_predict_app, sink_client_config


def _app(predict_module: Any, handler_env: dict[str, str], sqs_endpoint: str) -> Mangum:
    sqs = boto3.client(
        "sqs", endpoint_url=sqs_endpoint, region_name="us-east-1", config=sink_client_config()
    )
    dynamodb = boto3.client(
        "dynamodb", endpoint_url=handler_env["AWS_ENDPOINT_URL_DYNAMODB"], region_name="us-east-1"
    )
    app = build_predict_app(
        predict_module.settings,
        Clients(dynamodb=dynamodb, sqs=sqs),
        audit=AuditLog(service=predict_module.settings.service_name),
    )
    return Mangum(app, lifespan="off")


def test_an_unreachable_queue_is_audited_and_counted_and_the_prediction_served(
    predict_module: Any, keys: dict[str, str], handler_env: dict[str, str], log_sink: Any
) -> None:
    # given the function wired to an SQS endpoint that refuses connections
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    handler = _app(predict_module, handler_env, dead)
    # when a valid, counted request is served
    response = handler(load_event("rest/predict-ok-batch.json", keys), LambdaContext())
    assert response["statusCode"] == 200, response_body(response)
    # then its one audit record says the monitor did not get it, and the EMF metric counts it
    request_id = header(response, "X-Request-Id")
    (record,) = [r for r in log_sink.audit_records() if r["request_id"] == request_id]
    assert MONITOR_QUEUE_FAILED in record["flags"]
    assert record["MonitorQueueFailures"] == [1.0]
    metrics = {m["Name"] for m in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert "MonitorQueueFailures" in metrics


def test_a_delivered_query_is_exact_and_not_flagged(
    predict_module: Any, keys: dict[str, str], handler_env: dict[str, str], log_sink: Any
) -> None:
    # given the function wired to the session's queue
    handler = _app(predict_module, handler_env, handler_env["AWS_ENDPOINT_URL_SQS"])
    event = load_event("rest/predict-ok-batch.json", keys)
    # when a batch is served
    response = handler(json.loads(json.dumps(event)), LambdaContext())
    assert response["statusCode"] == 200
    request_id = header(response, "X-Request-Id")
    # then no failure is recorded
    (record,) = [r for r in log_sink.audit_records() if r["request_id"] == request_id]
    assert MONITOR_QUEUE_FAILED not in record.get("flags", [])
    assert "MonitorQueueFailures" not in record
    # and the queued message (packed) carries the served rows bit for bit
    sqs = boto3.client(
        "sqs", endpoint_url=handler_env["AWS_ENDPOINT_URL_SQS"], region_name="us-east-1"
    )
    url = handler_env["SECURITY_EXTRACTION_QUEUE_URL"]
    found = []
    for _ in range(20):
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not batch:
            break
        for message in batch:
            body = json.loads(message["Body"])
            if body["request_id"] == request_id:
                found.append((body, QueryMessage.from_json(message["Body"])))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    ((raw, parsed),) = found
    assert raw["v"] == 2 and isinstance(raw["rows"], str)
    body_in = json.loads(_sent_body(event))
    assert [list(row) for row in parsed.rows] == body_in["instances"]
    assert len(parsed.confidences) == len(parsed.labels) == len(body_in["instances"])


def _sent_body(event: dict[str, Any]) -> str:
    import base64

    raw = event["body"]
    return base64.b64decode(raw).decode() if event.get("isBase64Encoded") else raw


# ------------------------------------------------------------------ the buffered sink (default)
def _buffered(
    predict_module: Any, handler_env: dict[str, str], sqs_endpoint: str
) -> tuple[Mangum, list[int]]:
    """The function as deployed but with a 60 s delay, so only the buffer's size flushes (10
    requests): deterministic whatever this machine's speed. Returns the handler and the entry
    counts of its SendMessageBatch calls."""
    import dataclasses

    sqs = boto3.client(
        "sqs", endpoint_url=sqs_endpoint, region_name="us-east-1", config=sink_client_config()
    )
    calls: list[int] = []
    sqs.meta.events.register(
        "provide-client-params.sqs.SendMessageBatch",
        lambda params, **_: calls.append(len(params["Entries"])),
    )
    dynamodb = boto3.client(
        "dynamodb", endpoint_url=handler_env["AWS_ENDPOINT_URL_DYNAMODB"], region_name="us-east-1"
    )
    settings = dataclasses.replace(predict_module.settings, extraction_send_max_delay=60.0)
    app = build_predict_app(
        settings, Clients(dynamodb=dynamodb, sqs=sqs), audit=AuditLog(service=settings.service_name)
    )
    return Mangum(app, lifespan="off"), calls


def test_a_buffered_send_that_fails_names_every_lost_query_in_the_flushing_record(
    predict_module: Any, keys: dict[str, str], handler_env: dict[str, str], log_sink: Any
) -> None:
    # given the buffered sink wired to an SQS endpoint that refuses connections
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    handler, calls = _buffered(predict_module, handler_env, dead)
    # when ten counted requests are served (the tenth fills the buffer)
    ids = []
    for _ in range(10):
        response = handler(load_event("rest/predict-ok-single.json", keys), LambdaContext())
        assert response["statusCode"] == 200, response_body(response)
        ids.append(header(response, "X-Request-Id"))
    records = {r["request_id"]: r for r in log_sink.audit_records() if r["request_id"] in ids}
    # then the first nine records know of no loss, and the tenth's send lost all ten queries:
    # its record names them and its metric counts them (nothing lost silently)
    assert calls == [10]
    for request_id in ids[:9]:
        assert MONITOR_QUEUE_FAILED not in records[request_id].get("flags", [])
        assert "MonitorQueueFailures" not in records[request_id]
    last = records[ids[9]]
    assert MONITOR_QUEUE_FAILED in last["flags"] and last["monitor_queue_lost"] == ids
    assert last["MonitorQueueFailures"] == [10.0]


def test_a_buffered_sink_sends_ten_requests_in_one_call_exactly(
    predict_module: Any, keys: dict[str, str], handler_env: dict[str, str], log_sink: Any
) -> None:
    handler, calls = _buffered(predict_module, handler_env, handler_env["AWS_ENDPOINT_URL_SQS"])
    sqs = boto3.client(
        "sqs", endpoint_url=handler_env["AWS_ENDPOINT_URL_SQS"], region_name="us-east-1"
    )
    url = handler_env["SECURITY_EXTRACTION_QUEUE_URL"]
    sent: dict[str, list[list[float]]] = {}
    for i in range(10):
        event = load_event("rest/predict-ok-batch.json", keys)
        response = handler(event, LambdaContext())
        assert response["statusCode"] == 200
        sent[header(response, "X-Request-Id")] = json.loads(_sent_body(event))["instances"]
        # nothing reaches the queue before the buffer is due
        if i < 9:
            assert calls == []
    assert calls == [10]
    queued: dict[str, QueryMessage] = {}
    for _ in range(20):
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not batch:
            break
        for message in batch:
            parsed = QueryMessage.from_json(message["Body"])
            if parsed.request_id in sent:
                queued[parsed.request_id] = parsed
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    # every served query arrived once, with its rows bit for bit, and no record flags a loss
    assert {rid: [list(r) for r in m.rows] for rid, m in queued.items()} == sent
    records = [r for r in log_sink.audit_records() if r["request_id"] in sent]
    assert all(MONITOR_QUEUE_FAILED not in r.get("flags", []) for r in records)
    # and each record says where the environment's buffer stood: queued, of them flushed
    positions = [(r["monitor_queue"]["queued"], r["monitor_queue"]["flushed"]) for r in records]
    start = positions[0][0] - 1
    assert positions == [(start + i, start if i < 10 else start + 10) for i in range(1, 11)]
    assert len({r["monitor_queue"]["env"] for r in records}) == 1
