"""The runtime defences document through the predict handler (Mangum, moto server over HTTP).

Under `make test-py313` this runs the Lambda build's own ``security`` package under CPython 3.13:
the runtime reader imports and works in what ships. The app is the function's own wiring
(``build_predict_app``) with the runtime document configured and a cache age of 1 s.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import numpy as np
from handlersupport import LambdaContext, header, response_body, rest_event
from mangum import Mangum

REPO = Path(__file__).resolve().parents[2]
MAX_AGE_S = 1


def _flagged_row(registry: Any) -> list[float]:
    from security.defences import Squeezer

    model = registry.get("iris")
    squeezer = Squeezer.from_manifest(REPO / "models", [("iris", model.version)], policy="flag")
    manifest = json.loads((REPO / "models" / "iris" / "manifest.json").read_text())
    lower = np.array([manifest["envelope"][name]["min"] for name in manifest["feature_names"]])
    upper = np.array([manifest["envelope"][name]["max"] for name in manifest["feature_names"]])
    rows = np.round(lower + np.random.default_rng(0).random((400, 4)) * (upper - lower), 3)
    flagged = np.flatnonzero(squeezer.check(model, rows).flagged_mask)
    assert flagged.size, "no candidate row is flagged: the calibration changed"
    return [float(v) for v in rows[flagged[0]]]


def test_the_runtime_document_switches_the_policy_and_a_malformed_one_is_a_503(
    predict_module: Any, handler_env: dict[str, str], keys: dict[str, str], log_sink: Any
) -> None:
    from security.audit import AuditLog
    from security.model import ModelRegistry
    from security.wiring import Clients, build_predict_app

    endpoint = handler_env["AWS_ENDPOINT_URL_DYNAMODB"]
    name = f"/handlers-{uuid.uuid4().hex[:8]}/runtime-config"
    ssm = boto3.client("ssm", endpoint_url=endpoint, region_name="us-east-1")
    ssm.put_parameter(Name=name, Value="{}", Type="String")
    settings = dataclasses.replace(
        predict_module.settings,
        squeeze_policy="flag",
        runtime_config_parameter=name,
        runtime_config_max_age_seconds=MAX_AGE_S,
    )
    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    app = build_predict_app(
        settings,
        Clients(dynamodb=dynamodb, ssm=ssm),
        audit=AuditLog(service=settings.service_name),
    )
    handler = Mangum(app, lifespan="off")
    row = _flagged_row(ModelRegistry.load(settings.model_dir))

    def call() -> tuple[int, Any, dict[str, Any], dict[str, Any]]:
        body = json.dumps({"features": row}).encode()
        event = rest_event(
            path="/predict",
            body=body,
            headers={"Content-Type": "application/json", "X-API-Key": keys["API_KEY"]},
        )
        response = handler(json.loads(json.dumps(event)), LambdaContext())
        request_id = header(response, "X-Request-Id")
        (record,) = [r for r in log_sink.audit_records() if r["request_id"] == request_id]
        return response["statusCode"], response_body(response), response, record

    def switch(value: str) -> None:
        ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=True)
        time.sleep(MAX_AGE_S + 0.1)

    try:
        # no runtime value: the deploy-time flag answers and audits the flagged row
        status, body, _, record = call()
        assert status == 200, body
        assert "squeeze_flagged:1" in record["flags"]
        # refuse at run time
        switch('{"squeeze_policy":"refuse"}')
        status, body, _, record = call()
        assert (status, body["error"]["code"], record["reason"]) == (
            422, "input_refused", "adversarial_input",
        )  # fmt: skip
        # the model's own value wins: off for iris, not even scored
        switch('{"models":{"iris":{"squeeze_policy":"off"}},"squeeze_policy":"refuse"}')
        status, body, _, record = call()
        assert status == 200, body
        assert not [f for f in record.get("flags", []) if f.startswith("squeeze_flagged")]
        # a malformed document: 503 with Retry-After, generic, audited with its reason
        switch('{"squeeze_policy":"refuze"}')
        status, body, response, record = call()
        assert status == 503
        assert body["error"]["code"] == "service_unavailable"
        assert int(header(response, "Retry-After") or 0) >= 1
        assert "refuze" not in json.dumps(response) and name not in json.dumps(response)
        assert (record["status"], record["decision"], record["reason"]) == (
            503, "deny", "runtime_config_invalid",
        )  # fmt: skip
    finally:
        ssm.delete_parameter(Name=name)
