"""Shared fixtures for every test suite. The names below are stable: other suites rely on them.

Environment (autouse):

- ``aws_dummy_credentials`` (session): ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` set to
  ``testing``, ``AWS_DEFAULT_REGION``/``AWS_REGION`` to ``us-east-1``, and the AWS config and
  credential files pointed at ``/dev/null``, so boto3 can never reach a real account or read a
  developer's profile. Endpoint variables are *not* set globally (see ``dynamodb_endpoint``).
- ``clean_security_env`` (function): removes every ``SECURITY_*`` and ``POWERTOOLS_*`` variable
  before each test (restored afterwards), so no test depends on the shell or on another test.

Local DynamoDB over real HTTP:

- ``moto_server`` (session): the embedded DynamoDB ``mlmoat local dynamodb`` serves
  (``mlmoat.local.server.EmbeddedDynamoDB``: a moto server for DynamoDB, SQS, SSM, ... that
  applies DynamoDB calls one at a time as DynamoDB applies the writes to an item, so limits are
  exact under concurrency) on a free loopback port, started once and stopped at the end of the
  session. Yields a ``MotoServer`` with ``.endpoint`` (``http://127.0.0.1:PORT``) and ``.env``
  (the variables a subprocess needs to use it).
- ``dynamodb_endpoint`` (function): the session server's URL, with ``AWS_ENDPOINT_URL_DYNAMODB``,
  ``AWS_ENDPOINT_URL_SQS`` and ``AWS_ENDPOINT_URL_SSM`` set for this test only.
- ``dynamodb_client`` (function): a low-level boto3 DynamoDB client for that server.
- ``security_table`` (function): a fresh table with ``SecurityTable``'s key schema and TTL
  attribute read from ``template.yaml`` (the same reader ``mlmoat local bootstrap`` uses), under
  a unique name per test (``sec-<hex>``): tests never share counters. Returns the table name.
- ``security_table_definition`` (session): that key schema, attribute definitions and TTL
  attribute, as read from the template.
- ``create_security_table`` (session): ``create(client, name, *, ttl=True)``, the function
  ``security_table`` uses, for suites with their own server or table names (integration,
  dynalite, handlers).

Logs (autouse):

- ``log_sink`` (session): a ``logcapture.LineSink`` on the root logger (at INFO, as in Lambda) for
  the whole session, every suite. Suites attach it to loggers that do not propagate (the audit
  logger) and register the keys they create with ``logcapture.remember_key``. At the end of the
  session every captured line is scanned: any key the suite created (whole, or its secret
  alone) or any well-formed ``mlmoat_`` key (valid checksum) fails the session.

Paths:

- ``repo_root`` (session): the repository root (where ``template.yaml`` is).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from logcapture import LineSink, leaked_key_material
from mlmoat.local.awsenv import DUMMY_CREDENTIALS
from mlmoat.local.server import EmbeddedDynamoDB
from mlmoat.local.template import Template

REPO_ROOT = Path(__file__).resolve().parents[1]
_REGION = "us-east-1"
_DUMMY = {
    **DUMMY_CREDENTIALS,
    "AWS_DEFAULT_REGION": _REGION,
    "AWS_REGION": _REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_CLEARED_PREFIXES = ("SECURITY_", "POWERTOOLS_")


@dataclass(frozen=True)
class MotoServer:
    """A running moto server: its URL and the environment that points boto3 at it."""

    endpoint: str
    env: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO_ROOT


@pytest.fixture(scope="session", autouse=True)
def aws_dummy_credentials() -> Iterator[None]:
    """Dummy AWS credentials and region for the whole session; no profile files."""
    saved = {name: os.environ.get(name) for name in _DUMMY}
    os.environ.update(_DUMMY)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session", autouse=True)
def log_sink() -> Iterator[LineSink]:
    """Every log line of the session; fails the session if one holds key material."""
    sink = LineSink()
    root = logging.getLogger()
    root.addHandler(sink)
    previous_level = root.level
    # INFO, as in Lambda (POWERTOOLS_LOG_LEVEL); DEBUG would slow every suite's botocore.
    root.setLevel(logging.INFO)
    logging.getLogger("tests.logcapture").info("log capture on")
    assert sink.lines, "the log capture saw nothing: it is not wired"
    yield sink
    root.removeHandler(sink)
    root.setLevel(previous_level)
    leaked = leaked_key_material("\n".join(sink.lines))
    assert not leaked, f"key material reached the logs: {leaked}"


@pytest.fixture(autouse=True)
def clean_security_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SECURITY_* or POWERTOOLS_* variable leaks into a test."""
    for name in list(os.environ):
        if name.startswith(_CLEARED_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A real moto server over HTTP on a free loopback port, for the whole session."""
    server = EmbeddedDynamoDB(host="127.0.0.1").start()
    env = {
        **_DUMMY,
        "AWS_ENDPOINT_URL_DYNAMODB": server.endpoint,
        "AWS_ENDPOINT_URL_SQS": server.endpoint,
        "AWS_ENDPOINT_URL_SSM": server.endpoint,
    }
    try:
        yield MotoServer(endpoint=server.endpoint, env=env)
    finally:
        server.stop()


@pytest.fixture()
def dynamodb_endpoint(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The moto server's URL, with boto3's endpoint variables set for this test only."""
    for name in ("AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_SSM"):
        monkeypatch.setenv(name, moto_server.endpoint)
    return moto_server.endpoint


@pytest.fixture()
def dynamodb_client(dynamodb_endpoint: str) -> Any:
    """A low-level DynamoDB client for the moto server."""
    return boto3.client("dynamodb", endpoint_url=dynamodb_endpoint, region_name=_REGION)


@pytest.fixture(scope="session")
def security_table_definition() -> dict[str, Any]:
    """SecurityTable's KeySchema, AttributeDefinitions and TTL attribute from template.yaml."""
    definition = Template(REPO_ROOT / "template.yaml").table_definitions()["SecurityTable"]
    return {
        "KeySchema": definition["KeySchema"],
        "AttributeDefinitions": definition["AttributeDefinitions"],
        "ttl_attribute": definition["ttl_attribute"],
    }


@pytest.fixture(scope="session")
def create_security_table(
    security_table_definition: dict[str, Any],
) -> Callable[..., str]:
    """``create(client, name, *, ttl=True)``: a table shaped like SecurityTable; returns the name.

    ``ttl=False`` leaves out the TTL setting, for servers that do not implement it (dynalite).
    """

    def create(client: Any, name: str, *, ttl: bool = True) -> str:
        client.create_table(
            TableName=name,
            KeySchema=security_table_definition["KeySchema"],
            AttributeDefinitions=security_table_definition["AttributeDefinitions"],
            BillingMode="PAY_PER_REQUEST",
        )
        client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.1})
        if ttl and security_table_definition["ttl_attribute"]:
            client.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={
                    "AttributeName": security_table_definition["ttl_attribute"],
                    "Enabled": True,
                },
            )
        return name

    return create


@pytest.fixture()
def security_table(dynamodb_client: Any, create_security_table: Callable[..., str]) -> str:
    """A fresh table shaped like SecurityTable under a unique name; returns the name."""
    return create_security_table(dynamodb_client, f"sec-{uuid.uuid4().hex[:16]}")
