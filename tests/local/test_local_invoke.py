"""`mlmoat local invoke` runs a function as Lambda does: isolated path, template env, REPORT line.

Uses the echo fixture application (fixtures/echo), laid out as a SAM build in a temp dir, so
these tests exercise the local runtime itself whatever state the real handlers are in.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from echo_app import lay_out_echo_app

from mlmoat import python313

REPORT_RE = re.compile(
    r"^REPORT RequestId: (?P<id>[0-9a-f-]{36})\tDuration: (?P<duration>[0-9.]+) ms\t"
    r"Billed Duration: [0-9]+ ms\tMemory Size: (?P<memory>[0-9]+) MB\t"
    r"Max Memory Used: (?P<used>[0-9]+) MB\tInit Duration: (?P<init>[0-9.]+) ms$",
    re.MULTILINE,
)


def _event(tmp_path: Path, **overrides: Any) -> Path:
    event = {
        "resource": "/echo/{name}",
        "path": "/echo/bob",
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "pathParameters": {"name": "bob"},
        "requestContext": {"requestId": "fixed", "stage": "test"},
        "body": "eyJhIjogMX0=",
        "isBase64Encoded": True,
        **overrides,
    }
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    return path


def _invoke(
    template: Path, function: str, event: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:9",
        "NOT_DECLARED": "from-the-shell",
    }
    return subprocess.run(
        [sys.executable, "-m", "mlmoat.cli", "local", "--template", str(template), "invoke",
         function, "-e", str(event), "--no-build", *extra],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


def test_invoke_prints_the_response_and_a_lambda_report_line(tmp_path: Path) -> None:
    # Given the echo app laid out as a build
    template = lay_out_echo_app(tmp_path)
    # When EchoFunction is invoked with a REST event (base64 body)
    result = _invoke(template, "EchoFunction", _event(tmp_path))
    # Then stdout is exactly the Lambda response JSON
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["statusCode"] == 201
    assert response["headers"]["X-Echo"] == "1"
    report = json.loads(response["body"])
    assert report["event"]["body"] == b'{"a": 1}'.hex()
    assert report["event"]["pathParameters"] == {"name": "bob"}
    # and the handler's own print went to the log (stderr), with a REPORT line after it
    assert "echo: cold start" in result.stderr
    assert "echo: cold start" not in result.stdout
    found = REPORT_RE.search(result.stderr)
    assert found is not None, result.stderr
    assert found["id"] == report["context"]["aws_request_id"]
    assert int(found["memory"]) == 256
    assert int(found["used"]) > 5
    assert float(found["init"]) > 0


def test_invoke_path_holds_only_code_layers_stdlib_and_runtime_boto3(tmp_path: Path) -> None:
    # Given the echo app, whose handler tries to import a host-only package (yaml)
    template = lay_out_echo_app(tmp_path)
    # When it is invoked
    result = _invoke(template, "EchoFunction", _event(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(json.loads(result.stdout)["body"])
    build = tmp_path / ".aws-sam" / "build"
    # Then host packages are invisible, the layer and the runtime's boto3 are importable
    assert report["host_packages_visible"] is False
    assert report["layer"] == "EchoLayer"
    assert report["boto3_from"].startswith(str(python313.runtime_site()))
    # and sys.path is: code dir, layers' python/ dirs in template order, runtime, stdlib
    head = report["sys_path"][:4]
    assert head == [
        str(build / "EchoFunction"),
        str(build / "EchoLayer" / "python"),
        str(build / "DataLayer" / "python"),
        str(python313.runtime_site()),
    ]
    rest = report["sys_path"][4:]
    assert rest, "the standard library must follow"
    assert not any("site-packages" in entry for entry in rest)
    # and the interpreter is the Lambda runtime's: CPython 3.13, the one `make python313` unpacks
    assert report["python"] == [3, 13]
    assert report["executable"].startswith(str(python313.REPO / python313.INSTALL_DIR))


def test_invoke_resolves_the_template_environment(tmp_path: Path) -> None:
    # Given the echo app with Refs to a parameter, a table and a queue, and an /opt path
    template = lay_out_echo_app(tmp_path)
    # When it is invoked
    result = _invoke(template, "EchoFunction", _event(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(json.loads(result.stdout)["body"])
    env = report["env"]
    # Then Refs resolve to local values and /opt/data points into the built DataLayer
    assert env["GREETING"] == "hello"
    assert env["TABLE_NAME"] == "mlmoat-local-Table"
    assert env["QUEUE_URL"] == "http://127.0.0.1:9/123456789012/mlmoat-local-Queue"
    assert env["FUNCTION_ONLY"] == "us-east-1-hello"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "mlmoat-local-EchoFunction"
    assert env["AWS_ENDPOINT_URL_DYNAMODB"] == "http://127.0.0.1:9"
    assert env["NOT_DECLARED"] is None  # the shell's own variables do not leak in
    assert report["data"] == "data from DataLayer"
    assert report["context"]["memory_limit_in_mb"] == 256
    assert 0 < report["context"]["remaining_ms"] <= 5000


def test_env_vars_file_overrides_declared_variables_as_sam_does(tmp_path: Path) -> None:
    # Given an --env-vars file with a global and a function section
    template = lay_out_echo_app(tmp_path)
    env_vars = tmp_path / "env.json"
    env_vars.write_text(json.dumps({
        "Parameters": {"GREETING": "from-parameters", "TABLE_NAME": "global-table"},
        "EchoFunction": {"GREETING": "from-function", "NOT_DECLARED": "ignored"},
    }))  # fmt: skip
    # When the function is invoked with it
    result = _invoke(template, "EchoFunction", _event(tmp_path), "--env-vars", str(env_vars))
    assert result.returncode == 0, result.stderr
    env = json.loads(json.loads(result.stdout)["body"])["env"]
    # Then the function's section wins, Parameters apply to all, undeclared names are ignored
    assert env["GREETING"] == "from-function"
    assert env["TABLE_NAME"] == "global-table"
    assert env["NOT_DECLARED"] is None


def test_a_function_that_overruns_its_timeout_is_stopped(tmp_path: Path) -> None:
    # Given SlowFunction (Timeout: 1) that sleeps 120 s
    template = lay_out_echo_app(tmp_path)
    started = time.monotonic()
    # When it is invoked
    result = _invoke(template, "SlowFunction", _event(tmp_path))
    # Then it fails with Lambda's timeout error, the sleep cut short (the bound is loose on
    # purpose: it proves the kill, not a speed, on a loaded machine)
    assert result.returncode == 1
    assert json.loads(result.stdout)["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in result.stdout
    assert time.monotonic() - started < 60


def test_an_unknown_function_is_refused(tmp_path: Path) -> None:
    template = lay_out_echo_app(tmp_path)
    result = _invoke(template, "NoSuchFunction", _event(tmp_path))
    assert result.returncode == 2
    assert "NoSuchFunction" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("function", ["EchoFunction"])
def test_an_import_error_is_reported_as_lambda_does(tmp_path: Path, function: str) -> None:
    # Given a build where the layer the handler imports is missing
    template = lay_out_echo_app(tmp_path)
    (tmp_path / ".aws-sam" / "build" / "EchoLayer" / "python" / "echolib.py").unlink()
    # When the function is invoked
    result = _invoke(template, function, _event(tmp_path))
    # Then the init error is the response, as Lambda reports Runtime.ImportModuleError
    assert result.returncode == 1
    error = json.loads(result.stdout)
    assert error["errorType"] == "Runtime.ImportModuleError"
    assert "echolib" in error["errorMessage"]
