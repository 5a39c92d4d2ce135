"""API Gateway REST (v1) proxy events: the one builder of the tooling and the tests.

Every event is ``events/rest/predict-ok-single.json`` (the shape ``sam local generate-event
apigateway aws-proxy`` gives, as the handler tests and ``sam local invoke`` use it) with the
request's own path, method, headers and body, and a fresh request id; ``sqs_event`` is the batch
the extraction queue's event source hands the monitor. The benchmark, the red team, the capacity
replay and the handler tests build their events here.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

EVENTS = Path(__file__).resolve().parents[3] / "events"


@lru_cache(maxsize=1)
def _shape() -> str:
    return (EVENTS / "rest" / "predict-ok-single.json").read_text()


def rest_event(
    *,
    path: str,
    body: bytes | None,
    headers: Mapping[str, str],
    method: str = "POST",
    base64_body: bool = True,
    iam_arn: str | None = None,
    source_ip: str | None = None,
    path_parameters: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A REST (v1) proxy event carrying ``body`` (base64 unless ``base64_body`` is False) with
    exactly ``headers``; with ``iam_arn``, as API Gateway passes a request it authorised with
    SigV4 (``AWS_IAM``); ``source_ip`` replaces the shape's client address."""
    event: dict[str, Any] = json.loads(_shape())
    context = event["requestContext"]
    event["path"] = path
    event["httpMethod"] = context["httpMethod"] = method
    event["pathParameters"] = dict(path_parameters) if path_parameters else None
    context["requestId"] = str(uuid.uuid4())
    context["path"] = f"/{context.get('stage', 'Prod')}{path}"
    event["headers"] = dict(headers)
    event["multiValueHeaders"] = {name: [value] for name, value in headers.items()}
    if iam_arn is not None:
        context["identity"]["userArn"] = iam_arn
    if source_ip is not None:
        context["identity"]["sourceIp"] = source_ip
    if body is None:
        event["body"], event["isBase64Encoded"] = None, False
    elif base64_body:
        event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
    else:
        event["body"], event["isBase64Encoded"] = body.decode("utf-8", "surrogateescape"), False
    return event


#: The extraction queue's ARN as the local events name it.
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:ExtractionQueue"


def sqs_event(
    messages: Sequence[Mapping[str, Any]], queue_arn: str = QUEUE_ARN, region: str = "us-east-1"
) -> dict[str, Any]:
    """The SQS event Lambda's event source delivers for ``messages`` (as ReceiveMessage returns
    them: ``MessageId``, ``ReceiptHandle``, ``Body``)."""
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "0"},
                "messageAttributes": {},
                "md5OfBody": message.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for message in messages
        ]
    }
