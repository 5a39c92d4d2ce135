"""DynamoDB requests per allowed prediction through the whole prediction app (Mangum, REST
events from events/), counted with a botocore event hook: goal 1 on the steady path."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest
from coresupport import REPO, make_client, record_calls, settings_for
from mangum import Mangum

from mlmoat.local.lambda_runtime import LambdaContext
from mlmoat.local.server import EmbeddedDynamoDB
from security.admin import KeyAdmin
from security.audit import AuditLog
from security.store import PrincipalStore
from security.wiring import Clients, build_predict_app

EVENTS = REPO / "events" / "rest"
MODELS = REPO / "models"


@pytest.fixture()
def predict(core_endpoint: str, core_table: str) -> dict[str, Any]:
    if not (MODELS / "iris" / "manifest.json").is_file():
        pytest.skip("models/ not trained yet (mlmoat train)")
    settings = settings_for(core_table, squeeze_policy="off", model_dir=str(MODELS))
    client = make_client(core_endpoint)
    calls = record_calls(client)
    app = build_predict_app(
        settings,
        Clients(dynamodb=client),
        audit=AuditLog(service="mlmoat-core-test", stream=io.StringIO()),
    )
    admin = KeyAdmin(
        store=PrincipalStore(client=make_client(core_endpoint), table_name=core_table),
        settings=settings,
    )
    return {"handler": Mangum(app, lifespan="off"), "calls": calls, "admin": admin}


def _invoke(predict: dict[str, Any], name: str, api_key: str) -> dict[str, Any]:
    event = json.loads((EVENTS / f"{name}.json").read_text().replace("${API_KEY}", api_key))
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    context = LambdaContext("PredictFunction")
    response: dict[str, Any] = predict["handler"](event, context)
    return response


def test_one_dynamodb_request_per_allowed_prediction(predict: dict[str, Any]) -> None:
    created = predict["admin"].create(owner="path", rate_limit="1000/minute", budget=1000)
    calls: list[str] = predict["calls"]
    first = _invoke(predict, "predict-ok-single", created["api_key"])
    assert first["statusCode"] == 200
    assert calls == ["GetItem", "UpdateItem"]  # cold instance: one read, then the counting write
    calls.clear()
    allowed = 0
    for _ in range(20):
        response = _invoke(predict, "predict-ok-single", created["api_key"])
        assert response["statusCode"] == 200
        allowed += 1
    assert len(calls) / allowed == 1.0 and set(calls) == {"UpdateItem"}
    # a body refused for its content costs one write: a refusal counted, no rows charged
    calls.clear()
    assert _invoke(predict, "predict-invalid-features", created["api_key"])["statusCode"] == 422
    assert calls == ["UpdateItem"]
    usage = predict["admin"].usage(created["key_id"])["usage"]
    assert usage["requests"] == 21 and usage["rows_used"] == 21


def test_dynamodb_gone_mid_run_answers_503_and_serves_nothing_uncounted(
    core_endpoint: str, core_table: str
) -> None:
    if not (MODELS / "iris" / "manifest.json").is_file():
        pytest.skip("models/ not trained yet (mlmoat train)")
    doomed = EmbeddedDynamoDB().start()
    settings = settings_for(core_table, squeeze_policy="off", model_dir=str(MODELS))
    app = build_predict_app(
        settings,
        Clients(dynamodb=make_client(doomed.endpoint, max_attempts=2)),
        audit=AuditLog(service="mlmoat-core-test", stream=io.StringIO()),
    )
    handler = Mangum(app, lifespan="off")
    admin = KeyAdmin(
        store=PrincipalStore(client=make_client(core_endpoint), table_name=core_table),
        settings=settings,
    )
    created = admin.create(owner="outage-path", rate_limit="1000/minute", budget=1000)
    target = {"handler": handler}
    statuses = [
        _invoke(target, "predict-ok-single", created["api_key"])["statusCode"] for _ in range(5)
    ]
    doomed.stop()
    failed = _invoke(target, "predict-ok-single", created["api_key"])
    headers = {k.lower(): v for k, v in (failed.get("headers") or {}).items()}
    headers.update({k.lower(): v[-1] for k, v in (failed.get("multiValueHeaders") or {}).items()})
    assert statuses == [200] * 5
    assert failed["statusCode"] == 503 and int(headers["retry-after"]) >= 1
    assert "predictions" not in json.loads(failed["body"])
    assert admin.usage(created["key_id"])["usage"]["rows_used"] == 5
