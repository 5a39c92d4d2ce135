"""template.yaml's runtime defences: the parameter, who may read it, how the functions find it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlmoat.local.template import Template, load_template

REPO = Path(__file__).resolve().parents[2]
ARN = (
    "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${RuntimeConfigParameter}"
)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_template(REPO / "template.yaml")


def _runtime_statements(function: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        statement
        for policy in function["Properties"]["Policies"]
        if "Statement" in policy
        for statement in policy["Statement"]
        if statement.get("Sid") == "RuntimeConfigRead"
    ]


def test_the_parameter_is_created_empty_with_a_stack_scoped_name(doc: dict[str, Any]) -> None:
    parameter = doc["Resources"]["RuntimeConfigParameter"]
    assert parameter["Type"] == "AWS::SSM::Parameter"
    props = parameter["Properties"]
    assert props["Type"] == "String"
    assert props["Value"] == "{}"  # no runtime value: the deploy-time parameters apply
    assert props["Name"] == {"Fn::Sub": "/${AWS::StackName}/runtime-config"}
    assert doc["Parameters"]["RuntimeConfigMaxAge"]["Default"] == 30


def test_predict_and_monitor_may_read_exactly_that_parameter_and_admin_not(
    doc: dict[str, Any],
) -> None:
    resources = doc["Resources"]
    for name in ("PredictFunction", "MonitorFunction"):
        (statement,) = _runtime_statements(resources[name])
        assert statement["Effect"] == "Allow"
        assert statement["Action"] == "ssm:GetParameter"  # read only: no Put, no GetParameters
        assert statement["Resource"] == {"Fn::Sub": ARN}
    assert _runtime_statements(resources["AdminFunction"]) == []


def test_the_functions_are_told_the_parameter_and_the_cache_age(doc: dict[str, Any]) -> None:
    env = doc["Globals"]["Function"]["Environment"]["Variables"]
    assert env["SECURITY_RUNTIME_CONFIG_PARAMETER"] == {"Ref": "RuntimeConfigParameter"}
    assert env["SECURITY_RUNTIME_CONFIG_MAX_AGE_SECONDS"] == {"Ref": "RuntimeConfigMaxAge"}
    # locally the Ref resolves to the name the parameter has, which bootstrap creates
    template = Template(REPO / "template.yaml")
    local = template.function("PredictFunction").environment
    assert local["SECURITY_RUNTIME_CONFIG_PARAMETER"] == "/mlmoat-local/runtime-config"
    assert template.parameter_definitions()["RuntimeConfigParameter"] == {
        "Name": "/mlmoat-local/runtime-config",
        "Type": "String",
        "Value": "{}",
    }
