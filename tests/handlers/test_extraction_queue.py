"""The extraction queue's single call site: every served request is queued, refusals are not."""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
from handlersupport import invoke, load_event, response_body

from security.extraction import QueryMessage


def _drain(handler_env: dict[str, str]) -> list[QueryMessage]:
    sqs = boto3.client(
        "sqs", endpoint_url=handler_env["AWS_ENDPOINT_URL_SQS"], region_name="us-east-1"
    )
    messages = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=handler_env["SECURITY_EXTRACTION_QUEUE_URL"],
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
        ).get("Messages", [])
        if not batch:
            return messages
        for message in batch:
            messages.append(QueryMessage.from_json(message["Body"]))
            sqs.delete_message(
                QueueUrl=handler_env["SECURITY_EXTRACTION_QUEUE_URL"],
                ReceiptHandle=message["ReceiptHandle"],
            )


def test_a_served_batch_is_queued_with_its_raw_rows_and_answers(
    predict_module: Any, keys: dict[str, str], handler_env: dict[str, str]
) -> None:
    _drain(handler_env)
    # given a served 3-row batch
    event = load_event("rest/predict-ok-batch.json", keys)
    response = invoke(predict_module, event)
    body = response_body(response)
    assert response["statusCode"] == 200
    # then exactly one message carries its request id, principal, raw rows and served labels
    (message,) = [m for m in _drain(handler_env) if m.request_id == body["request_id"]]
    sent = json.loads(base64.b64decode(event["body"]))["instances"]
    assert message.model == "iris" and message.principal_id.startswith("key#")
    assert [list(row) for row in message.rows] == sent
    assert list(message.labels) == [p["label"] for p in body["predictions"]]
    assert all(0.0 < c <= 1.0 for c in message.confidences)


def test_refusals_of_known_callers_are_queued_without_rows_and_others_not_at_all(
    predict_module: Any, keys: dict[str, str], handler_env: dict[str, str]
) -> None:
    _drain(handler_env)
    ids = {}
    for name in (
        "rest/predict-outside-envelope.json",
        "rest/predict-bad-key.json",
        "rest/predict-rate-limited.json",
    ):
        event = load_event(name, keys)
        assert invoke(predict_module, event)["statusCode"] >= 400
        ids[event["requestContext"]["requestId"]] = name
    queued = {m.request_id: m for m in _drain(handler_env) if m.request_id in ids}
    # a body refused for its values and a batch that can never fit are counted refusals: the
    # monitor hears that they were refused (never their rows); a bad key is nobody's refusal
    assert {ids[r] for r in queued} == {
        "rest/predict-outside-envelope.json",
        "rest/predict-rate-limited.json",
    }
    assert all(m.rows == () and m.refusal for m in queued.values())
