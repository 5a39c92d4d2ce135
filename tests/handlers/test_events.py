"""Every fixture in events/ through the Lambda handler (Mangum) against a local DynamoDB.

Each event is loaded as ``sam local generate-event`` made it, its ``${...}`` placeholders
replaced by keys created for this session (events/README.md) and its request id made unique;
it is then sent through ``handlers.predict.handler`` (or ``handlers.admin.handler`` for the
admin routes) with a fake LambdaContext. Asserted: the status in events/expected.json, the body
shape (prediction or the one error envelope), the headers, and exactly one audit record.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from handlersupport import EVENTS, header, invoke, load_event, new_key, response_body

EXPECTED: dict[str, int] = json.loads((EVENTS / "expected.json").read_text())
PREDICT = sorted(name for name in EXPECTED if "/admin-" not in name)
ADMIN = sorted(name for name in EXPECTED if "/admin-" in name)
ISSUER = "https://issuer.example"


def test_every_event_file_has_an_expected_status() -> None:
    files = {str(p.relative_to(EVENTS)) for p in EVENTS.glob("*/*.json")}
    assert files == set(EXPECTED)
    assert {name.split("/")[0] for name in files} == {"rest", "http"}


def _requested_rows(event: dict[str, Any]) -> int:
    import base64

    raw = event.get("body") or ""
    text = base64.b64decode(raw).decode() if event.get("isBase64Encoded") else raw
    document = json.loads(text)
    return 1 if "features" in document else len(document["instances"])


@pytest.mark.parametrize("name", PREDICT)
def test_predict_event(name: str, predict_module: Any, keys: dict[str, str], log_sink: Any) -> None:
    # given the fixture with this session's credentials
    event = load_event(name, keys)
    request_id = event["requestContext"]["requestId"]
    # when API Gateway invokes the function with it
    response = invoke(predict_module, event)
    body = response_body(response)
    status = response["statusCode"]
    # then the status is the expected one and the request id is API Gateway's
    assert status == EXPECTED[name], body
    assert header(response, "X-Request-Id") == request_id
    assert header(response, "Content-Type") == "application/json"
    if status == 200:
        assert set(body) == {"model", "model_version", "predictions", "request_id"}
        assert body["request_id"] == request_id
        assert body["predictions"] and all("label" in p for p in body["predictions"])
        if "label-only" in name:
            assert all(set(p) == {"label"} for p in body["predictions"])
        else:
            for prediction in body["predictions"]:
                assert all(round(v, 2) == v for v in prediction["probabilities"].values())
    else:
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
        assert body["error"]["request_id"] == request_id
    # authenticated responses carry the rate-limit headers; 401 the challenge; 429 Retry-After
    authenticated = status not in (401,) and "missing-key" not in name
    assert (header(response, "RateLimit-Policy") is not None) == authenticated, response["headers"]
    # every authenticated response, refusals read without a write included, carries both
    assert (header(response, "RateLimit") is not None) == authenticated, response["headers"]
    if status == 401:
        assert header(
            response,
            "WWW-Authenticate",
        ).startswith("ApiKey")
    if status == 429:
        assert int(header(response, "Retry-After")) >= 1
    # and exactly one audit record tells the same story
    matching = [r for r in log_sink.audit_records() if r["request_id"] == request_id]
    (record,) = matching
    assert record["status"] == status
    assert record["decision"] == ("allow" if status == 200 else "deny")
    if status == 200:
        assert record["rows"] == len(body["predictions"])
    elif status in (400, 413, 415, 422):
        assert record["rows"] == 0  # a refused body is never counted as rows
    else:
        assert record["rows"] in (0, _requested_rows(event))  # refused at or before admission


@pytest.mark.parametrize("name", ADMIN)
def test_admin_event(
    name: str, keys: dict[str, str], admin: Any, admin_module: Any, log_sink: Any
) -> None:
    target = new_key(admin)
    subject = f"user-{uuid.uuid4().hex[:8]}@example.com"
    if "key-reinstate" in name:
        admin.suspend(target["key_id"])  # only a suspended key can be reinstated
    if "subject-reinstate" in name or "subject-show" in name:
        admin.suspend_subject(subject, issuer=ISSUER)  # a subject the table knows
    substitutions = {**keys, "KEY_ID": target["key_id"], "SUBJECT": subject, "ISSUER": ISSUER}
    event = load_event(name, substitutions)
    response = invoke(admin_module, event)
    assert response["statusCode"] == EXPECTED[name], response_body(response)
    request_id = event["requestContext"]["requestId"]
    assert header(response, "X-Request-Id") == request_id
    # one audit record, whose principal is the operator's IAM identity (none when unsigned)
    (record,) = [r for r in log_sink.audit_records() if r["request_id"] == request_id]
    if EXPECTED[name] < 400:
        assert record["credential_type"] == "iam"
        assert record["principal_id"] == "arn:aws:iam::123456789012:user/ops-alice"
    else:
        assert record["reason"] == "iam_identity_required" and "principal_id" not in record
