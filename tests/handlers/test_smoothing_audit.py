"""Input smoothing through the predict app: the certified radius is in the audit record and
nowhere in the response, and repeating a query returns the same answer.

The committed calibrations leave smoothing off (its HopSkipJump check does not show a gain
beyond the intervals), so the app here is the handler's app (``create_app``, the session's
settings, registry, squeezer and gatekeeper against the moto table) with breast-cancer's
calibrated smoothing switched on, as a deployment whose calibration enabled it serves it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from handlersupport import LambdaContext, header, invoke, response_body, rest_event
from mangum import Mangum

MODELS = Path(__file__).resolve().parents[2] / "models"
PATH = "/models/breast-cancer/predict"


def _rows(count: int, seed: int) -> list[list[float]]:
    # Rows inside the training envelope (no scikit-learn: this suite also runs under 3.13).
    manifest = json.loads((MODELS / "breast-cancer" / "manifest.json").read_text())
    low = np.asarray([manifest["envelope"][f]["min"] for f in manifest["feature_names"]])
    high = np.asarray([manifest["envelope"][f]["max"] for f in manifest["feature_names"]])
    rows = low + np.random.default_rng(seed).uniform(0.1, 0.6, (count, low.size)) * (high - low)
    return [[round(float(v), 6) for v in row] for row in rows]


@pytest.fixture(scope="module")
def smoothed_handler(predict_module: Any, handler_env: dict[str, str]) -> Any:
    from security.api import create_app
    from security.api.predict import schemas_for
    from security.audit import AuditLog
    from security.auth import Authenticator
    from security.defences import Squeezer
    from security.limits import Gatekeeper
    from security.model import ModelRegistry
    from security.smoothing import Smoother, load_smoothing
    from security.store import PrincipalStore

    settings = predict_module.settings
    registry = ModelRegistry.load(settings.model_dir)
    config = load_smoothing(MODELS / "breast-cancer" / "defences.json")
    assert config is not None
    client = boto3.client("dynamodb", endpoint_url=handler_env["AWS_ENDPOINT_URL_DYNAMODB"])
    app = create_app(
        settings=settings,
        registry=registry,
        schemas=schemas_for(registry, registry.names, margin=settings.envelope_margin),
        authenticator=Authenticator(settings=settings, token_verifier=None),
        gatekeeper=Gatekeeper(
            store=PrincipalStore(client=client, table_name=settings.table_name),
            settings=settings,
        ),
        audit=AuditLog(service=settings.service_name),
        squeezer=Squeezer.from_manifest(
            settings.model_dir, [(m.name, m.version) for m in registry], policy="flag"
        ),
        smoother=Smoother(
            {"breast-cancer": dataclasses.replace(config, enabled=True)},
            secret=settings.smoothing_secret,
        ),
    )
    return Mangum(app, lifespan="off")


def _call(handler: Any, event: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = handler(json.loads(json.dumps(event)), LambdaContext())
    return response


def _request(keys: dict[str, str], rows: list[list[float]]) -> dict[str, Any]:
    body = json.dumps({"instances": rows}).encode()
    headers = {"Content-Type": "application/json", "X-API-Key": keys["API_KEY"]}
    return rest_event(path=PATH, body=body, headers=headers)


def test_the_radius_goes_to_the_audit_record_and_never_to_the_client(
    smoothed_handler, keys, log_sink
) -> None:  # type: ignore[no-untyped-def]
    rows = _rows(3, 1)
    # when a smoothed model answers three rows
    response = _call(smoothed_handler, _request(keys, rows))
    # then the response carries predictions and nothing about the radius
    assert response["statusCode"] == 200
    body = response_body(response)
    assert len(body["predictions"]) == 3
    text = json.dumps(body) + json.dumps(response.get("headers") or {})
    text += json.dumps(response.get("multiValueHeaders") or {})
    assert "radius" not in text.lower() and "certified" not in text.lower()
    # and the request's audit record holds one non-negative radius per row
    request_id = header(response, "X-Request-Id")
    records = [r for r in log_sink.audit_records() if r["request_id"] == request_id]
    assert len(records) == 1
    radii = records[0]["certified_radius"]
    assert len(radii) == 3 and all(isinstance(r, float) and r >= 0 for r in radii)


def test_repeating_a_query_returns_the_same_answer(smoothed_handler, predict_module, keys) -> None:  # type: ignore[no-untyped-def]
    rows = _rows(4, 2)
    first = response_body(_call(smoothed_handler, _request(keys, rows)))
    second = response_body(_call(smoothed_handler, _request(keys, rows)))
    assert first["predictions"] == second["predictions"]
    # and the answer is the smoothed one: not the plain model's probabilities
    plain = response_body(invoke(predict_module, _request(keys, rows)))
    assert first["predictions"] != plain["predictions"]


def test_a_model_without_smoothing_logs_no_radius(predict_module, keys, log_sink) -> None:  # type: ignore[no-untyped-def]
    # the shipped handler: the committed calibrations leave smoothing off
    defences = json.loads((MODELS / "iris" / "defences.json").read_text())
    assert defences["smoothing"]["enabled"] is False
    body = json.dumps({"features": [5.1, 3.5, 1.4, 0.2]}).encode()
    headers = {"Content-Type": "application/json", "X-API-Key": keys["API_KEY"]}
    response = invoke(predict_module, rest_event(path="/predict", body=body, headers=headers))
    assert response["statusCode"] == 200
    request_id = header(response, "X-Request-Id")
    records = [r for r in log_sink.audit_records() if r["request_id"] == request_id]
    assert len(records) == 1 and "certified_radius" not in records[0]
