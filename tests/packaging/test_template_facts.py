"""Facts about template.yaml that deployment depends on (read with the local tools' own parser)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from mlmoat.local.template import Template, load_template

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = ("PredictFunction", "AdminFunction", "MonitorFunction")
LAYERS = ("DepsLayer", "SecurityLayer", "ModelLayer")
TABLE_ARN = {"Fn::GetAtt": ["SecurityTable", "Arn"]}
# Exactly the actions each function's code calls (store.py: predict reads and updates; only the
# admin creates keys with PutItem and lists them with Scan; the monitor reads and updates).
ALLOWED_ACTIONS = {
    "PredictFunction": {
        "dynamodb:GetItem", "dynamodb:UpdateItem", "sqs:SendMessage", "ssm:GetParameter",
    },
    "AdminFunction": {
        # No ssm:GetParameter: the admin plane reads no token (AWS_IAM authorises it).
        "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Scan",
    },
    "MonitorFunction": {
        "dynamodb:GetItem", "dynamodb:UpdateItem", "sqs:ReceiveMessage",
        "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes",
        "ssm:GetParameter",  # the runtime defences document only
    },
}  # fmt: skip
ROUTES = {
    ("PredictFunction", "POST", "/predict"),
    ("PredictFunction", "POST", "/models/{model}/predict"),
    ("AdminFunction", "POST", "/admin/keys"),
    ("AdminFunction", "GET", "/admin/keys"),
    ("AdminFunction", "GET", "/admin/keys/{key_id}"),
    ("AdminFunction", "POST", "/admin/keys/{key_id}/revoke"),
    ("AdminFunction", "POST", "/admin/keys/{key_id}/rotate"),
    ("AdminFunction", "POST", "/admin/keys/{key_id}/suspend"),
    ("AdminFunction", "POST", "/admin/keys/{key_id}/reinstate"),
    ("AdminFunction", "GET", "/admin/keys/{key_id}/usage"),
    ("AdminFunction", "GET", "/admin/subjects/{subject}"),
    ("AdminFunction", "POST", "/admin/subjects/{subject}/suspend"),
    ("AdminFunction", "POST", "/admin/subjects/{subject}/reinstate"),
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_template(REPO / "template.yaml")


def _resources(doc: dict[str, Any]) -> dict[str, Any]:
    resources: dict[str, Any] = doc["Resources"]
    return resources


def _statements(function: dict[str, Any]) -> list[dict[str, Any]]:
    """Every inline statement of a function, both branches of any Fn::If included."""
    statements: list[dict[str, Any]] = []
    for policy in function["Properties"].get("Policies", []):
        branches = policy["Fn::If"][1:] if "Fn::If" in policy else [policy]
        for branch in branches:
            if branch == {"Ref": "AWS::NoValue"}:
                continue
            assert isinstance(branch, dict) and "Statement" in branch, (
                f"only inline statements, no managed or template policies: {branch!r}"
            )
            statements.extend(branch["Statement"])
    return statements


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_every_function_and_layer_is_built_by_makefile(doc: dict[str, Any]) -> None:
    resources = _resources(doc)
    for name in FUNCTIONS + LAYERS:
        metadata = resources[name]["Metadata"]
        assert metadata["BuildMethod"] == "makefile", name
        context = REPO / metadata["ContextPath"]
        makefile = (context / "Makefile").read_text()
        assert re.search(rf"^build-{name}:", makefile, re.MULTILINE), (
            f"{context}/Makefile: build-{name}"
        )


def test_security_layer_is_built_from_the_one_copy_of_the_code(doc: dict[str, Any]) -> None:
    layer = _resources(doc)["SecurityLayer"]
    assert layer["Properties"]["ContentUri"].rstrip("/") == "src/security"
    recipe_dir = REPO / layer["Metadata"]["ContextPath"]
    assert not list(recipe_dir.rglob("*.py")), "layers/security holds only the build recipe"


def test_globals_pin_the_runtime_and_the_environment(doc: dict[str, Any]) -> None:
    function = doc["Globals"]["Function"]
    assert function["Runtime"] == "python3.13"
    assert function["Architectures"] == ["x86_64"]
    assert function["Tracing"] == "Active"
    assert {"Timeout", "MemorySize"} <= set(function)
    env = function["Environment"]["Variables"]
    for name in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"):
        assert env[name], name
    assert env["SECURITY_TABLE_NAME"] == {"Ref": "SecurityTable"}
    assert env["SECURITY_MODEL_DIR"] == "/opt/models"
    assert env["SECURITY_EXTRACTION_QUEUE_URL"] == {"Ref": "ExtractionQueue"}
    assert env["SECURITY_JWT_PUBLIC_KEY_PARAMETER"] == {"Ref": "JwtPublicKeyParameter"}
    for name in FUNCTIONS:
        assert "Runtime" not in _resources(doc)[name]["Properties"], "the runtime is set once"


def test_every_security_variable_is_one_settings_reads(doc: dict[str, Any]) -> None:
    # A typo in a variable name would silently fall back to a default at run time.
    source = (REPO / "src" / "security" / "settings.py").read_text()
    known = {"SECURITY_" + name for name in re.findall(r'reader\.\w+\(\s*"([A-Z_]+)"', source)}
    declared = {
        name
        for scope in [doc["Globals"]["Function"]]
        + [_resources(doc)[f]["Properties"] for f in FUNCTIONS]
        for name in (scope.get("Environment") or {}).get("Variables", {})
        if name.startswith("SECURITY_")
    }
    assert declared, "the template sets SECURITY_* variables"
    assert declared <= known, f"unknown to settings.py: {sorted(declared - known)}"


def test_inline_iam_statements_are_least_privilege(doc: dict[str, Any]) -> None:
    resources = _resources(doc)
    for name in FUNCTIONS:
        statements = _statements(resources[name])
        assert statements, name
        granted: set[str] = set()
        for statement in statements:
            assert statement["Effect"] == "Allow"
            actions = _as_list(statement["Action"])
            for action in actions:
                assert "*" not in action, f"{name}: wildcard action {action}"
            granted.update(actions)
            for resource in _as_list(statement["Resource"]):
                assert resource != "*", f"{name}: wildcard resource"
                if isinstance(resource, str):
                    assert "*" not in resource, f"{name}: wildcard in {resource}"
            if any(action.startswith("dynamodb:") for action in actions):
                assert _as_list(statement["Resource"]) == [TABLE_ARN], name
            if any(action.startswith("sqs:") for action in actions):
                assert _as_list(statement["Resource"]) == [
                    {"Fn::GetAtt": ["ExtractionQueue", "Arn"]}
                ]
            if "ssm:GetParameter" in actions:
                (arn,) = _as_list(statement["Resource"])
                assert arn["Fn::Sub"].endswith(
                    (":parameter${JwtPublicKeyParameter}", ":parameter${RuntimeConfigParameter}")
                ), name
        assert granted == ALLOWED_ACTIONS[name], (
            f"{name}: extra {sorted(granted - ALLOWED_ACTIONS[name])}, "
            f"missing {sorted(ALLOWED_ACTIONS[name] - granted)}"
        )


def test_the_only_star_is_in_the_kms_key_policy_where_aws_requires_it(doc: dict[str, Any]) -> None:
    # A key policy's Resource must be "*" (it means "this key"); principals are never "*".
    for statement in _resources(doc)["SecurityKey"]["Properties"]["KeyPolicy"]["Statement"]:
        assert statement["Resource"] == "*"
        principal = statement["Principal"]
        assert principal != "*" and principal.get("AWS") != "*", statement["Sid"]


def test_routes_are_exactly_the_api(doc: dict[str, Any]) -> None:
    template = Template(REPO / "template.yaml")
    routes = {(r.function, r.method, r.resource) for r in template.routes()}
    assert routes == ROUTES
    # every admin route, and only those, is AWS_IAM: no prediction credential reaches them
    for route in template.routes():
        expected = "AWS_IAM" if route.function == "AdminFunction" else "NONE"
        assert route.authorizer == expected, route
    for name in FUNCTIONS[:2]:
        for event in _resources(doc)[name]["Properties"]["Events"].values():
            assert event["Properties"]["RestApiId"] == {"Ref": "Api"}


def test_table_is_literal_on_demand_recoverable_encrypted_with_ttl(doc: dict[str, Any]) -> None:
    table = _resources(doc)["SecurityTable"]
    props = table["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["SSESpecification"]["KMSMasterKeyId"] == {"Ref": "SecurityKey"}
    assert props["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert props["DeletionProtectionEnabled"] == {"Ref": "DeletionProtection"}
    assert table["DeletionPolicy"] == "Retain"


def test_monitor_consumes_the_encrypted_extraction_queue_with_a_dlq(doc: dict[str, Any]) -> None:
    resources = _resources(doc)
    mapping = resources["MonitorEventSource"]["Properties"]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["ExtractionQueue", "Arn"]}
    assert mapping["FunctionName"] == {"Ref": "MonitorFunction"}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    queue = resources["ExtractionQueue"]["Properties"]
    assert queue["KmsMasterKeyId"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["ExtractionDeadLetterQueue", "Arn"]
    }
    assert resources["ExtractionDeadLetterQueue"]["Properties"]["KmsMasterKeyId"]


def test_the_monitor_batches_within_lambdas_rules_for_sqs(doc: dict[str, Any]) -> None:
    # The monitor reads and writes a principal's state once per batch: large batches at a
    # bounded delay (docs/ml-defences.md, "Processing"), within what the event source accepts.
    resources = _resources(doc)
    mapping = resources["MonitorEventSource"]["Properties"]
    batch, window = mapping["BatchSize"], mapping["MaximumBatchingWindowInSeconds"]
    assert 10 < batch <= 10_000 and 1 <= window <= 300  # above 10 a window is required
    # the queue's visibility timeout: at least six times the function's timeout plus the window
    timeout = resources["MonitorFunction"]["Properties"]["Timeout"]
    visibility = resources["ExtractionQueue"]["Properties"]["VisibilityTimeout"]
    assert visibility >= 6 * timeout + window


def test_no_function_dead_letter_queue_that_nothing_could_reach(doc: dict[str, Any]) -> None:
    # A Lambda DLQ receives failed asynchronous invocations only; API Gateway and the SQS event
    # source mapping invoke synchronously, so such a queue would stay empty while failures pass.
    assert "DeadLetterQueue" not in doc["Globals"]["Function"]
    for name in FUNCTIONS:
        assert "DeadLetterQueue" not in _resources(doc)[name]["Properties"], name
    queues = [n for n, r in _resources(doc).items() if r["Type"] == "AWS::SQS::Queue"]
    assert sorted(queues) == ["ExtractionDeadLetterQueue", "ExtractionQueue"]


def test_functions_have_reserved_concurrency_from_parameters(doc: dict[str, Any]) -> None:
    # 0 (the default) reserves nothing: Lambda refuses a reservation that leaves an account
    # fewer than 100 unreserved executions, and a new account's limit may be 10.
    for name in FUNCTIONS:
        value = _resources(doc)[name]["Properties"]["ReservedConcurrentExecutions"]
        condition, reserved, otherwise = value["Fn::If"]
        parameter = doc["Parameters"][reserved["Ref"]]
        assert (parameter["Default"], parameter["MinValue"]) == (0, 0), name
        assert doc["Conditions"][condition] == {
            "Fn::Not": [{"Fn::Equals": [{"Ref": reserved["Ref"]}, 0]}]
        }, name
        assert otherwise == {"Ref": "AWS::NoValue"}, name


def test_api_has_best_effort_throttling_and_access_logs(doc: dict[str, Any]) -> None:
    api = _resources(doc)["Api"]["Properties"]
    (settings,) = api["MethodSettings"]
    assert settings["ThrottlingRateLimit"] == {"Ref": "ApiThrottleRateLimit"}
    assert settings["ThrottlingBurstLimit"] == {"Ref": "ApiThrottleBurstLimit"}
    assert settings["DataTraceEnabled"] is False
    assert "best effort" in doc["Parameters"]["ApiThrottleRateLimit"]["Description"]
    assert api["AccessLogSetting"]["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    assert api["TracingEnabled"] is True
    assert "ApiUrl" in doc["Outputs"]


def test_every_checkov_skip_carries_a_reason(doc: dict[str, Any]) -> None:
    skips = [
        (name, skip)
        for name, resource in _resources(doc).items()
        for skip in ((resource.get("Metadata") or {}).get("checkov") or {}).get("skip", [])
    ]
    assert skips, "the skips are listed in the template"
    for name, skip in skips:
        assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), name
        assert len(skip.get("comment", "").split()) >= 8, f"{name} {skip['id']}: a written reason"


def test_samconfig_has_a_dev_default_and_a_prod_environment() -> None:
    import tomllib

    config = tomllib.loads((REPO / "samconfig.toml").read_text())
    assert "Stage=dev" in config["default"]["deploy"]["parameters"]["parameter_overrides"]
    prod = config["prod"]["deploy"]["parameters"]["parameter_overrides"]
    assert "Stage=prod" in prod and "DeletionProtection=true" in prod
    for env in ("default", "prod"):
        assert re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", config[env]["global"]["parameters"]["region"])


def test_samconfig_overrides_name_only_template_parameters(doc: dict[str, Any]) -> None:
    import shlex
    import tomllib

    config = tomllib.loads((REPO / "samconfig.toml").read_text())
    for env in ("default", "prod"):
        overrides = config[env]["deploy"]["parameters"]["parameter_overrides"]
        for pair in shlex.split(overrides):
            name, _, value = pair.partition("=")
            parameter = doc["Parameters"][name]
            assert value in [str(v) for v in parameter.get("AllowedValues", [value])], pair


def test_outputs_name_the_log_groups_the_table_and_the_alarm_topic(doc: dict[str, Any]) -> None:
    outputs = {name: output["Value"] for name, output in doc["Outputs"].items()}
    for group in ("PredictLogGroup", "AdminLogGroup", "MonitorLogGroup", "ApiAccessLogGroup"):
        assert outputs[f"{group}Name"] == {"Ref": group}
    assert outputs["SecurityTableName"] == {"Ref": "SecurityTable"}
    assert outputs["DashboardName"] == {"Ref": "Dashboard"}
    topic = {"Fn::If": ["CreateAlarmTopic", {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]}
    assert outputs["AlarmTopicArn"] == topic
    # each function writes to the log group its output names
    for function in FUNCTIONS:
        group = _resources(doc)[function]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert group in {"PredictLogGroup", "AdminLogGroup", "MonitorLogGroup"}


def test_every_alarm_notifies_the_alarm_topic_and_names_its_runbook(doc: dict[str, Any]) -> None:
    topic = {"Fn::If": ["CreateAlarmTopic", {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]}
    runbook = (REPO / "docs" / "runbook.md").read_text()
    alarms = {n: r for n, r in _resources(doc).items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert len(alarms) >= 12
    for name, alarm in alarms.items():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [topic], name
        assert props["TreatMissingData"] == "notBreaching", name
        anchor = re.search(r"docs/runbook\.md#([a-z]+)", props["AlarmDescription"])
        assert anchor, name
        assert f'<a id="{anchor.group(1)}"></a>' in runbook, name
    assert _resources(doc)["AlarmTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "SecurityKey"}


def test_saved_queries_read_the_functions_log_groups(doc: dict[str, Any]) -> None:
    resources = _resources(doc).items()
    kind = "AWS::Logs::QueryDefinition"
    queries = {n: r["Properties"] for n, r in resources if r["Type"] == kind}
    assert set(queries) == {
        "PrincipalHistoryQuery", "RefusalsByReasonQuery", "FlagsQuery", "TopPrincipalsByRowsQuery",
    }  # fmt: skip
    for name, props in queries.items():
        groups = {g["Ref"] for g in props["LogGroupNames"]}
        assert groups <= {"PredictLogGroup", "AdminLogGroup", "MonitorLogGroup"}, name
        assert 'message = "audit"' in props["QueryString"], name
