"""Regenerate the API Gateway event fixtures with ``sam local generate-event``.

Usage (from the repo root; needs the SAM CLI, e.g. ``.venv-sam/bin/sam``)::

    .venv/bin/python events/generate.py [--sam PATH]

Each fixture starts as exactly what ``sam local generate-event apigateway aws-proxy`` (REST API,
payload v1, base64 body) or ``apigateway http-api-proxy`` (HTTP API, payload v2) prints for its
method, path and body. The script then only sets what API Gateway would fill in for that request:
the ``Content-Type`` and credential headers (in ``headers`` and, for v1, ``multiValueHeaders``),
the REST ``pathParameters`` of the route, and, for the ``-plain`` cases, a body that is not base64.
Credentials are placeholders (``${API_KEY}`` ...) that the tests substitute (events/README.md).
``expected.json`` maps every fixture to the status it must produce.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JSON = "application/json"
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
# The IAM caller of the signed admin fixtures: the AWS documentation's example access key, an
# operator in the account SAM's fixtures use.
IAM_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
IAM_USER_ARN = "arn:aws:iam::123456789012:user/ops-alice"
AMZ_DATE = "20150409T123456Z"
SIGV4_AUTHORIZATION = (
    f"AWS4-HMAC-SHA256 Credential={IAM_ACCESS_KEY}/20150409/us-east-1/execute-api/aws4_request, "
    "SignedHeaders=host;x-amz-date, "
    "Signature=0000000000000000000000000000000000000000000000000000000000000000"
)
IRIS_BATCH = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]


def _midpoints(model: str) -> list[float]:
    manifest = json.loads((REPO / "models" / model / "manifest.json").read_text())
    envelope = manifest["envelope"]
    return [
        round((envelope[name]["min"] + envelope[name]["max"]) / 2, 4)
        for name in manifest["feature_names"]
    ]


def _cases() -> list[dict[str, Any]]:
    predict, by_model = "/predict", "/models/{model}/predict"
    key = {"Content-Type": JSON, "X-API-Key": "${API_KEY}"}
    one = json.dumps({"features": IRIS_ROW})
    cancer = _midpoints("breast-cancer")
    cases: list[dict[str, Any]] = [
        {
            "name": "predict-ok-single",
            "path": predict,
            "resource": predict,
            "headers": key,
            "body": one,
            "status": 200,
        },
        {
            "name": "predict-ok-single-plain",
            "path": predict,
            "resource": predict,
            "headers": key,
            "body": one,
            "status": 200,
            "plain": True,
        },
        {
            "name": "predict-ok-batch",
            "path": predict,
            "resource": predict,
            "headers": key,
            "body": json.dumps({"instances": IRIS_BATCH}),
            "status": 200,
        },
        {
            "name": "models-iris-ok-single",
            "path": "/models/iris/predict",
            "resource": by_model,
            "headers": key,
            "body": one,
            "status": 200,
        },
        {
            "name": "models-breast-cancer-ok-batch",
            "path": "/models/breast-cancer/predict",
            "resource": by_model,
            "headers": key,
            "body": json.dumps({"instances": [cancer, cancer]}),
            "status": 200,
        },
        {
            "name": "predict-label-only",
            "path": predict,
            "resource": predict,
            "headers": {"Content-Type": JSON, "X-API-Key": "${LABEL_API_KEY}"},
            "body": one,
            "status": 200,
        },
        {
            "name": "predict-missing-key",
            "path": predict,
            "resource": predict,
            "headers": {"Content-Type": JSON},
            "body": one,
            "status": 401,
        },
        {
            "name": "predict-bad-key",
            "path": predict,
            "resource": predict,
            "headers": {"Content-Type": JSON, "X-API-Key": "${UNKNOWN_API_KEY}"},
            "body": one,
            "status": 401,
        },
        {
            "name": "predict-malformed-key",
            "path": predict,
            "resource": predict,
            "headers": {"Content-Type": JSON, "X-API-Key": "not-a-real-key"},
            "body": one,
            "status": 401,
        },
        {
            "name": "predict-wrong-scope",
            "path": predict,
            "resource": predict,
            "headers": {"Content-Type": JSON, "X-API-Key": "${SCOPED_API_KEY}"},
            "body": one,
            "status": 403,
        },
        {
            "name": "predict-invalid-features",
            "path": predict,
            "resource": predict,
            "headers": key,
            "body": json.dumps({"features": [5.1, 3.5, "1.4", 0.2]}),
            "status": 422,
        },
        {
            "name": "predict-outside-envelope",
            "path": predict,
            "resource": predict,
            "headers": key,
            "body": json.dumps({"features": [51.0, 3.5, 1.4, 0.2]}),
            "status": 422,
        },
        {
            "name": "predict-malformed-json",
            "path": predict,
            "resource": predict,
            "headers": key,
            "body": '{"features": [5.1, 3.5,',
            "status": 400,
        },
        {
            "name": "predict-wrong-content-type",
            "path": predict,
            "resource": predict,
            "headers": {"Content-Type": "text/plain", "X-API-Key": "${API_KEY}"},
            "body": one,
            "status": 415,
        },
        {
            "name": "predict-too-many-rows",
            "path": predict,
            "resource": predict,
            "headers": key,
            "body": json.dumps({"instances": [IRIS_ROW] * 101}),
            "status": 413,
        },
        {
            "name": "models-unknown",
            "path": "/models/no-such-model/predict",
            "resource": by_model,
            "headers": key,
            "body": one,
            "status": 404,
        },
        {
            "name": "predict-rate-limited",
            "path": predict,
            "resource": predict,
            "headers": {"Content-Type": JSON, "X-API-Key": "${LIMITED_API_KEY}"},
            "body": json.dumps({"instances": IRIS_BATCH[:2]}),
            "status": 429,
        },
    ]
    # Admin routes are AWS_IAM: API Gateway verified the SigV4 signature and passes the signed
    # request's Authorization header on, with the caller in requestContext.identity.
    admin = {"Content-Type": JSON, "Authorization": SIGV4_AUTHORIZATION, "X-Amz-Date": AMZ_DATE}
    signed = {"Authorization": SIGV4_AUTHORIZATION, "X-Amz-Date": AMZ_DATE}
    cases += [
        {
            "name": "admin-keys-create",
            "path": "/admin/keys",
            "resource": "/admin/keys",
            "headers": admin,
            "iam": True,
            "status": 201,
            "body": json.dumps(
                {
                    "owner": "fixture-owner",
                    "scopes": ["predict:iris"],
                    "rate_limit": "60/minute",
                    "output_policy": "probabilities:2",
                }
            ),
        },
        {
            "name": "admin-keys-list",
            "path": "/admin/keys",
            "resource": "/admin/keys",
            "method": "GET",
            "headers": signed,
            "iam": True,
            "status": 200,
        },
    ]
    for action, method in (
        ("show", "GET"),
        ("usage", "GET"),
        ("suspend", "POST"),
        ("reinstate", "POST"),
        ("rotate", "POST"),
        ("revoke", "POST"),
    ):
        suffix = "" if action == "show" else f"/{action}"
        cases.append(
            {
                "name": f"admin-key-{action}",
                "path": f"/admin/keys/${{KEY_ID}}{suffix}",
                "resource": f"/admin/keys/{{key_id}}{suffix}",
                "method": method,
                "headers": admin if method == "POST" else signed,
                "iam": True,
                "body": "{}" if method == "POST" else "",
                "status": 200,
            }
        )
    for action, method, status in (
        ("show", "GET", 200),
        ("suspend", "POST", 200),
        ("reinstate", "POST", 200),
    ):
        suffix = "" if action == "show" else f"/{action}"
        cases.append(
            {
                "name": f"admin-subject-{action}",
                "path": f"/admin/subjects/${{SUBJECT}}{suffix}",
                "resource": f"/admin/subjects/{{subject}}{suffix}",
                "method": method,
                "headers": signed,
                "iam": True,
                "query": {"issuer": "${ISSUER}"},
                "status": status,
            }
        )
    cases += [
        {
            # What reaches the function if a route were deployed without AWS_IAM: a prediction
            # key (or a token with scope admin) is never an admin credential.
            "name": "admin-keys-list-with-api-key",
            "path": "/admin/keys",
            "resource": "/admin/keys",
            "method": "GET",
            "headers": {"X-API-Key": "${API_KEY}"},
            "status": 403,
        },
        {
            "name": "admin-keys-list-unsigned",
            "path": "/admin/keys",
            "resource": "/admin/keys",
            "method": "GET",
            "headers": {},
            "status": 403,
        },
    ]
    return cases


def _sam(sam: str, kind: str, case: dict[str, Any], stage: str) -> dict[str, Any]:
    command = [
        sam,
        "local",
        "generate-event",
        "apigateway",
        kind,
        "--method",
        case.get("method", "POST"),
        "--path",
        case["path"].lstrip("/"),
        "--stage",
        stage,
        "--body",
        case.get("body", ""),
    ]
    if kind == "aws-proxy":
        command += ["--resource", case["resource"]]
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env)  # noqa: S603
    event: dict[str, Any] = json.loads(output.stdout)
    return event


def _path_parameters(resource: str, path: str) -> dict[str, str] | None:
    names = resource.strip("/").split("/")
    values = path.strip("/").split("/")
    found = {n[1:-1]: v for n, v in zip(names, values, strict=True) if n.startswith("{")}
    return found or None


def _rest(sam: str, case: dict[str, Any]) -> dict[str, Any]:
    event = _sam(sam, "aws-proxy", case, "dev")
    for name, value in case["headers"].items():
        event["headers"][name] = value
        event["multiValueHeaders"][name] = [value]
    event["pathParameters"] = _path_parameters(case["resource"], case["path"])
    if "query" in case:
        event["queryStringParameters"] = dict(case["query"])
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in case["query"].items()}
    if case.get("iam"):
        event["requestContext"]["identity"].update(
            {
                "accountId": "123456789012",
                "accessKey": IAM_ACCESS_KEY,
                "caller": "AIDAEXAMPLEOPSALICE",
                "user": "AIDAEXAMPLEOPSALICE",
                "userArn": IAM_USER_ARN,
            }
        )
    if case.get("plain"):
        event["body"] = base64.b64decode(event["body"]).decode("utf-8")
        event["isBase64Encoded"] = False
    if not case.get("body"):
        event["body"], event["isBase64Encoded"] = None, False
    return event


def _http(sam: str, case: dict[str, Any]) -> dict[str, Any]:
    event = _sam(sam, "http-api-proxy", case, "$default")
    # HTTP API lower-cases header names in the payload v2 event.
    for name, value in case["headers"].items():
        event["headers"][name.lower()] = value
    if "query" in case:
        event["queryStringParameters"] = dict(case["query"])
        event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in case["query"].items())
    if case.get("iam"):
        # An IAM-authorised HTTP API request carries the IAM caller, not SAM's sample JWT.
        authorizer = event["requestContext"].setdefault("authorizer", {})
        authorizer.pop("jwt", None)
        authorizer["iam"] = {
            "accessKey": IAM_ACCESS_KEY,
            "accountId": "123456789012",
            "callerId": "AIDAEXAMPLEOPSALICE",
            "principalOrgId": None,
            "userArn": IAM_USER_ARN,
            "userId": "AIDAEXAMPLEOPSALICE",
        }
    if not case.get("body"):
        event.pop("body", None)
        event["isBase64Encoded"] = False
    return event


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", default=str(REPO / ".venv-sam" / "bin" / "sam"))
    parser.add_argument("--only", default="", help="regenerate the cases whose name starts so")
    args = parser.parse_args()
    sam = args.sam if Path(args.sam).exists() else shutil.which("sam")
    if sam is None:
        parser.error("the SAM CLI is not installed (make venv-sam, or pass --sam)")
    expected: dict[str, int] = json.loads((HERE / "expected.json").read_text())
    names = {case["name"] for case in _cases()}
    # Fixtures of cases that no longer exist are removed.
    for stale in [k for k in expected if k.split("/", 1)[1].removesuffix(".json") not in names]:
        (HERE / stale).unlink(missing_ok=True)
        del expected[stale]
    for case in _cases():
        if not case["name"].startswith(args.only):
            continue
        for api, build in (("rest", _rest), ("http", _http)):
            if api == "http" and case.get("plain"):
                continue
            target = HERE / api / f"{case['name']}.json"
            target.parent.mkdir(exist_ok=True)
            target.write_text(json.dumps(build(sam, case), indent=2) + "\n")
            expected[f"{api}/{case['name']}.json"] = case["status"]
    (HERE / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
