"""The capacity replay: real predictions at simulated rates, metered by ``CapacityMeter``.

Each ``Scenario`` runs on a fresh table and extraction queue of one moto server, with its own
prediction app (``security.wiring.build_predict_app`` behind ``ApiFunction.lambda_handler``, the
PredictFunction handler's path: the edge screen, then Mangum) and its own MonitorFunction
(``security.wiring.monitor_function``, fed SQS events of the queue's messages through the
handler's Powertools batch processing). Both DynamoDB clients are metered; the meter reads items
around writes with a third client it never meters.

The clock is simulated: the gatekeeper (rate windows, 30 s idempotency buckets), the query
sink and the meter read ``SimulatedClock``, which steps ``1 / rate`` per request from
``START`` (a minute boundary); requests run one after another as fast as the machine goes.
The monitor drains the queue at the simulated time of the last request of each batch: the
requests of ``MONITOR_WINDOW_SECONDS``, at most 10 (the SQS event source's default batch).
Keys are created through ``KeyAdmin`` with limits twice what the scenario sends, so no request
is refused. The monitor stamps its items with wall time
(``monitor_function`` takes no clock): a 10-digit epoch either way, a byte or two at most.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlmoat.bench.capacity import CallRecord, CapacityMeter, Violation
from mlmoat.bench.events import rest_event
from mlmoat.bench.itemsize import utf8_len

#: The simulated start: a minute boundary, so the window starts a rate window and a bucket.
START = 1_800_000_000.0
#: The SQS event source's default batch size: the monitor's batches hold at most this many.
MONITOR_BATCH = 10
#: The monitor drains the messages queued within this many simulated seconds (one batch at
#: most): one message per batch at 10 requests/s and below, full batches from 100/s.
MONITOR_WINDOW_SECONDS = 0.1
_REGION = "us-east-1"
_QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:ExtractionQueue"
_SEED = 20261204


class SimulatedClock:
    """A clock that moves only when told: ``clock()`` is the simulated epoch time."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, slots=True)
class Scenario:
    """``keys`` keys, each sending ``rate_per_key`` requests per simulated second, for
    ``seconds`` simulated seconds (requests interleaved round-robin over the keys)."""

    label: str
    keys: int
    rate_per_key: float
    seconds: float

    @property
    def rate(self) -> float:
        """Requests per simulated second over all keys."""
        return self.keys * self.rate_per_key

    @property
    def requests(self) -> int:
        """Real requests the scenario sends."""
        return max(1, round(self.rate * self.seconds))


@dataclass(frozen=True, slots=True)
class CounterItem:
    """A key's item at the end of a scenario: its size, its idempotency digests and the names of
    its rate-window (``rw_``) and bucket (``rq_``) attributes."""

    pk: str
    size: int
    digests: int
    digest_bytes: int
    window_attrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """What one scenario measured."""

    scenario: Scenario
    start: float
    end: float
    records: tuple[CallRecord, ...]
    violations: tuple[Violation, ...]
    statuses: dict[int, int]
    key_pks: frozenset[str]
    counter_items: tuple[CounterItem, ...]
    monitor_failures: int
    wall_seconds: float

    @property
    def allowed(self) -> int:
        """Predictions answered 200."""
        return self.statuses.get(200, 0)


class _Discard(io.StringIO):
    """A text stream that drops what it is given (the replay's audit log)."""

    def write(self, text: str) -> int:
        return len(text)


@dataclass
class _Context:
    """The parts of the Lambda context object Mangum and Powertools read."""

    function_name: str
    aws_request_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 1024
    log_group_name: str = "/aws/lambda/capacity"
    log_stream_name: str = "capacity"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def sqs_event(messages: list[dict[str, Any]], queue_arn: str = _QUEUE_ARN) -> dict[str, Any]:
    """The SQS event Lambda's event source delivers for ``messages`` (from ReceiveMessage)."""
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "0"},
                "messageAttributes": {},
                "md5OfBody": message.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": _REGION,
            }
            for message in messages
        ]
    }


def benign_rows(root: Path, count: int, seed: int = _SEED) -> list[list[float]]:
    """``count`` benign iris rows (held-out rows with measurement noise, as the red team's
    benign callers send), rounded to 3 decimals."""
    from mlmoat.redteam.cases import envelope_bounds
    from mlmoat.redteam.traffic import Domain
    from mlmoat.redteam.traffic import benign_rows as noisy
    from mlmoat.train import load_split

    manifest = json.loads((root / "models" / "iris" / "manifest.json").read_text())
    lower, upper = envelope_bounds(manifest["envelope"], list(manifest["feature_names"]))
    x_train, _, x_test, _ = load_split("iris")
    domain = Domain(lower, upper, x_train.std(axis=0) + 1e-12)
    rows = noisy(x_test, domain, count, np.random.default_rng(seed))
    return [[round(float(v), 3) for v in row] for row in rows]


class CapacityReplay:
    """Runs scenarios against one moto endpoint (each on a fresh table and queue)."""

    def __init__(self, root: Path, endpoint: str) -> None:
        """``root``: the repository (template.yaml, models/); ``endpoint``: a moto server."""
        from mlmoat.local.awsenv import dynamodb_client, sqs_client
        from mlmoat.local.template import Template
        from security.audit import AuditLog
        from security.settings import Settings

        self._root = root
        self._endpoint = endpoint
        self._dynamodb: Callable[[], Any] = lambda: dynamodb_client(endpoint, _REGION)
        self._sqs_client: Callable[[], Any] = lambda: sqs_client(endpoint, _REGION)
        template = Template(root / "template.yaml", endpoint=endpoint, region=_REGION)
        self._table = template.table_definitions()["SecurityTable"]
        environment = dict(template.function("PredictFunction").environment)
        # The deployed function's settings, on this run's models, without the SSM document
        # (it never touches DynamoDB), under a service name of its own: the first audit log of
        # a service configures its Powertools logger, and this one writes nowhere.
        self._settings = dataclasses.replace(
            Settings.from_env(environment),
            model_dir=str(root / "models"),
            runtime_config_parameter=None,
            service_name="mlmoat-capacity",
        )
        self._audit = AuditLog(service=self._settings.service_name, stream=_Discard())
        self._plain = self._dynamodb()
        self._sqs = self._sqs_client()

    # ------------------------------------------------------------------ one scenario
    def run(
        self, scenario: Scenario, *, log: Callable[[str], None] | None = None
    ) -> ScenarioResult:
        """Run ``scenario``: create its keys, send its requests, drain the monitor."""
        started = time.perf_counter()
        clock = SimulatedClock(START)
        table, queue_url = self._fresh_table_and_queue()
        settings = dataclasses.replace(
            self._settings, table_name=table, extraction_queue_url=queue_url
        )
        meter = CapacityMeter(reader=self._plain, clock=clock)
        keys = self._create_keys(settings, scenario, clock)
        handler = self._predict_handler(settings, meter, clock)
        monitor = self._monitor_handler(settings, meter)
        rows = benign_rows(self._root, min(scenario.requests, 4096))
        rng = random.Random(_SEED)  # noqa: S311 - request ids, not secrets
        statuses: Counter[int] = Counter()
        failures = 0
        step = 1.0 / scenario.rate
        batch = min(MONITOR_BATCH, max(1, math.floor(scenario.rate * MONITOR_WINDOW_SECONDS)))
        for index in range(scenario.requests):
            clock.now = START + index * step
            api_key, _ = keys[index % len(keys)]
            event = rest_event(
                path="/predict",
                body={"features": rows[index % len(rows)]},
                headers={"X-API-Key": api_key},
            )
            event["requestContext"]["requestId"] = str(uuid.UUID(int=rng.getrandbits(128)))
            response = handler(event, _Context("PredictFunction"))
            statuses[int(response["statusCode"])] += 1
            if (index + 1) % batch == 0 or index + 1 == scenario.requests:
                failures += self._drain(queue_url, monitor)
            if log is not None and (index + 1) % 1000 == 0:
                log(f"  {scenario.label}: {index + 1}/{scenario.requests} requests")
        pks = frozenset(pk for _, pk in keys)
        result = ScenarioResult(
            scenario=scenario,
            start=START,
            end=START + scenario.requests / scenario.rate,
            records=tuple(meter.records),
            violations=tuple(meter.violations),
            statuses=dict(statuses),
            key_pks=pks,
            counter_items=tuple(self._counter_item(table, pk) for pk in sorted(pks)[:100]),
            monitor_failures=failures,
            wall_seconds=time.perf_counter() - started,
        )
        self._plain.delete_table(TableName=table)
        self._sqs.delete_queue(QueueUrl=queue_url)
        return result

    def _fresh_table_and_queue(self) -> tuple[str, str]:
        name = f"capacity-{uuid.uuid4().hex[:12]}"
        self._plain.create_table(
            TableName=name,
            KeySchema=self._table["KeySchema"],
            AttributeDefinitions=self._table["AttributeDefinitions"],
            BillingMode="PAY_PER_REQUEST",
        )
        self._plain.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
        if self._table.get("ttl_attribute"):
            self._plain.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={
                    "AttributeName": self._table["ttl_attribute"],
                    "Enabled": True,
                },
            )
        queue_url = self._sqs.create_queue(QueueName=name)["QueueUrl"]
        return name, str(queue_url)

    def _create_keys(
        self, settings: Any, scenario: Scenario, clock: SimulatedClock
    ) -> list[tuple[str, str]]:
        """(API key, partition key) of each of the scenario's keys."""
        from security.admin import KeyAdmin, uncapped
        from security.store import PrincipalStore, key_pk

        admin = KeyAdmin(
            store=PrincipalStore(client=self._plain, table_name=settings.table_name),
            settings=uncapped(settings),
            clock=clock,
        )
        per_minute = max(2, math.ceil(scenario.rate_per_key * 60 * 2))
        keys = []
        # Only the keys that send in the window are created (requests go round-robin).
        for index in range(min(scenario.keys, scenario.requests)):
            created = admin.create(
                owner=f"capacity-{index}",
                rate_limit=f"{per_minute}/minute",
                budget=10**9,
                output_policy=settings.default_output_policy,
            )
            keys.append((str(created["api_key"]), key_pk(str(created["key_id"]))))
        return keys

    def _predict_handler(
        self, settings: Any, meter: CapacityMeter, clock: SimulatedClock
    ) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
        from security.snapstart import SnapStartHooks
        from security.wiring import ApiFunction, Clients, build_predict_app

        clients = Clients(dynamodb=meter.attach(self._dynamodb()), sqs=self._sqs_client())
        app = build_predict_app(settings, clients, audit=self._audit, clock=clock)
        function = ApiFunction(settings, clients, SnapStartHooks(), self._audit, app)
        handler: Callable[[dict[str, Any], Any], dict[str, Any]] = function.lambda_handler()
        return handler

    def _monitor_handler(
        self, settings: Any, meter: CapacityMeter
    ) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
        from security.wiring import monitor_function

        def factory(service: str, *, config: Any = None) -> Any:
            if service == "dynamodb":
                return meter.attach(self._dynamodb())
            return self._sqs_client()

        function = monitor_function(settings, factory=factory)

        def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
            # handlers/monitor.py's body
            function.audit.enter(context)
            return function.monitor.process_sqs_event(event)

        return handler

    def _drain(
        self, queue_url: str, monitor: Callable[[dict[str, Any], Any], dict[str, Any]]
    ) -> int:
        failures = 0
        for batch in self._batches(queue_url):
            result = monitor(sqs_event(batch), _Context("MonitorFunction"))
            failures += len(result.get("batchItemFailures", []))
        return failures

    def _batches(self, queue_url: str) -> Iterator[list[dict[str, Any]]]:
        while True:
            response = self._sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=MONITOR_BATCH, WaitTimeSeconds=0
            )
            batch = [dict(message) for message in response.get("Messages", [])]
            if not batch:
                return
            self._sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": str(m["ReceiptHandle"])}
                    for i, m in enumerate(batch)
                ],
            )
            yield batch

    def _counter_item(self, table: str, pk: str) -> CounterItem:
        from mlmoat.bench.itemsize import item_size
        from security.store import RATE_ATTR_PREFIX, REQUEST_ATTR_PREFIX

        item = self._plain.get_item(TableName=table, Key={"pk": {"S": pk}}, ConsistentRead=True)
        found = item.get("Item") or {}
        members = [
            member
            for name, value in found.items()
            if name.startswith(REQUEST_ATTR_PREFIX)
            for member in value.get("SS", [])
        ]
        return CounterItem(
            pk=pk,
            size=item_size(found),
            digests=len(members),
            digest_bytes=sum(utf8_len(member) for member in members),
            window_attrs=tuple(
                sorted(
                    name
                    for name in found
                    if name.startswith((RATE_ATTR_PREFIX, REQUEST_ATTR_PREFIX))
                )
            ),
        )
