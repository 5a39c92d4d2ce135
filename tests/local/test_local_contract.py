"""The local contract: every command agrees on the local names and the endpoints it is given.

``mlmoat keys`` right after a bootstrap works with nothing but the printed exports (it used to
default to a table no local command creates and print ``store_unavailable``); a missing table is
named with its endpoint; ``bootstrap`` puts tables on the DynamoDB endpoint and queues on the
SQS endpoint when they are different servers (DynamoDB Local beside ElasticMQ).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest

from mlmoat.local.awsenv import DUMMY_CREDENTIALS
from mlmoat.local.server import free_port, wait_for_port

_SHELL = {
    **DUMMY_CREDENTIALS,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@dataclass(frozen=True)
class _Server:
    endpoint: str


@pytest.fixture()
def two_servers() -> Iterator[tuple[_Server, _Server]]:
    """Two independent, empty moto servers, each in its own process: DynamoDB and SQS.

    (``EmbeddedDynamoDB`` keeps its state in moto's backends, which one process shares.)
    """
    procs, servers = [], []
    try:
        for _ in range(2):
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
            )
            wait_for_port("127.0.0.1", port, timeout=30)
            servers.append(_Server(f"http://127.0.0.1:{port}"))
        yield servers[0], servers[1]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def _mlmoat(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Only what a shell has after pasting the printed exports: no SECURITY_* variable at all.
    base = {"PATH": os.environ["PATH"], **_SHELL}
    return subprocess.run(
        [sys.executable, "-m", "mlmoat.cli", *args],
        capture_output=True, text=True, timeout=90, env={**base, **env}, check=False,
    )  # fmt: skip


def _tables(endpoint: str) -> list[str]:
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    return list(client.list_tables()["TableNames"])


def _queues(endpoint: str) -> list[str]:
    client = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    return sorted(url.rsplit("/", 1)[1] for url in client.list_queues().get("QueueUrls", []))


def test_bootstrap_puts_tables_and_queues_on_their_own_endpoints(
    two_servers: tuple[_Server, _Server],
) -> None:
    dynamodb, sqs = two_servers
    # When bootstrap is told of two endpoints
    result = _mlmoat(
        "local", "bootstrap",
        env={"AWS_ENDPOINT_URL_DYNAMODB": dynamodb.endpoint, "AWS_ENDPOINT_URL_SQS": sqs.endpoint},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # Then the table is on the DynamoDB server only, the queues on the SQS server only
    assert _tables(dynamodb.endpoint) == ["mlmoat-local-SecurityTable"]
    assert _tables(sqs.endpoint) == []
    assert "mlmoat-local-ExtractionQueue" in _queues(sqs.endpoint)
    assert _queues(dynamodb.endpoint) == []
    assert report["queues"]["ExtractionQueue"].startswith(sqs.endpoint)


def test_keys_work_with_only_the_exports_after_a_bootstrap(
    two_servers: tuple[_Server, _Server],
) -> None:
    server, _ = two_servers
    env = {"AWS_ENDPOINT_URL_DYNAMODB": server.endpoint}
    assert _mlmoat("local", "bootstrap", env=env).returncode == 0
    # When a key is created and listed with no table named anywhere
    created = _mlmoat("keys", "create", "--owner", "contract-test", env=env)
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["key_id"]
    listed = _mlmoat("keys", "list", env=env)
    # Then both used the local table every mlmoat local command uses
    assert listed.returncode == 0, listed.stderr
    assert [key["key_id"] for key in json.loads(listed.stdout)] == [key_id]
    item = boto3.client("dynamodb", endpoint_url=server.endpoint, region_name="us-east-1").scan(
        TableName="mlmoat-local-SecurityTable"
    )
    assert item["Count"] >= 1


def test_a_missing_table_is_named_with_its_endpoint(
    two_servers: tuple[_Server, _Server],
) -> None:
    empty, _ = two_servers
    result = _mlmoat("keys", "list", env={"AWS_ENDPOINT_URL_DYNAMODB": empty.endpoint})
    assert result.returncode == 1
    assert json.loads(result.stderr) == {
        "error": f"table_not_found: mlmoat-local-SecurityTable at {empty.endpoint}"
    }


def test_a_remote_endpoint_needs_the_table_named() -> None:
    # No endpoint variable: the real AWS endpoint, where no default table name can be right.
    result = _mlmoat("keys", "list", env={})
    assert result.returncode == 2
    assert "SECURITY_TABLE_NAME" in json.loads(result.stderr)["detail"]
