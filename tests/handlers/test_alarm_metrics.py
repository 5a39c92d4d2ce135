"""Every alarm (and dashboard graph) on mlmoat's own namespace reads a series the code emits.

CloudWatch matches a metric by namespace, name and the exact set of dimensions with their
values: an alarm naming a dimension the EMF lacks watches a series that never exists and stays
quiet forever. So this test drives the outcomes each alarm is about through the real handlers
(PredictFunction's wiring against the session's moto server, MonitorFunction's handler on the
SQS events its queue would deliver), collects the EMF of the audit records they wrote, and
compares every series in template.yaml's alarms and dashboard with the series those records
define.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from handlersupport import (
    FailingRegistry,
    LambdaContext,
    header,
    import_handler,
    load_event,
    new_key,
    rest_event,
)
from mangum import Mangum

from logcapture import remember_key
from mlmoat.local.events import sqs_event
from mlmoat.local.template import Template, load_template

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "mlmoat"
JSON_CT = {"Content-Type": "application/json"}
ONE = b'{"features": [5.1, 3.5, 1.4, 0.2]}'

Series = tuple[str, frozenset[tuple[str, str]]]


def _dead_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _fast_fail() -> Config:
    return Config(connect_timeout=0.2, read_timeout=0.2, retries={"total_max_attempts": 1})


def _patient() -> Config:
    return Config(connect_timeout=5, read_timeout=30, retries={"total_max_attempts": 2})


def emitted_series(records: list[dict[str, Any]]) -> set[Series]:
    """The (metric, dimensions with values) series the EMF part of ``records`` defines."""
    series: set[Series] = set()
    for record in records:
        for directive in record.get("_aws", {}).get("CloudWatchMetrics", []):
            if directive["Namespace"] != NAMESPACE:
                continue
            for dimension_set in directive["Dimensions"]:
                dimensions = frozenset((name, str(record[name])) for name in dimension_set)
                for metric in directive["Metrics"]:
                    assert metric["Name"] in record, metric  # EMF needs the value at the root
                    series.add((metric["Name"], dimensions))
    return series


def _literal_dimensions(dimensions: list[dict[str, Any]], where: str) -> frozenset[tuple[str, str]]:
    pairs = []
    for dimension in dimensions:
        assert isinstance(dimension["Value"], str), f"{where}: a computed dimension value"
        pairs.append((dimension["Name"], dimension["Value"]))
    return frozenset(pairs)


def alarm_series(document: dict[str, Any]) -> dict[str, list[Series]]:
    """Every mlmoat-namespace series each alarm of the template reads, by alarm."""
    found: dict[str, list[Series]] = {}
    for logical_id, resource in document["Resources"].items():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = resource["Properties"]
        metrics = [props] if "MetricName" in props else []
        queries = props.get("Metrics", [])
        metrics += [query["MetricStat"]["Metric"] for query in queries if "MetricStat" in query]
        for metric in metrics:
            if metric["Namespace"] == NAMESPACE:
                found.setdefault(logical_id, []).append(
                    (
                        metric["MetricName"],
                        _literal_dimensions(metric.get("Dimensions", []), logical_id),
                    )
                )
    return found


def dashboard_series(document: dict[str, Any]) -> list[Series]:
    """The mlmoat-namespace series of the dashboard's metric graphs (not its SEARCH queries)."""
    body = document["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    # Only the values that are not in mlmoat's namespace are substituted: any placeholder works.
    dashboard = json.loads(re.sub(r"\$\{[^}]+\}", "substituted", body))
    series: list[Series] = []
    for widget in dashboard["widgets"]:
        for entry in widget["properties"].get("metrics", []):
            fields = [item for item in entry if isinstance(item, str)]
            if fields and fields[0] == NAMESPACE:
                pairs = fields[2:]
                assert len(pairs) % 2 == 0, entry
                series.append((fields[1], frozenset(zip(pairs[::2], pairs[1::2], strict=True))))
    return series


def _uniform_rows(manifest: dict[str, Any], count: int, rng: random.Random) -> list[list[float]]:
    envelope = manifest["envelope"]
    return [
        [
            round(rng.uniform(envelope[name]["min"], envelope[name]["max"]), 3)
            for name in manifest["feature_names"]
        ]
        for _ in range(count)
    ]


class _Stack:
    """The predict function's own wiring with clients of the test's choice, and its queue."""

    def __init__(self, predict_module: Any, handler_env: dict[str, str]) -> None:
        from security.audit import AuditLog
        from security.wiring import Clients, build_predict_app

        self._build, self._clients, self._audit = build_predict_app, Clients, AuditLog
        self.env = handler_env
        self.sqs = boto3.client(
            "sqs", endpoint_url=handler_env["AWS_ENDPOINT_URL_SQS"], region_name="us-east-1"
        )
        self.queue_url = self.sqs.create_queue(QueueName=f"alarms-{uuid.uuid4().hex[:10]}")[
            "QueueUrl"
        ]
        self.settings = dataclasses.replace(
            predict_module.settings, extraction_queue_url=self.queue_url
        )

    def handler(self, *, dynamodb: str | None = None, sqs: str | None = None) -> Mangum:
        # Only a dead endpoint gets the fast-fail client: the live moto server can take longer
        # than 0.2 s to answer on a loaded machine, which made a served request a 503.
        clients = self._clients(
            dynamodb=boto3.client(
                "dynamodb",
                endpoint_url=dynamodb or self.env["AWS_ENDPOINT_URL_DYNAMODB"],
                region_name="us-east-1",
                config=_fast_fail() if dynamodb else _patient(),
            ),
            sqs=boto3.client(
                "sqs",
                endpoint_url=sqs or self.env["AWS_ENDPOINT_URL_SQS"],
                region_name="us-east-1",
                config=_fast_fail() if sqs else _patient(),
            ),
        )
        app = self._build(
            self.settings, clients, audit=self._audit(service=self.settings.service_name)
        )
        return Mangum(app, lifespan="off")

    def drain(self) -> Iterator[list[dict[str, Any]]]:
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not batch:
                return
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
                ],
            )
            yield batch


def _call(handler: Mangum, event: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = handler(json.loads(json.dumps(event)), LambdaContext())
    return response


def _damaged_models(root: Path) -> Path:
    """A copy of models/ with one bit of breast-cancer's ONNX flipped and its defences.json
    gone: that model is unavailable to the predict function and unmonitored by the monitor."""
    models = root / "models"
    shutil.copytree(REPO / "models", models)
    onnx = models / "breast-cancer" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    (models / "breast-cancer" / "defences.json").unlink()
    return models


@pytest.fixture(scope="module")
def driven_records(
    predict_module: Any,
    admin: Any,
    keys: dict[str, str],
    handler_env: dict[str, str],
    log_sink: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> list[dict[str, Any]]:
    """The audit records of one request (or monitor record) per alarmed outcome."""
    stack = _Stack(predict_module, handler_env)
    damaged = _damaged_models(tmp_path_factory.mktemp("alarm-models"))
    served = stack.handler()
    statuses: dict[str, int] = {}

    def send(name: str, handler: Mangum, event: dict[str, Any]) -> None:
        response = _call(handler, event)
        statuses[header(response, "X-Request-Id") or ""] = response["statusCode"]
        statuses[name] = response["statusCode"]

    # 200 and 401 (a well-formed key nobody issued)
    send("ok", served, load_event("rest/predict-ok-single.json", keys))
    # a key id and an address of its own: the suite's other failed authentications use the
    # fixture's unknown key from 127.0.0.1, and past 20 a minute for one key id (or from one
    # address) the answer is 429 auth_throttled, which it was when the suite ran fast (3.13)
    from security.keys import format_key, new_key_id, new_secret

    unknown = rest_event(
        path="/predict",
        body=ONE,
        headers={**JSON_CT, "X-API-Key": remember_key(format_key(new_key_id(), new_secret()))},
    )
    unknown["requestContext"]["identity"]["sourceIp"] = f"198.51.101.{random.randint(1, 254)}"
    send("unknown_key", served, unknown)
    # 503: DynamoDB unreachable (fail closed)
    send(
        "store_unavailable",
        stack.handler(dynamodb=_dead_endpoint()),
        load_event("rest/predict-ok-single.json", keys),
    )
    # 500: the model's runtime fails
    from security.api import create_app
    from security.api.predict import schemas_for
    from security.audit import AuditLog
    from security.auth import Authenticator
    from security.limits import Gatekeeper
    from security.model import ModelRegistry
    from security.store import PrincipalStore

    settings = stack.settings
    registry = ModelRegistry.load(settings.model_dir)
    store = PrincipalStore(
        client=boto3.client("dynamodb", endpoint_url=handler_env["AWS_ENDPOINT_URL_DYNAMODB"]),
        table_name=settings.table_name,
    )
    failing = Mangum(
        create_app(
            settings=settings,
            registry=FailingRegistry(registry),
            schemas=schemas_for(registry, registry.names, margin=settings.envelope_margin),
            authenticator=Authenticator(settings=settings, token_verifier=None),
            gatekeeper=Gatekeeper(store=store, settings=settings),
            audit=AuditLog(service=settings.service_name),
        ),
        lifespan="off",
    )
    key = new_key(admin)["api_key"]
    send(
        "internal_error",
        failing,
        rest_event(path="/predict", body=ONE, headers={**JSON_CT, "X-API-Key": key}),
    )
    # a served query whose message cannot reach the extraction queue
    send(
        "monitor_queue_failed",
        stack.handler(sqs=_dead_endpoint()),
        load_event("rest/predict-ok-single.json", keys),
    )
    # a model that failed verification at init (the others served by the same function)
    stack.settings = dataclasses.replace(settings, model_dir=str(damaged))
    send(
        "model_unavailable",
        stack.handler(),
        rest_event(
            path="/models/breast-cancer/predict", body=ONE, headers={**JSON_CT, "X-API-Key": key}
        ),
    )
    stack.settings = settings
    # a guesser: wrong secrets for one key id from one address until throttled
    wrong = remember_key(format_key(new_key(admin)["key_id"], new_secret()))  # bad_secret
    guesser_ip = f"198.51.100.{random.randint(1, 254)}"
    for _ in range(settings.auth_failure_key_limit.count + 1):
        event = rest_event(path="/predict", body=ONE, headers={**JSON_CT, "X-API-Key": wrong})
        event["requestContext"]["identity"]["sourceIp"] = guesser_ip
        send("auth_throttled", served, event)
    request_ids = {rid for rid in statuses if "-" in rid}
    records = [r for r in log_sink.audit_records() if r["request_id"] in request_ids]

    # extraction: uniform probing of iris by one key per action, then the monitor on its queue
    manifest = json.loads((REPO / "models" / "iris" / "manifest.json").read_text())
    rng = random.Random(20261203)
    for _ in stack.drain():  # the queries above, before the probes
        pass
    flag_principals = []
    for action in ("flag", "suspend"):
        created = new_key(admin, budget=1000, rate_limit="1000/minute")
        flag_principals.append(f"key#{created['key_id']}")
        for _ in range(5):
            body = json.dumps({"instances": _uniform_rows(manifest, 20, rng)}).encode()
            event = rest_event(
                path="/predict", body=body, headers={**JSON_CT, "X-API-Key": created["api_key"]}
            )
            assert _call(served, event)["statusCode"] == 200
        monitor = import_handler(
            "handlers.monitor", {**handler_env, "SECURITY_EXTRACTION_ACTION": action}
        )
        for batch in stack.drain():
            event = sqs_event(batch, "arn:aws:sqs:us-east-1:123456789012:ExtractionQueue")
            result = monitor.handler(event, LambdaContext())
            assert result == {"batchItemFailures": []}
    # a query of a model the monitor has no reference for: acknowledged, audited, counted
    from security.extraction import QueryMessage

    unmonitored = QueryMessage(
        "key#unmonitored", "breast-cancer", f"req-{uuid.uuid4().hex[:8]}", 0.0, ((1.0,) * 30,)
    )
    monitor = import_handler(
        "handlers.monitor", {**handler_env, "SECURITY_MODEL_DIR": str(damaged)}
    )
    event = sqs_event(
        [{"MessageId": "m-1", "ReceiptHandle": "h-1", "Body": unmonitored.to_json()}],
        "arn:aws:sqs:us-east-1:123456789012:ExtractionQueue",
    )
    assert monitor.handler(event, LambdaContext()) == {"batchItemFailures": []}
    # a query buffered by the monitor (its deployed 30 s) that its shutdown flush cannot write
    lost = QueryMessage(
        "key#lost", "iris", f"req-{uuid.uuid4().hex[:8]}", 0.0, ((5.1, 3.5, 1.4, 0.2),)
    )
    from security.settings import Settings
    from security.wiring import monitor_function

    def dead(service: str, *, config: Any = None) -> Any:
        return boto3.client(
            service, endpoint_url=_dead_endpoint(), region_name="us-east-1", config=_fast_fail()
        )

    buffered = monitor_function(
        dataclasses.replace(Settings.from_env(handler_env), monitor_flush_seconds=30.0),
        factory=dead,
    )
    event = sqs_event(
        [{"MessageId": "m-2", "ReceiptHandle": "h-2", "Body": lost.to_json()}],
        "arn:aws:sqs:us-east-1:123456789012:ExtractionQueue",
    )
    assert buffered.monitor.process_sqs_event(event) == {"batchItemFailures": []}
    buffered.monitor.flush()
    assert buffered.monitor.buffer.lost == 1
    records += [
        r
        for r in log_sink.records()
        if r.get("message") == "audit"
        and (
            (r.get("event") == "extraction_flag" and r.get("principal_id") in flag_principals)
            or (r.get("event") == "unmonitored" and r.get("request_id") == unmonitored.request_id)
            or (r.get("event") == "monitor_buffer_lost" and r.get("request_id") == lost.request_id)
        )
    ]
    expected = {
        "ok": 200,
        "unknown_key": 401,
        "store_unavailable": 503,
        "internal_error": 500,
        "monitor_queue_failed": 200,
        "model_unavailable": 503,
        "auth_throttled": 429,
    }
    assert {name: statuses[name] for name in expected} == expected
    return records


def test_the_driven_records_are_the_outcomes_the_alarms_are_about(
    driven_records: list[dict[str, Any]],
) -> None:
    reasons = {(r["event"], r["decision"], r["reason"]) for r in driven_records}
    assert ("request", "deny", "store_unavailable") in reasons
    assert ("request", "deny", "internal_error") in reasons
    assert ("request", "deny", "unknown_key") in reasons
    assert ("request", "deny", "auth_throttled") in reasons
    assert ("request", "deny", "model_unavailable") in reasons
    assert ("unmonitored", "skip", "no_monitor_reference") in reasons
    assert ("monitor_buffer_lost", "skip", "monitor_buffer_lost") in reasons
    decisions = {r["decision"] for r in driven_records if r["event"] == "extraction_flag"}
    assert decisions == {"flag", "suspend"}


def test_every_alarm_on_mlmoats_namespace_names_a_series_the_code_emits(
    driven_records: list[dict[str, Any]], predict_module: Any
) -> None:
    # given the series the audit records of every alarmed outcome define
    emitted = emitted_series(driven_records)
    template = Template(REPO / "template.yaml")
    service = template.function("PredictFunction").environment["SECURITY_SERVICE_NAME"]
    assert service == predict_module.settings.service_name
    # when the template's alarms are read
    alarms = alarm_series(load_template(REPO / "template.yaml"))
    # then there is one for each outcome, and each reads a series that exists
    assert {
        "FailClosedAlarm",
        "InternalErrorsAlarm",
        "AuthFailuresAlarm",
        "AuthThrottledAlarm",
        "ExtractionFlagsAlarm",
        "ExtractionSuspensionsAlarm",
        "MonitorQueueFailuresAlarm",
        "ModelUnavailableAlarm",
        "UnmonitoredQueriesAlarm",
        "MonitorBufferLostAlarm",
    } <= set(alarms)
    missing = {
        alarm: [s for s in series if s not in emitted]
        for alarm, series in alarms.items()
        if any(s not in emitted for s in series)
    }
    assert not missing, f"alarms on series no audit record defines: {missing}"
    for series in alarms.values():
        for _, dimensions in series:
            assert ("service", service) in dimensions


def test_every_dashboard_graph_on_mlmoats_namespace_reads_a_series_the_code_emits(
    driven_records: list[dict[str, Any]],
) -> None:
    emitted = emitted_series(driven_records)
    graphs = dashboard_series(load_template(REPO / "template.yaml"))
    assert ("Latency", frozenset({("service", "mlmoat")})) in graphs
    assert [s for s in graphs if s not in emitted] == []


_QUERY_WORDS = {
    "fields", "filter", "and", "or", "not", "stats", "count", "as", "by", "sort", "desc", "asc",
    "limit", "sum", "count_distinct", "ispresent", "like", "in",
}  # fmt: skip


def test_the_saved_queries_read_fields_the_audit_records_have(
    driven_records: list[dict[str, Any]],
) -> None:
    # given every field name real audit records carry (arrays as Logs Insights flattens them)
    present = set()
    for record in driven_records:
        for name, value in record.items():
            present.add(name)
            if isinstance(value, list):
                present.update(f"{name}.{i}" for i in range(len(value)))
    document = load_template(REPO / "template.yaml")
    queries = [
        r["Properties"]["QueryString"]
        for r in document["Resources"].values()
        if r["Type"] == "AWS::Logs::QueryDefinition"
    ]
    assert len(queries) == 4
    for query in queries:
        # when its string literals and its own aliases are set aside
        words = set(re.findall(r"[A-Za-z_@][A-Za-z0-9_.]*", re.sub(r'"[^"]*"', "", query)))
        aliases = set(re.findall(r"\bas\s+([A-Za-z_]+)", query))
        fields = {w for w in words if not w.startswith("@") and not w[0].isdigit()}
        unknown = fields - _QUERY_WORDS - aliases - present
        # then every field it filters, groups or shows is one the records have
        assert not unknown, (query.splitlines()[0], unknown)
