"""`start-api`: HTTP requests become REST v1 proxy events, run on warm per-function instances."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from echo_app import lay_out_echo_app

from mlmoat.local.api import LocalApi, QueuePoller
from mlmoat.local.bootstrap import bootstrap
from mlmoat.local.server import free_port
from mlmoat.local.template import Template
from mlmoat.local.workers import FunctionLayout, WorkerPool


def _request(
    api: LocalApi,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPResponse, bytes]:
    host, port = api.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response, response.read()
    finally:
        connection.close()


@pytest.fixture()
def echo_api(tmp_path: Path) -> Iterator[LocalApi]:
    template = Template(lay_out_echo_app(tmp_path), endpoint="http://127.0.0.1:9")
    build = tmp_path / ".aws-sam" / "build"
    layouts = {
        name: FunctionLayout(template, build, name, host_environ=dict(os.environ))
        for name in ("EchoFunction", "SlowFunction")
    }
    api = LocalApi(template, layouts, port=free_port()).start()
    try:
        yield api
    finally:
        api.stop()


def test_a_request_becomes_the_rest_proxy_event_api_gateway_sends(echo_api: LocalApi) -> None:
    # When a client POSTs a binary body to a parameterised route
    status, response, payload = _request(
        echo_api, "POST", "/echo/alice?x=1&x=2", body=b"\xff\x00raw",
        headers={"Content-Type": "application/octet-stream", "X-Multi": "one"},
    )  # fmt: skip
    # Then the function answered through API Gateway's proxy contract
    assert status == 201
    report = json.loads(payload)
    event = report["event"]
    assert event["resource"] == "/echo/{name}"
    assert event["path"] == "/echo/alice"
    assert event["httpMethod"] == "POST"
    assert event["pathParameters"] == {"name": "alice"}
    assert event["query"] == {"x": "2"}
    assert event["multiValueHeaders"]["X-Multi"] == ["one"]
    # a body that is not UTF-8 arrives base64-encoded
    assert event["isBase64Encoded"] is True
    assert event["body"] == b"\xff\x00raw".hex()
    context = event["requestContext"]
    assert context["resourcePath"] == "/echo/{name}"
    assert context["stage"] == "test"
    assert context["path"] == "/test/echo/alice"
    assert context["identity"]["sourceIp"] == "127.0.0.1"
    # and the request id the function saw is the one returned to the client
    assert response.getheader("x-amzn-RequestId") == context["requestId"]
    assert response.getheader("X-Echo") == "1"
    assert sorted(v.strip() for v in response.headers.get_all("Set-Cookie") or []) == ["a=1", "b=2"]


def test_requests_reuse_one_warm_instance(echo_api: LocalApi) -> None:
    # When the same function is called three times
    reports = [json.loads(_request(echo_api, "GET", "/echo")[2]) for _ in range(3)]
    # Then one process served them all (one cold start), like a warm Lambda instance
    assert len({report["pid"] for report in reports}) == 1
    assert [report["invocations"] for report in reports] == [1, 2, 3]


def test_an_unknown_route_gets_api_gateways_answer(echo_api: LocalApi) -> None:
    status, _, payload = _request(echo_api, "DELETE", "/echo")
    assert status == 403
    assert json.loads(payload) == {"message": "Missing Authentication Token"}
    status, _, _ = _request(echo_api, "GET", "/nowhere")
    assert status == 403


def _signed(
    api: LocalApi, path: str, body: bytes, *, secret: str = "testing", when: Any = None
) -> dict[str, str]:
    request = AWSRequest(method="POST", url=api.url + path, data=body)
    request.headers["Content-Type"] = "application/json"
    signer = SigV4Auth(Credentials("testing", secret), "execute-api", api.region)
    if when is None:
        signer.add_auth(request)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            signer.add_auth(request)
    return dict(request.headers.items())


def test_aws_iam_routes_take_only_sigv4_signed_requests(echo_api: LocalApi) -> None:
    body = b'{"owner": "ops"}'
    # an unsigned request never reaches the function (API Gateway's answer)
    status, _, payload = _request(echo_api, "POST", "/signed/alice", body=body)
    assert status == 403 and json.loads(payload) == {"message": "Missing Authentication Token"}
    # a request signed with the local credentials does, with the signer as its IAM identity
    headers = _signed(echo_api, "/signed/alice?x=1", body)
    status, _, payload = _request(echo_api, "POST", "/signed/alice?x=1", body=body, headers=headers)
    assert status == 201
    identity = json.loads(payload)["event"]["requestContext"]["identity"]
    assert identity["userArn"] == "arn:aws:iam::123456789012:user/testing"
    assert identity["accessKey"] == "testing"
    # a tampered body, another secret, an old signature or a bearer token are refused
    refused = [
        (b'{"owner": "root"}', headers),
        (body, _signed(echo_api, "/signed/alice", body, secret="guess")),
        (body, _signed(echo_api, "/signed/alice", body, when=datetime(2020, 1, 1, tzinfo=UTC))),
        (body, {"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}),
    ]
    for sent, with_headers in refused:
        status, _, _ = _request(echo_api, "POST", "/signed/alice", body=sent, headers=with_headers)
        assert status == 403


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_aws_sigv4_is_accepted(echo_api: LocalApi) -> None:
    # the signer an operator types (curl 7.75+): what `make local` prints for the admin API
    done = subprocess.run(  # noqa: S603 - a fixed command line
        [
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
            "-H", "Content-Type: application/json", "-d", '{"owner": "ops"}',
            "--aws-sigv4", f"aws:amz:{echo_api.region}:execute-api", "--user", "testing:testing",
            echo_api.url + "/signed/bob",
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.stdout == "201"


def test_sqs_poller_delivers_batches_and_keeps_failed_records(
    tmp_path: Path, moto_server: Any
) -> None:
    # Given the echo app's tables and queue at a real moto server
    template = Template(lay_out_echo_app(tmp_path), endpoint=moto_server.endpoint)
    bootstrap(template)
    layout = FunctionLayout(
        template, tmp_path / ".aws-sam" / "build", "SinkFunction", host_environ=moto_server.env
    )
    pool = WorkerPool(layout)
    sqs = boto3.client("sqs", endpoint_url=moto_server.endpoint, region_name="us-east-1")
    url = template.queue_url("Queue")
    sqs.purge_queue(QueueUrl=url)
    for body in ("alpha", "fail", "beta"):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    poller = QueuePoller(template, pool, "Queue", batch_size=5)
    try:
        # When the poller takes one batch
        received = 0
        for _ in range(5):
            received += poller.poll_once()
            if received >= 3:
                break
    finally:
        pool.stop()
    # Then the handler wrote the good records and the failed one stays in the queue
    assert received == 3
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_server.endpoint, region_name="us-east-1")
    table = template.physical_name("Table")
    for body in ("alpha", "beta"):
        item = dynamodb.get_item(TableName=table, Key={"pk": {"S": body}})["Item"]
        assert item["source"] == {"S": "aws:sqs"}
    assert "Item" not in dynamodb.get_item(TableName=table, Key={"pk": {"S": "fail"}})
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert int(attributes["ApproximateNumberOfMessagesNotVisible"]) == 1
    assert int(attributes["ApproximateNumberOfMessages"]) == 0


def test_the_access_log_drops_query_strings_and_escapes_control_characters(
    echo_api: LocalApi, capfd: pytest.CaptureFixture[str]
) -> None:
    import socket

    secret = "mlmoat_querystringkey_" + "Z" * 20
    # Given a request whose query carries a key, and a raw request line with an escape sequence
    _request(echo_api, "GET", f"/nowhere?api_key={secret}")
    host, port = echo_api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /x\x1b[2J\x07 HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(4096)
    # Then the access log names neither the key nor a raw control character
    err = capfd.readouterr().err
    assert "/nowhere?[query omitted]" in err
    assert secret not in err and "api_key" not in err
    assert "\x1b" not in err and "\x07" not in err
    assert "\\x1b[2J\\x07" in err


def test_a_port_in_use_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    # Given a port another process serves on (another `make local`, say)
    import socket
    import subprocess
    import sys

    from mlmoat.local.awsenv import LocalEnvironmentError

    template = Template(lay_out_echo_app(tmp_path), endpoint="http://127.0.0.1:9")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # then serving on it says which address and what to do
        with pytest.raises(LocalEnvironmentError, match=f"127.0.0.1:{port}.*--port"):
            LocalApi(template, {}, port=port)
        # and the command exits 2 with that one line, no traceback
        done = subprocess.run(
            [sys.executable, "-m", "mlmoat.cli", "local", "--template",
             str(tmp_path / "template.yaml"), "start-api", "--no-build", "--port", str(port)],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env={**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:9"},
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
