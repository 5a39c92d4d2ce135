"""``mlmoat keys --stack NAME``: the table and key defaults from a deployed stack (moto's
CloudFormation and DynamoDB, in process)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from mlmoat import keys_cli
from mlmoat.local.template import load_template
from security.keys import parse_key

REPO = Path(__file__).resolve().parents[2]


def _stack_template(*, with_output: bool = True) -> str:
    """A stack with template.yaml's own SecurityTable definition and its output."""
    table = load_template(REPO / "template.yaml")["Resources"]["SecurityTable"]["Properties"]
    resources = {
        "SecurityTable": {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "AttributeDefinitions": table["AttributeDefinitions"],
                "KeySchema": table["KeySchema"],
                "BillingMode": table["BillingMode"],
            },
        }
    }
    document: dict[str, Any] = {
        "Resources": resources,
        "Parameters": {
            "DefaultBudget": {"Type": "Number", "Default": 10000},
            "DefaultRateLimit": {"Type": "String", "Default": "60/minute"},
        },
    }
    if with_output:
        document["Outputs"] = {"SecurityTableName": {"Value": {"Ref": "SecurityTable"}}}
    return json.dumps(document)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB", raising=False)
    monkeypatch.delenv("SECURITY_TABLE_NAME", raising=False)
    with mock_aws():
        yield


def _deploy(name: str, **parameters: str) -> str:
    cloudformation = boto3.client("cloudformation")
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=_stack_template(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    (stack,) = cloudformation.describe_stacks(StackName=name)["Stacks"]
    return str(stack["Outputs"][0]["OutputValue"])


def test_create_with_stack_writes_to_the_stacks_table_with_its_defaults(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a deployed stack whose table name is generated, and another stack beside it
    table = _deploy("mlmoat-dev", DefaultBudget="777", DefaultRateLimit="5/minute")
    other = _deploy("mlmoat-prod")
    assert table != other and "mlmoat-dev" in table
    # when the first credential is created through --stack
    status = keys_cli.main(["--stack", "mlmoat-dev", "create", "--owner", "ops"])
    created = json.loads(capsys.readouterr().out)
    # then it is in that stack's table, with that stack's default budget and rate
    assert status == 0
    key_id = parse_key(created["api_key"]).key_id
    items = boto3.client("dynamodb").scan(TableName=table)["Items"]
    assert [item["key_id"]["S"] for item in items] == [key_id]
    assert boto3.client("dynamodb").scan(TableName=other)["Items"] == []
    assert keys_cli.main(["--stack", "mlmoat-dev", "show", key_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["budget"], shown["rate_limit"]) == (777, "5/minute")


def test_an_unknown_stack_is_named_and_nothing_is_written(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _deploy("mlmoat-dev")
    status = keys_cli.main(["--stack", "mlmoat-staging", "create", "--owner", "ops"])
    assert status == 1
    assert json.loads(capsys.readouterr().err) == {"error": "stack_not_found: mlmoat-staging"}
    assert boto3.client("dynamodb").scan(TableName=table)["Items"] == []


def test_a_stack_without_the_table_output_is_refused(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    boto3.client("cloudformation").create_stack(
        StackName="half", TemplateBody=_stack_template(with_output=False)
    )
    assert keys_cli.main(["--stack", "half", "list"]) == 1
    assert "stack_output_missing: half" in json.loads(capsys.readouterr().err)["error"]


def test_stack_and_table_together_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        keys_cli.main(["--stack", "mlmoat-dev", "--table", "t", "list"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
