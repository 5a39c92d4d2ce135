"""The local AWS environment: endpoint, region and dummy credentials, read the way boto3 reads them.

Every local command needs only ``AWS_ENDPOINT_URL_DYNAMODB`` (boto3's own variable),
``AWS_DEFAULT_REGION`` and dummy credentials. The same endpoint (one moto server) also serves
SQS and SSM unless ``AWS_ENDPOINT_URL_SQS`` / ``AWS_ENDPOINT_URL_SSM`` say otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from mlmoat.local.template import DEFAULT_REGION

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_ssm import SSMClient

DEFAULT_PORT = 8000
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
#: The same credentials as boto3 client keywords (the one copy: the tooling and the tests).
DUMMY_CLIENT_CREDENTIALS = {
    "aws_access_key_id": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
    "aws_secret_access_key": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
}


class LocalEnvironmentError(RuntimeError):
    """The local environment cannot be used: no endpoint configured, a port in use."""


def endpoint_from(environ: Mapping[str, str]) -> str:
    """The DynamoDB endpoint from ``AWS_ENDPOINT_URL_DYNAMODB``.

    Raises:
        LocalEnvironmentError: the variable is not set.
    """
    endpoint = environ.get("AWS_ENDPOINT_URL_DYNAMODB", "").strip()
    if not endpoint:
        raise LocalEnvironmentError(
            "AWS_ENDPOINT_URL_DYNAMODB is not set: "
            "start `mlmoat local dynamodb` and export what it prints"
        )
    return endpoint.rstrip("/")


def region_from(environ: Mapping[str, str]) -> str:
    """The region from ``AWS_DEFAULT_REGION`` (or ``AWS_REGION``), default us-east-1."""
    return environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION") or DEFAULT_REGION


def exports(endpoint: str, region: str) -> dict[str, str]:
    """The environment a shell (or a function) needs to use the local endpoint."""
    return {
        "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
        "AWS_ENDPOINT_URL_SQS": endpoint,
        "AWS_ENDPOINT_URL_SSM": endpoint,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        **DUMMY_CREDENTIALS,
    }


def passthrough(environ: Mapping[str, str]) -> dict[str, str]:
    """The AWS variables of ``environ`` a local function inherits (endpoints, region, keys)."""
    names = (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_ENDPOINT_URL_SSM",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    )
    values = {name: environ[name] for name in names if environ.get(name)}
    if "AWS_ENDPOINT_URL_DYNAMODB" in values:
        for service in ("SQS", "SSM"):
            values.setdefault(f"AWS_ENDPOINT_URL_{service}", values["AWS_ENDPOINT_URL_DYNAMODB"])
    if "AWS_ACCESS_KEY_ID" not in values:
        values.update(DUMMY_CREDENTIALS)
    region = region_from(environ)
    values["AWS_DEFAULT_REGION"] = region
    values["AWS_REGION"] = region
    return values


def _config() -> Config:
    return Config(
        retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=2, read_timeout=10
    )


def _client(service: str, endpoint: str, region: str) -> Any:
    make: Any = boto3.client  # its overloads know service names only as literals
    return make(
        service,
        endpoint_url=endpoint,
        region_name=region,
        config=_config(),
        **DUMMY_CLIENT_CREDENTIALS,
    )


def dynamodb_client(endpoint: str, region: str) -> DynamoDBClient:
    """A DynamoDB client for the local endpoint with dummy credentials when none are set."""
    client: DynamoDBClient = _client("dynamodb", endpoint, region)
    return client


def sqs_client(endpoint: str, region: str) -> SQSClient:
    """An SQS client for the local endpoint."""
    client: SQSClient = _client("sqs", endpoint, region)
    return client


def ssm_client(endpoint: str, region: str) -> SSMClient:
    """An SSM (Parameter Store) client for the local endpoint."""
    client: SSMClient = _client("ssm", endpoint, region)
    return client
