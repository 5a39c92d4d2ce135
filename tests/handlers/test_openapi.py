"""`mlmoat openapi`: a valid OpenAPI document with schemas and security schemes; no Lambda docs."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from handlersupport import REPO, invoke, rest_event
from openapi_spec_validator import validate

from interpreter import PATH_ENV, PYTHON
from mlmoat.local.awsenv import DUMMY_CREDENTIALS
from mlmoat.openapi import openapi_document


def _document() -> dict[str, Any]:
    return openapi_document(model_dir=str(REPO / "models"), default_model="iris", max_rows=100)


def test_the_document_is_valid_openapi_with_both_routes_and_security_schemes() -> None:
    document = _document()
    validate(document)
    assert set(document["paths"]) == {"/predict", "/models/{model}/predict"}
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert (
        schemes["BearerJWT"]["scheme"] == "bearer" and schemes["BearerJWT"]["bearerFormat"] == "JWT"
    )
    operation = document["paths"]["/predict"]["post"]
    assert operation["security"] == [{"ApiKey": []}, {"BearerJWT": []}]
    assert {"200", "400", "401", "403", "404", "413", "415", "422", "429", "503"} <= set(
        operation["responses"]
    )


def test_request_schemas_follow_each_manifest_and_hide_the_envelope() -> None:
    document = _document()
    schemas = document["components"]["schemas"]
    manifest = json.loads((REPO / "models" / "breast-cancer" / "manifest.json").read_text())
    row, named = schemas["PredictRequest_breast-cancer"]["oneOf"][0]["properties"]["features"][
        "oneOf"
    ]
    assert len(named["required"]) == 30
    assert row["minItems"] == row["maxItems"] == len(manifest["feature_names"]) == 30
    envelope_bound = str(manifest["envelope"][manifest["feature_names"][0]]["max"])
    assert envelope_bound not in json.dumps(schemas["PredictRequest_breast-cancer"])
    assert set(schemas["ErrorEnvelope"]["properties"]) == {"error"}
    assert set(schemas["PredictResponse"]["required"]) == {
        "model",
        "model_version",
        "predictions",
        "request_id",
    }


def test_the_cli_prints_the_document() -> None:
    out = subprocess.run(
        [PYTHON, "-m", "mlmoat.cli", "openapi"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(out.stdout)["info"]["title"] == "mlmoat"


def test_docs_and_openapi_routes_are_disabled_in_lambda(predict_module) -> None:
    for path in ("/docs", "/openapi.json", "/redoc"):
        response = invoke(
            predict_module, rest_event(path=path, body=None, headers={}, method="GET")
        )
        assert response["statusCode"] == 404
        assert json.loads(response["body"])["error"]["code"] == "not_found"


def test_the_lambda_app_does_not_pay_for_openapi_models_at_cold_start() -> None:
    # FastAPI imports pydantic.v1 (~0.5 s) to inspect response models and typed parameters;
    # the Lambda app declares neither, so a cold start never imports it.
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_DEFAULT_REGION": "us-east-1",
        **DUMMY_CREDENTIALS,
        "SECURITY_TABLE_NAME": "cold-start-check",
        "SECURITY_MODEL_DIR": str(REPO / "models"),
        **PATH_ENV,
    }
    code = "import sys, handlers.predict; print('pydantic.v1' in sys.modules)"
    out = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def _admin_routes_in_template() -> set[tuple[str, str]]:
    from mlmoat.local.template import load_template

    events = load_template(REPO / "template.yaml")["Resources"]["AdminFunction"]["Properties"][
        "Events"
    ]
    return {
        (event["Properties"]["Path"], event["Properties"]["Method"].lower())
        for event in events.values()
        if event["Type"] == "Api"
    }


def test_the_admin_document_has_every_routed_admin_operation_behind_sigv4() -> None:
    # given the admin API's document, built from AdminFunction's own wiring
    from mlmoat.openapi import admin_openapi_document

    document = admin_openapi_document()
    validate(document)
    # then its operations are exactly the routes API Gateway sends to AdminFunction
    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    assert operations == _admin_routes_in_template()
    scheme = document["components"]["securitySchemes"]
    assert set(scheme) == {"SigV4"}
    assert scheme["SigV4"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["security"] == [{"SigV4": []}], (path, method)
            # every admin refusal's status is documented on every route, in admin wording
            assert {"400", "403", "404", "409", "413", "422", "500", "503"} <= set(
                operation["responses"]
            ), (path, method)
            assert "administer keys" in operation["responses"]["403"]["description"]
            assert "this model" not in operation["responses"]["403"]["description"]


def test_the_admin_document_states_the_request_bodies_and_every_admin_reason() -> None:
    from mlmoat.openapi import admin_openapi_document
    from security.api.errors import ADMIN_REASON_RESPONSES

    document = admin_openapi_document()
    create = document["paths"]["/admin/keys"]["post"]
    assert create["requestBody"]["required"] is True
    body = document["components"]["schemas"]["CreateKeyBody"]
    assert body["required"] == ["owner"] and body["additionalProperties"] is False
    assert {
        "owner",
        "scopes",
        "rate_limit",
        "budget",
        "output_policy",
        "expires_in",
        "shards",
    } == set(body["properties"])
    rotate = document["paths"]["/admin/keys/{key_id}/rotate"]["post"]
    assert rotate["requestBody"]["required"] is False
    assert "grace" in document["components"]["schemas"]["RotateKeyBody"]["properties"]
    described = json.dumps(create["responses"])
    for entry in ADMIN_REASON_RESPONSES.values():
        assert f"`{entry.code}`: {entry.message}" in described, entry
    assert "201" in create["responses"]


def test_the_cli_prints_the_admin_document() -> None:
    out = subprocess.run(
        [PYTHON, "-m", "mlmoat.cli", "openapi", "--api", "admin"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    document = json.loads(out.stdout)
    assert document["info"]["title"] == "mlmoat admin"
    assert "/admin/keys" in document["paths"] and "/predict" not in document["paths"]
