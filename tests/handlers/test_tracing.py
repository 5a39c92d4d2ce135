"""X-Ray tracing: every AWS call of a function is a subsegment; nothing secret is in a trace.

The traced run is a Lambda cold start in a child process (``LAMBDA_TASK_ROOT`` and the
invocation's ``_X_AMZN_TRACE_ID`` set, as the Lambda runtime sets them), with the X-Ray daemon
address pointing at a UDP socket of the test: what the socket receives is what X-Ray would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
from typing import Any

import pytest
from handlersupport import REPO, load_event, new_key

from interpreter import PATH_ENV, PYTHON
from security.tracing import tracing_enabled

TRACE_ROOT = "1-67a8c3f1-5b2d9e0c4a7f3b1d8e6c2a90"
TRACE_HEADER = f"Root={TRACE_ROOT};Parent=53995c3f42cd8ad8;Sampled=1"

_CHILD = textwrap.dedent(
    """
    import json, sys
    import handlers.predict as predict

    class Context:
        function_name = "PredictFunction"
        function_version = "$LATEST"
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:PredictFunction"
        memory_limit_in_mb = 1024
        aws_request_id = "7f2b4c1e-0000-4000-8000-000000000001"
        log_group_name = "/aws/lambda/PredictFunction"
        log_stream_name = "local"

        def get_remaining_time_in_millis(self):
            return 10000

    response = predict.handler(json.loads(sys.stdin.read()), Context())
    print(json.dumps({"status": response["statusCode"]}))
    """
)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"LAMBDA_TASK_ROOT": "/var/task"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "0"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, False),
        ({}, False),
    ],
)
def test_tracing_is_on_in_lambda_only_and_can_be_switched_off(
    environ: dict[str, str], expected: bool
) -> None:
    assert tracing_enabled(environ) is expected


def _segments(sock: socket.socket) -> list[dict[str, Any]]:
    documents = []
    sock.settimeout(0.5)
    while True:
        try:
            datagram = sock.recv(65536)
        except TimeoutError:
            return documents
        header, _, body = datagram.decode().partition("\n")
        assert json.loads(header) == {"format": "json", "version": 1}
        documents.append(json.loads(body))


def test_a_traced_prediction_sends_its_dynamodb_and_sqs_calls_as_subsegments(
    handler_env: dict[str, str], admin: Any
) -> None:
    # given a predict function starting in a Lambda environment with an X-Ray daemon address
    created = new_key(admin)
    event = load_event("rest/predict-ok-single.json", {"API_KEY": created["api_key"]})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as daemon:
        daemon.bind(("127.0.0.1", 0))
        port = daemon.getsockname()[1]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **PATH_ENV,
            **handler_env,
            "LAMBDA_TASK_ROOT": str(REPO / "src"),
            "AWS_LAMBDA_FUNCTION_NAME": "PredictFunction",
            "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{port}",
            "_X_AMZN_TRACE_ID": TRACE_HEADER,
        }
        # when it answers one request
        child = subprocess.run(
            [PYTHON, "-c", _CHILD],
            input=json.dumps(event),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == 0, child.stderr[-3000:]
        assert json.loads(child.stdout.strip().splitlines()[-1]) == {"status": 200}
        documents = _segments(daemon)
    # then the counting UpdateItem and the monitor's SendMessageBatch reached X-Ray as
    # subsegments of the invocation's trace
    calls = {
        (doc["name"], doc.get("aws", {}).get("operation"))
        for doc in documents
        if doc.get("namespace") == "aws"
    }
    assert ("dynamodb", "UpdateItem") in calls, documents
    assert ("sqs", "SendMessageBatch") in calls, documents
    assert {doc["trace_id"] for doc in documents} == {TRACE_ROOT}
    # and nothing secret is in any of them: no key, no item, no message body
    sent = json.dumps(documents)
    assert created["api_key"] not in sent
    assert created["key_id"] not in sent
    assert "X-API-Key" not in sent and "features" not in sent
    # and the audit record names the same trace
    audit = [
        json.loads(line)
        for line in child.stderr.splitlines() + child.stdout.splitlines()
        if line.startswith("{") and '"message": "audit"' in line.replace('":"', '": "')
    ]
    assert [record["xray_trace_id"] for record in audit] == [TRACE_ROOT]
    assert created["api_key"] not in child.stderr + child.stdout


def test_no_tracing_outside_lambda_means_no_x_ray_sdk_loaded(handler_env: dict[str, str]) -> None:
    # The SDK costs about 50 ms of cold start: a disabled tracer must not import it.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **PATH_ENV,
        **handler_env,
        "LAMBDA_TASK_ROOT": str(REPO / "src"),
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    code = "import sys, handlers.predict; print('aws_xray_sdk' in sys.modules)"
    out = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
