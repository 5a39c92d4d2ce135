"""The audit trail through the handler: one record per response, the 500 path, no key material."""

from __future__ import annotations

import json
import uuid

from handlersupport import (
    EVENTS,
    FailingRegistry,
    LambdaContext,
    header,
    invoke,
    load_event,
    new_key,
    response_body,
    rest_event,
)
from mangum import Mangum

JSON_CT = {"Content-Type": "application/json"}
ONE = b'{"features": [5.1, 3.5, 1.4, 0.2]}'


def test_every_response_has_exactly_one_audit_record(predict_module, keys, log_sink) -> None:
    # given a mix of every fixture, hostile bodies, unknown routes and wrong methods
    events = [
        load_event(str(p.relative_to(EVENTS)), keys)
        for p in sorted(EVENTS.glob("*/predict-*.json"))
    ]
    events += [
        load_event(str(p.relative_to(EVENTS)), keys) for p in sorted(EVENTS.glob("*/models-*.json"))
    ]
    events += [
        rest_event(path="/nowhere", body=ONE, headers=JSON_CT),
        rest_event(path="/predict", body=None, headers={}, method="GET"),
        rest_event(
            path="/predict", body=b"[" * 9000, headers={**JSON_CT, "X-API-Key": keys["API_KEY"]}
        ),
        rest_event(
            path="/predict", body=ONE, headers={**JSON_CT, "Authorization": "Bearer abc.def.ghi"}
        ),
    ]
    # when each is handled
    request_ids = []
    for event in events:
        response = invoke(predict_module, event)
        request_ids.append(header(response, "X-Request-Id"))
    # then each response's request id has exactly one request audit record
    assert len(set(request_ids)) == len(events)
    records = [r for r in log_sink.audit_records() if r["request_id"] in set(request_ids)]
    assert sorted(r["request_id"] for r in records) == sorted(request_ids)
    for record in records:
        assert record["decision"] in ("allow", "deny") and record["reason"] and record["status"]
        assert record["latency_ms"] >= 0 and record["route"] and record["method"]


def test_a_request_without_an_api_gateway_id_gets_a_generated_one(predict_module, log_sink) -> None:
    event = rest_event(path="/predict", body=ONE, headers=JSON_CT)
    event["requestContext"]["requestId"] = "not a valid id; <script>"
    response = invoke(predict_module, event)
    request_id = header(response, "X-Request-Id")
    assert str(uuid.UUID(request_id)) == request_id
    assert response_body(response)["error"]["request_id"] == request_id


def test_an_unexpected_failure_is_a_generic_500_with_one_record_and_the_detail_in_the_log(
    predict_module, admin, log_sink, handler_env
) -> None:
    import boto3

    from security.api import create_app
    from security.api.predict import schemas_for
    from security.audit import AuditLog
    from security.auth import Authenticator
    from security.limits import Gatekeeper
    from security.model import ModelRegistry
    from security.store import PrincipalStore

    settings = predict_module.settings
    registry = ModelRegistry.load(settings.model_dir)
    client = boto3.client("dynamodb", endpoint_url=handler_env["AWS_ENDPOINT_URL_DYNAMODB"])
    store = PrincipalStore(client=client, table_name=settings.table_name)
    app = create_app(
        settings=settings,
        registry=FailingRegistry(registry),
        schemas=schemas_for(registry, registry.names, margin=settings.envelope_margin),
        authenticator=Authenticator(settings=settings, token_verifier=None),
        gatekeeper=Gatekeeper(store=store, settings=settings),
        audit=AuditLog(service=settings.service_name),
    )
    handler = Mangum(app, lifespan="off")
    key = new_key(admin)
    event = rest_event(path="/predict", body=ONE, headers={**JSON_CT, "X-API-Key": key["api_key"]})
    response = handler(json.loads(json.dumps(event)), LambdaContext())
    body = response_body(response)
    request_id = header(response, "X-Request-Id")
    assert response["statusCode"] == 500
    assert body == {
        "error": {
            "code": "internal_error",
            "message": "The request failed.",
            "request_id": request_id,
        }
    }
    assert "onnxruntime" not in json.dumps(response)
    (record,) = [r for r in log_sink.audit_records() if r["request_id"] == request_id]
    assert (record["status"], record["decision"], record["reason"]) == (
        500,
        "deny",
        "internal_error",
    )
    errors = [
        r
        for r in log_sink.records()
        if r.get("message") == "unhandled_error" and r.get("correlation_id") == request_id
    ]
    assert errors and "onnxruntime exploded" in errors[0]["exception"]


def test_key_material_sent_anywhere_never_reaches_a_log_line(
    predict_module, admin, log_sink
) -> None:
    key = new_key(admin)["api_key"]
    start = len(log_sink.lines)
    # given a key in a query string, in the body, in a Bearer header and in an unknown route
    first = rest_event(
        path="/predict",
        body=json.dumps({"features": [5.1, 3.5, 1.4, 0.2], "k": key}).encode(),
        headers={**JSON_CT, "X-API-Key": key},
    )
    first["queryStringParameters"] = {"api_key": key}
    first["multiValueQueryStringParameters"] = {"api_key": [key]}
    events = [
        first,
        rest_event(path=f"/models/{key}/predict", body=ONE, headers={**JSON_CT, "X-API-Key": key}),
        rest_event(
            path="/predict", body=ONE, headers={**JSON_CT, "Authorization": f"Bearer {key}"}
        ),
        rest_event(path=f"/{key}", body=ONE, headers={**JSON_CT, "X-API-Key": key + "x"}),
    ]
    for event in events:
        invoke(predict_module, event)
    new_lines = log_sink.lines[start:]
    # then the requests were logged, and no line holds the key or its secret part
    assert sum('"message":"audit"' in line for line in new_lines) == len(events)
    secret = key.split("_")[2]
    assert not [line for line in new_lines if key in line or secret[:20] in line]


def test_a_dynamodb_outage_fails_closed_with_503_retry_after_and_one_record(
    predict_module, keys, log_sink
) -> None:
    import socket

    import boto3
    from botocore.config import Config

    from security.audit import AuditLog
    from security.wiring import Clients, build_predict_app

    # given the same function wired to a DynamoDB endpoint that refuses connections
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = boto3.client(
        "dynamodb",
        endpoint_url=dead,
        region_name="us-east-1",
        config=Config(connect_timeout=0.2, read_timeout=0.2, retries={"total_max_attempts": 1}),
    )
    app = build_predict_app(
        predict_module.settings,
        Clients(dynamodb=client),
        audit=AuditLog(service=predict_module.settings.service_name),
    )
    handler = Mangum(app, lifespan="off")
    event = load_event("rest/predict-ok-single.json", keys)
    # when a valid request arrives
    response = handler(json.loads(json.dumps(event)), LambdaContext())
    body = response_body(response)
    # then it is refused, not served uncounted: 503, Retry-After, generic message, one record
    assert response["statusCode"] == 503
    assert body["error"]["code"] == "service_unavailable"
    assert "dynamo" not in json.dumps(body).lower() and dead not in json.dumps(response)
    assert int(header(response, "Retry-After")) >= 1
    request_id = header(response, "X-Request-Id")
    (record,) = [r for r in log_sink.audit_records() if r["request_id"] == request_id]
    assert (record["status"], record["decision"], record["reason"]) == (
        503,
        "deny",
        "store_unavailable",
    )
