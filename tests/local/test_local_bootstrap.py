"""`mlmoat local bootstrap` creates template.yaml's tables and queues, idempotently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from mlmoat.local.server import EmbeddedDynamoDB, free_port
from mlmoat.local.template import Template


@pytest.fixture()
def fresh_server() -> Iterator[EmbeddedDynamoDB]:
    """A moto server of this test's own, so "created" really means created now."""
    server = EmbeddedDynamoDB().start()
    try:
        yield server
    finally:
        server.stop()


def _bootstrap(endpoint: str) -> dict[str, Any]:
    env = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": endpoint}
    result = subprocess.run(
        [sys.executable, "-m", "mlmoat.cli", "local", "bootstrap"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_bootstrap_is_idempotent(fresh_server: EmbeddedDynamoDB) -> None:
    # When bootstrap runs twice against an empty endpoint
    first = _bootstrap(fresh_server.endpoint)
    second = _bootstrap(fresh_server.endpoint)
    # Then the first run created the table, the second found it, and both know the queues
    assert first["created"] == ["mlmoat-local-SecurityTable"]
    assert first["existing"] == []
    assert second["created"] == []
    assert second["existing"] == ["mlmoat-local-SecurityTable"]
    assert first["queues"] == second["queues"]
    assert set(first["queues"]) == {"ExtractionQueue", "ExtractionDeadLetterQueue"}


def test_bootstrapped_table_matches_the_template(
    fresh_server: EmbeddedDynamoDB, repo_root: Any
) -> None:
    # Given a bootstrapped endpoint
    _bootstrap(fresh_server.endpoint)
    template = Template(repo_root / "template.yaml").document
    props = template["Resources"]["SecurityTable"]["Properties"]
    client = boto3.client("dynamodb", endpoint_url=fresh_server.endpoint, region_name="us-east-1")
    # Then the table has the template's key schema, billing mode and TTL attribute
    table = client.describe_table(TableName="mlmoat-local-SecurityTable")["Table"]
    assert table["KeySchema"] == props["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == props["AttributeDefinitions"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = client.describe_time_to_live(TableName="mlmoat-local-SecurityTable")[
        "TimeToLiveDescription"
    ]
    assert ttl["TimeToLiveStatus"] == "ENABLED"
    assert ttl["AttributeName"] == props["TimeToLiveSpecification"]["AttributeName"] == "ttl"


def test_bootstrapped_queue_redrives_to_its_dead_letter_queue(
    fresh_server: EmbeddedDynamoDB,
) -> None:
    report = _bootstrap(fresh_server.endpoint)
    sqs = boto3.client("sqs", endpoint_url=fresh_server.endpoint, region_name="us-east-1")
    attributes = sqs.get_queue_attributes(
        QueueUrl=report["queues"]["ExtractionQueue"], AttributeNames=["All"]
    )["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(":mlmoat-local-ExtractionDeadLetterQueue")
    assert int(redrive["maxReceiveCount"]) == 5
    assert attributes["VisibilityTimeout"] == "200"


def test_bootstrap_without_an_endpoint_says_what_to_do() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "mlmoat.cli", "local", "bootstrap"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "AWS_ENDPOINT_URL_DYNAMODB" in result.stderr


def test_local_dynamodb_serves_the_template_tables_and_prints_the_exports() -> None:
    # Given `mlmoat local dynamodb` on a free port
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlmoat.cli", "local", "dynamodb", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        exports: dict[str, str] = {}
        for line in process.stdout:
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").strip().partition("=")
                exports[name] = value
            if line.startswith("# Ctrl-C"):
                break
        # Then the exports point boto3 at it, and the template's table is there
        endpoint = f"http://127.0.0.1:{port}"
        assert exports["AWS_ENDPOINT_URL_DYNAMODB"] == endpoint
        assert exports["AWS_DEFAULT_REGION"] == "us-east-1"
        assert exports["AWS_ACCESS_KEY_ID"] and exports["AWS_SECRET_ACCESS_KEY"]
        client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
        assert "mlmoat-local-SecurityTable" in client.list_tables()["TableNames"]
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
