"""The packed (version 2) query message QuerySink sends: exact rows, validated like version 1."""

from __future__ import annotations

import base64
import json

import boto3
import numpy as np
import pytest
from moto import mock_aws

from security.extraction import QueryMessage, QuerySink


def _sent_body(rows: np.ndarray, labels: list[str], confidences: list[float]) -> str:
    sqs = boto3.client("sqs", region_name="eu-west-1")
    url = sqs.create_queue(QueueName="packed-unit-1")["QueueUrl"]
    sink = QuerySink(client=sqs, queue_url=url, clock=lambda: 7.0, max_delay=0)
    assert sink.send(
        principal_id="key#p1",
        model="toy",
        request_id="req-p1",
        rows=rows,
        labels=labels,
        confidences=confidences,
    )
    (message,) = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    return str(message["Body"])


@mock_aws
def test_packed_rows_round_trip_bit_for_bit() -> None:
    # given rows whose decimal forms are long (the JSON of version 1 would spell them out)
    rows = np.array([[0.1 + 0.2, 1e-300, -3.5], [np.pi, 2.0**52 + 1, 5e-324]])
    body = _sent_body(rows, ["a", "b"], [0.75, 1.0 / 3.0])
    # then the message is version 2 and parses to exactly the served values
    assert json.loads(body)["v"] == 2
    message = QueryMessage.from_json(body)
    assert np.array_equal(np.array(message.rows), rows)
    assert message.labels == ("a", "b") and message.confidences == (0.75, 1.0 / 3.0)
    assert message.ts == 7.0 and message.principal_id == "key#p1" and message.part == 0


@mock_aws
def test_packed_messages_are_validated() -> None:
    body = json.loads(_sent_body(np.array([[1.0, 2.0]]), ["a"], [0.5]))
    nan = base64.b64encode(np.array([np.nan, 2.0], dtype="<f8").tobytes()).decode()
    broken = [
        {**body, "rows": nan},  # not finite
        {**body, "shape": [1, 3]},  # shape does not match the packed values
        {**body, "rows": body["rows"][:-4]},  # a partial value
        {**body, "rows": "not base64!"},
        {**body, "confidences": base64.b64encode(b"\0" * 16).decode()},  # 2 for 1 row
    ]
    for document in broken:
        with pytest.raises(ValueError):
            QueryMessage.from_json(json.dumps(document))


@mock_aws
def test_a_request_larger_than_one_message_is_split_without_losing_a_row() -> None:
    sqs = boto3.client("sqs", region_name="eu-west-1")
    url = sqs.create_queue(QueueName="packed-unit-2")["QueueUrl"]
    sink = QuerySink(client=sqs, queue_url=url)
    rows = np.arange(3000 * 30, dtype=np.float64).reshape(3000, 30)
    assert sink.send(principal_id="key#p2", model="toy", request_id="req-p2", rows=rows)
    parts = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        for message in batch:
            assert len(message["Body"]) <= 256 * 1024
            parts.append(QueryMessage.from_json(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    parts.sort(key=lambda m: m.part)
    assert len(parts) > 1 and [m.part for m in parts] == list(range(len(parts)))
    assert np.array_equal(np.array([row for m in parts for row in m.rows]), rows)
