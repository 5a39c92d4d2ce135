"""`mlmoat config`: which parameter it works on, what it writes, what it refuses (moto SSM)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from moto import mock_aws

from mlmoat.config_cli import main
from security.runtime_config import RuntimeConfig

NAME = "/mlmoat-cli/runtime-config"


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, json.loads(captured.out) if captured.out else None, captured.err


def _value(name: str = NAME) -> str:
    client = boto3.client("ssm", region_name="us-east-1")
    return str(client.get_parameter(Name=name)["Parameter"]["Value"])


@mock_aws
def test_set_get_unset_write_what_the_functions_parse(capsys: pytest.CaptureFixture[str]) -> None:
    boto3.client("ssm", region_name="us-east-1").put_parameter(Name=NAME, Value="{}", Type="String")
    status, out, _ = _run(capsys, "--parameter", NAME, "set", "squeeze_policy", "refuse")
    assert status == 0 and out["document"] == {"squeeze_policy": "refuse"} and out["version"] == 2
    status, out, _ = _run(
        capsys, "--parameter", NAME, "set", "--model", "iris", "extraction_action", "suspend"
    )
    assert status == 0
    stored = RuntimeConfig.parse(_value())
    assert stored.value("squeeze_policy", model="x", default="flag") == "refuse"
    assert stored.value("extraction_action", model="iris", default="flag") == "suspend"
    status, out, _ = _run(capsys, "--parameter", NAME, "get")
    assert status == 0 and out["valid"] is True and out["version"] == 3
    assert out["document"] == json.loads(stored.to_json())
    status, out, _ = _run(capsys, "--parameter", NAME, "unset", "squeeze_policy")
    assert out["document"] == {"models": {"iris": {"extraction_action": "suspend"}}}
    status, out, _ = _run(capsys, "--parameter", NAME, "unset")
    assert status == 0 and _value() == "{}"


@mock_aws
def test_a_bad_value_is_refused_before_anything_is_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name=NAME, Value='{"squeeze_policy":"refuse"}', Type="String"
    )
    status, _, err = _run(capsys, "--parameter", NAME, "set", "squeeze_policy", "refuze")
    assert status == 2 and "refuze" not in err
    status, _, _ = _run(
        capsys, "--parameter", NAME, "set", "--model", "../x", "squeeze_policy", "off"
    )
    assert status == 2
    assert _value() == '{"squeeze_policy":"refuse"}'


@mock_aws
def test_a_malformed_stored_document_is_reported_and_only_unset_clears_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name=NAME, Value='{"squeeze_policy":"refuze"}', Type="String"
    )
    status, out, _ = _run(capsys, "--parameter", NAME, "get")
    assert status == 1 and out["valid"] is False and "refuze" not in json.dumps(out)
    # set would build on a document nobody can read: refused, nothing written
    status, _, err = _run(capsys, "--parameter", NAME, "set", "extraction_action", "suspend")
    assert status == 2 and "mlmoat config unset" in json.loads(err)["error"]
    assert _value() == '{"squeeze_policy":"refuze"}'
    status, out, _ = _run(capsys, "--parameter", NAME, "unset")
    assert status == 0 and _value() == "{}"


@mock_aws
def test_the_parameter_comes_from_the_stack(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployed stack declaring the parameter as template.yaml does
    template = {
        "Resources": {
            "RuntimeConfigParameter": {
                "Type": "AWS::SSM::Parameter",
                "Properties": {
                    "Name": "/prod-stack/runtime-config",
                    "Type": "String",
                    "Value": "{}",
                },
            }
        }
    }
    boto3.client("cloudformation", region_name="us-east-1").create_stack(
        StackName="prod-stack", TemplateBody=json.dumps(template)
    )
    # When the operator names only the stack
    status, out, _ = _run(capsys, "--stack", "prod-stack", "set", "squeeze_policy", "refuse")
    # Then the stack's parameter was written
    assert status == 0 and out["parameter"] == "/prod-stack/runtime-config"
    assert _value("/prod-stack/runtime-config") == '{"squeeze_policy":"refuse"}'
    # and a stack without one is an error naming the resource
    status, _, err = _run(capsys, "--stack", "no-such-stack", "get")
    assert status == 2 and "RuntimeConfigParameter" in err
    # SECURITY_RUNTIME_CONFIG_PARAMETER (the functions' own variable) is honoured too
    monkeypatch.setenv("SECURITY_RUNTIME_CONFIG_PARAMETER", "/prod-stack/runtime-config")
    status, out, _ = _run(capsys, "get")
    assert out["document"] == {"squeeze_policy": "refuse"}


def test_with_no_parameter_named_on_a_remote_endpoint_it_says_how(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)
    status, _, err = _run(capsys, "get")
    assert status == 2 and "--stack" in json.loads(err)["error"]


def test_on_a_local_endpoint_it_uses_the_local_stacks_parameter(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlmoat.config_cli import _parser, parameter_name

    args = _parser().parse_args(["get"])
    name = parameter_name(args, {"AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:8000"})
    assert name == "/mlmoat-local/runtime-config"
