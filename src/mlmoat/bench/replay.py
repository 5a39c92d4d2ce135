"""The capacity replay: real predictions at simulated rates, metered by ``CapacityMeter``.

Each ``Scenario`` runs on a fresh table and extraction queue of one moto server, with its own
prediction app (``security.wiring.build_predict_app`` behind ``ApiFunction.lambda_handler``, the
PredictFunction handler's path: the edge screen, then Mangum) and its own MonitorFunction
(``security.wiring.monitor_function``, fed SQS events of the queue's messages through the
handler's body, ``ExtractionMonitor.process_sqs_event``). Both DynamoDB clients are metered; the
meter reads items around writes with a third client it never meters.

The clock is simulated: the gatekeeper (rate windows, 30 s idempotency buckets), the query
sink (its buffer's delay), the monitor (its write-behind buffer's ages, its items' stamps) and
the meter read ``SimulatedClock``, which steps ``1 / rate`` per request from ``START`` (a minute
boundary); requests run one after another as fast as the machine goes, through one execution
environment (one sink buffer). The monitor is fed as the template's event source mapping feeds
it (``EventSourceModel``: ``MonitorEventSource``'s ``BatchSize`` and
``MaximumBatchingWindowInSeconds``) by ``POLLERS`` pollers, Lambda's minimum for SQS: what the
sink has sent is dealt to them at random (seeded), and each invokes its own monitor environment
(its own ``ExtractionMonitor``, with its own buffer) when it holds a full batch or when its
oldest message has waited the window. At the end of the scenario the sink's buffer is flushed
(the environment's next request, or its shutdown, would send it), the last batches are
delivered, and every monitor environment is flushed as a shutdown would
(``ExtractionMonitor.flush``).
Keys are created through ``KeyAdmin`` with limits twice what the scenario sends, so no request
is refused.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
import string
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlmoat.bench.capacity import CallRecord, CapacityMeter, Violation
from mlmoat.bench.events import rest_event
from mlmoat.local.events import sqs_event
from mlmoat.local.lambda_runtime import LambdaContext
from security.auth import Credentials, Principal
from security.errors import AuthenticationError, SecurityError
from security.limits import Gatekeeper
from security.store import shard_pk
from security.writers import WriterPool

if TYPE_CHECKING:
    from security.extraction import ExtractionMonitor

#: The simulated start: a minute boundary, so the window starts a rate window and a bucket.
START = 1_800_000_000.0
#: One PredictFunction invocation on Lambda, for Little's law (environments = rate x this): the
#: in-process p50 measured here (6.4 ms on a full core, docs/performance.md) x 1.7 at 1,024 MB,
#: plus one DynamoDB write and one SQS send in-region (about 5 and 8 ms).
INVOCATION_SECONDS = 0.025
#: ReceiveMessage's limit: the poller receives at most this many per call.
RECEIVE_MAX = 10
#: The SQS event source's pollers (Lambda starts with five and scales up from there), each
#: invoking its own monitor environment.
POLLERS = 5
_REGION = "us-east-1"
_SEED = 20261204


class SimulatedClock:
    """A clock that moves only when told: ``clock()`` is the simulated epoch time."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, slots=True)
class EventSourceModel:
    """The SQS event source mapping of MonitorFunction: a batch closes at ``batch_size``
    messages or ``window_seconds`` after its first message, whichever comes first."""

    batch_size: int
    window_seconds: float

    @classmethod
    def from_template(
        cls, template: Any, logical_id: str = "MonitorEventSource"
    ) -> EventSourceModel:
        """The mapping's ``BatchSize`` (default 10) and ``MaximumBatchingWindowInSeconds``
        (default 0) in template.yaml."""
        props = template.resources("AWS::Lambda::EventSourceMapping")[logical_id]["Properties"]
        return cls(
            batch_size=int(props.get("BatchSize", 10)),
            window_seconds=float(props.get("MaximumBatchingWindowInSeconds", 0)),
        )


@dataclass(frozen=True, slots=True)
class Scenario:
    """``keys`` keys, each sending ``rate_per_key`` requests per simulated second, for
    ``seconds`` simulated seconds (requests interleaved round-robin over the keys), each key
    created with ``shards`` shards, served by ``environments`` execution environments (by
    default as many as Lambda would run: the rate times ``INVOCATION_SECONDS``), each request of
    ``rows_per_request`` rows; ``monitor``: whether the extraction monitor runs (off: no queue,
    the counter alone)."""

    label: str
    keys: int
    rate_per_key: float
    seconds: float
    shards: int = 1
    environments: int | None = None
    monitor: bool = True
    rows_per_request: int = 1
    #: Steady state (``CapacityReplay.run_steady``): this many of the ``keys`` are simulated,
    #: each with the same arrival pattern, after ``warmup_seconds`` of unmetered traffic (its
    #: requests of ``warmup_rows_per_request`` rows); ``seconds`` is then the metered window.
    sample: int | None = None
    warmup_seconds: float = 0.0
    warmup_rows_per_request: int = 1

    @property
    def rate(self) -> float:
        """Requests per simulated second over all keys."""
        return self.keys * self.rate_per_key

    @property
    def requests(self) -> int:
        """Real requests the scenario sends (metered ones, for a sampled scenario)."""
        if self.sample is not None:
            return max(1, round(self.sample * self.rate_per_key * self.seconds))
        return max(1, round(self.rate * self.seconds))

    @property
    def scale(self) -> float:
        """Keys per simulated key: what the sample's table-wide figures stand for."""
        return self.keys / self.sample if self.sample is not None else 1.0

    @property
    def environment_count(self) -> int:
        """Execution environments serving the scenario (Little's law unless given)."""
        if self.environments is not None:
            return self.environments
        return max(1, math.ceil(self.rate * INVOCATION_SECONDS))


@dataclass(frozen=True, slots=True)
class CounterItem:
    """A counting item at the end of a scenario (a key's item, or a shard of a sharded key): its
    size, its writer lanes (``e_`` attributes) and their bytes, and its rate windows."""

    pk: str
    size: int
    lanes: int
    lane_bytes: int
    window_attrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """What one scenario measured (``key_pks``: the keys' items and their shards' items;
    ``counter_items``: the counting items at the end, shards for a sharded key)."""

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
    environments: int = 1
    #: Messages of each monitor invocation, in order.
    monitor_batches: tuple[int, ...] = ()
    #: SendMessageBatch calls the predict path made (``QuerySink.calls``).
    queue_calls: int = 0
    #: Rows the monitor's states counted at the end (``DetectorState.rows_seen``, summed).
    rows_monitored: int = 0
    #: Steady state only: requests whose environment had no view of the key (cold), of all
    #: metered requests; the seconds after which an environment's caches have evicted a key
    #: (``eviction_seconds``); the event-source model the metered window was fed by.
    cold_requests: int | None = None
    evict_after: float | None = None
    event_source: EventSourceModel | None = None
    #: Steady state only: the template's event-source batch size (what the share stands for).
    template_batch: int = 0
    #: The event source's pollers (one monitor environment each) and the monitor's buffer rule.
    pollers: int = 1
    flush_seconds: float = 0.0
    flush_messages: int = 0

    @property
    def allowed(self) -> int:
        """Predictions answered 200."""
        return self.statuses.get(200, 0)


class SimulatedEnvironments(Gatekeeper):
    """``count`` Lambda execution environments behind one app: each its own ``Gatekeeper`` (its
    writer lanes, key cache, item views), the one serving a request set in ``current`` (the
    replay goes round-robin: Lambda hands a request to any idle environment). Lane ids are drawn
    from ``seed``, so a replay's shard homes are the same every run."""

    def __init__(
        self, *, store: Any, settings: Any, clock: Callable[[], float], count: int, seed: int
    ) -> None:
        super().__init__(store=store, settings=settings, clock=clock)
        rng = random.Random(seed)  # noqa: S311 - simulated lane ids, not secrets
        alphabet = string.ascii_letters + string.digits

        def ids() -> str:
            return "".join(rng.choice(alphabet) for _ in range(5))

        self._parts = (store, settings, clock)
        #: Each environment's writer lanes (its ``WriterPool``).
        self.pools = [WriterPool(ids=ids) for _ in range(count)]
        self.environments = [
            Gatekeeper(store=store, settings=settings, clock=clock, writers=pool)
            for pool in self.pools
        ]
        self.current = 0

    def _here(self) -> Gatekeeper:
        return self.environments[self.current]

    def admit(
        self, credentials: Credentials, *, model: str, rows: int, request_id: str, source_ip: str
    ) -> Any:
        return self._here().admit(
            credentials, model=model, rows=rows, request_id=request_id, source_ip=source_ip
        )

    def authenticate_with_headers(
        self, credentials: Credentials, *, model: str | None, source_ip: str
    ) -> tuple[Principal, dict[str, str]]:
        return self._here().authenticate_with_headers(credentials, model=model, source_ip=source_ip)

    def refuse(
        self, credentials: Credentials, *, model: str | None, request_id: str, source_ip: str
    ) -> dict[str, str]:
        return self._here().refuse(
            credentials, model=model, request_id=request_id, source_ip=source_ip
        )

    def credential_failure(self, error: AuthenticationError, *, source_ip: str) -> SecurityError:
        return self._here().credential_failure(error, source_ip=source_ip)


#: Entries of an environment's key cache and of its item views (``security.keycache``,
#: ``security.itemviews``: LRUs of 4,096; tests/bench checks the two modules agree).
CACHE_ENTRIES = 4096


def eviction_seconds(
    population: int, rate_per_key: float, environments: int, entries: int = CACHE_ENTRIES
) -> float:
    """How long a key's entry lives in one environment's LRU of ``entries`` without a visit,
    when ``population`` keys each send ``rate_per_key`` requests a second spread uniformly at
    random over ``environments`` (Che's approximation: the entry is evicted once ``entries``
    other keys have visited; the number of distinct keys visiting in ``t`` is
    ``population x (1 - exp(-t x rate_per_key / environments))``). Infinite when every key fits.
    """
    if entries >= population:
        return math.inf
    per_environment = rate_per_key / environments
    return -math.log(1.0 - entries / population) / per_environment


class SpreadEnvironments(SimulatedEnvironments):
    """``SimulatedEnvironments`` for a sample of many keys: each request goes to the environment
    ``route`` names (the replay draws it at random, as Lambda hands a request to any idle one).
    The keys not simulated still pass through every environment and push the sampled keys out
    of its caches: a key's view in an environment (its cached key and item view) is kept for
    ``evict_after`` seconds after its last visit there (``eviction_seconds``), then dropped. A
    sampled key's view in an environment is a ``Gatekeeper`` of its own on that environment's
    writer lanes, so dropping it empties exactly that key's caches there and keeps the lanes."""

    def __init__(
        self,
        *,
        store: Any,
        settings: Any,
        clock: Callable[[], float],
        count: int,
        seed: int,
        evict_after: float,
    ) -> None:
        super().__init__(store=store, settings=settings, clock=clock, count=count, seed=seed)
        self._evict_after = evict_after
        self._views: dict[tuple[int, int], tuple[Gatekeeper, float]] = {}
        self._serving = self.environments[0]
        self.visits = 0
        self.cold = 0

    def route(self, key: int, environment: int, now: float) -> None:
        """Serve the next request of sampled key ``key`` in ``environment`` at ``now``."""
        self.visits += 1
        held = self._views.get((key, environment))
        if held is None or now - held[1] > self._evict_after:
            self.cold += 1
            store, settings, clock = self._parts
            gatekeeper = Gatekeeper(
                store=store, settings=settings, clock=clock, writers=self.pools[environment]
            )
        else:
            gatekeeper = held[0]
        self._views[(key, environment)] = (gatekeeper, now)
        self._serving = gatekeeper

    def _here(self) -> Gatekeeper:
        return self._serving


class _Discard(io.StringIO):
    """A text stream that drops what it is given (the replay's audit log)."""

    def write(self, text: str) -> int:
        return len(text)


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


def _drain(sink: Any, poller: _Pollers | None) -> None:
    """The environment's buffer is sent and the pollers deliver everything they hold."""
    if sink is not None:
        sink.flush()
    if poller is not None:
        poller.receive_if(True, sink)
        poller.finish()


def _predict(
    handler: Callable[[dict[str, Any], Any], dict[str, Any]],
    api_key: str,
    rows: list[list[float]],
    index: int,
    width: int,
    rng: random.Random,
) -> int:
    """Send the ``index``-th request (``width`` rows from ``rows``, a request id from ``rng``)
    with ``api_key`` through ``handler``; its status code."""
    first = (index * width) % len(rows)
    body = (
        {"features": rows[first]}
        if width == 1
        else {"instances": [rows[(first + j) % len(rows)] for j in range(width)]}
    )
    event = rest_event(path="/predict", body=body, headers={"X-API-Key": api_key})
    event["requestContext"]["requestId"] = str(uuid.UUID(int=rng.getrandbits(128)))
    response = handler(event, LambdaContext("PredictFunction", log_stream_name="capacity"))
    return int(response["statusCode"])


class CapacityReplay:
    """Runs scenarios against one moto endpoint (each on a fresh table and queue)."""

    def __init__(
        self,
        root: Path,
        endpoint: str,
        *,
        pollers: int = POLLERS,
        flush_seconds: float | None = None,
    ) -> None:
        """``root``: the repository (template.yaml, models/); ``endpoint``: a moto server;
        ``pollers``: the event source's, each with its own monitor environment;
        ``flush_seconds``: the monitor buffer's age instead of the template's (0: unbuffered)."""
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
        self._event_source = EventSourceModel.from_template(template)
        self.pollers = pollers
        monitor_env = dict(template.function("MonitorFunction").environment)
        # The monitor's own settings: the predict function's and its buffer rule.
        buffered = Settings.from_env(monitor_env)
        self._monitor_settings = {
            "monitor_flush_seconds": buffered.monitor_flush_seconds
            if flush_seconds is None
            else flush_seconds,
            "monitor_flush_messages": buffered.monitor_flush_messages,
            "monitor_max_pending_bytes": buffered.monitor_max_pending_bytes,
        }

    # ------------------------------------------------------------------ one scenario
    def run(
        self, scenario: Scenario, *, log: Callable[[str], None] | None = None
    ) -> ScenarioResult:
        """Run ``scenario``: create its keys, send its requests, feed the monitor."""
        started = time.perf_counter()
        clock, table, queue_url, settings, meter = self._begin(scenario)
        keys = self._create_keys(settings, scenario, clock)
        environments = self._environments(settings, meter, clock, scenario.environment_count)
        handler, sink = self._predict_handler(settings, meter, clock, environments)
        poller = self._pollers(queue_url, settings, meter, clock)
        width = scenario.rows_per_request
        rows = benign_rows(self._root, min(scenario.requests * width, 4096))
        rng = random.Random(_SEED)  # noqa: S311 - request ids, not secrets
        statuses: Counter[int] = Counter()
        step = 1.0 / scenario.rate
        for index in range(scenario.requests):
            clock.now = START + index * step
            environments.current = index % scenario.environment_count
            if poller is not None:
                poller.tick()
            api_key, _ = keys[index % len(keys)]
            statuses[_predict(handler, api_key, rows, index, width, rng)] += 1
            if poller is not None:
                poller.receive_if(sink is None or sink.calls != poller.seen_calls, sink)
            if log is not None and (index + 1) % 1000 == 0:
                log(f"  {scenario.label}: {index + 1}/{scenario.requests} requests")
        # The environment's buffer leaves with its next request (or at shutdown); the poller's
        # open batches close when their windows end.
        clock.now = START + scenario.requests * step
        _drain(sink, poller)
        if poller is not None:
            poller.flush()  # the monitor environments shut down
        counting = [
            pk
            for _, key in keys
            for pk in (
                [key]
                if scenario.shards == 1
                else [shard_pk(key, k) for k in range(scenario.shards)]
            )
        ]
        result = ScenarioResult(
            scenario=scenario,
            start=START,
            end=START + scenario.requests / scenario.rate,
            records=tuple(meter.records),
            violations=tuple(meter.violations),
            statuses=dict(statuses),
            key_pks=frozenset(counting) | {pk for _, pk in keys},
            counter_items=tuple(self._counter_item(table, pk) for pk in counting[:100]),
            monitor_failures=poller.failures if poller is not None else 0,
            wall_seconds=time.perf_counter() - started,
            environments=scenario.environment_count,
            monitor_batches=tuple(poller.batches) if poller is not None else (),
            queue_calls=sink.calls if sink is not None else 0,
            rows_monitored=self._rows_monitored(table),
            **self._buffer_fields(poller),
        )
        self._end(table, queue_url)
        return result

    # ------------------------------------------------------------------ steady state
    def run_steady(
        self, scenario: Scenario, *, log: Callable[[str], None] | None = None
    ) -> ScenarioResult:
        """Run a sampled scenario (``scenario.sample`` of its ``keys``) at its steady state.

        Each sampled key sends ``rate_per_key`` requests a second, the keys evenly interleaved;
        each request goes to one of the scenario's environments drawn at random
        (``SpreadEnvironments``, caches dropped after ``eviction_seconds`` of the whole
        population). First ``warmup_seconds`` unmetered (the meter paused): the keys' items
        take on the lanes of the environments that wrote them and the monitor's states grow to
        their plateau through the real monitor, fed by the template's event source. Then
        ``seconds`` metered, the monitor fed the sample's share of each batch: a batch of
        ``BatchSize`` messages from the whole population holds ``BatchSize x sample / keys`` of
        the sample's (at least one), so each sampled principal has as many messages per batch
        as it would among all the keys.
        """
        if scenario.sample is None:
            raise ValueError("run_steady takes a sampled scenario")
        started = time.perf_counter()
        clock, table, queue_url, settings, meter = self._begin(scenario)
        keys = self._create_keys(settings, scenario, clock, count=scenario.sample)
        count = scenario.environment_count
        evict_after = eviction_seconds(scenario.keys, scenario.rate_per_key, count)
        store = self._metered_store(settings, meter)
        environments = SpreadEnvironments(
            store=store, settings=settings, clock=clock, count=count, seed=_SEED,
            evict_after=evict_after,
        )  # fmt: skip
        handler, sink = self._predict_handler(settings, meter, clock, environments)
        poller = self._pollers(queue_url, settings, meter, clock)
        share = EventSourceModel(
            batch_size=max(
                1, round(self._event_source.batch_size * scenario.sample / scenario.keys)
            ),
            window_seconds=self._event_source.window_seconds,
        )
        rows = benign_rows(self._root, 4096)
        rng = random.Random(_SEED)  # noqa: S311 - request ids and environments, not secrets
        statuses: Counter[int] = Counter()
        per_key = round(scenario.rate_per_key * (scenario.warmup_seconds + scenario.seconds))
        first_metered = round(scenario.rate_per_key * scenario.warmup_seconds)
        metered_from = START + first_metered / scenario.rate_per_key
        meter.paused = True
        sent = calls_before = rows_before = 0
        for turn in range(per_key):
            if turn == first_metered:
                # The warm-up's last messages reach the monitor, then the metered window opens.
                clock.now = metered_from
                _drain(sink, poller)
                if poller is not None:
                    poller.model = share
                    poller.batches.clear()
                meter.paused = False
                environments.visits = environments.cold = 0
                statuses.clear()
                self.metering_starts()
                calls_before = sink.calls if sink is not None else 0
                # The monitor environments keep their buffers (the steady state goes on): the
                # rows they hold count as monitored before the window.
                rows_before = self._rows_monitored(table) + (
                    poller.pending_rows() if poller is not None else 0
                )
            width = 1 if turn >= first_metered else scenario.warmup_rows_per_request
            for index, (api_key, _) in enumerate(keys):
                clock.now = START + (turn + index / len(keys)) / scenario.rate_per_key
                environments.route(index, rng.randrange(count), clock.now)
                if poller is not None:
                    poller.tick()
                statuses[_predict(handler, api_key, rows, sent, width, rng)] += 1
                sent += 1
                if poller is not None:
                    poller.receive_if(sink is None or sink.calls != poller.seen_calls, sink)
            if log is not None and (turn + 1) % 50 == 0:
                log(f"  {scenario.label}: {turn + 1}/{per_key} s simulated")
        end = START + per_key / scenario.rate_per_key
        clock.now = end
        _drain(sink, poller)
        if poller is not None:
            # What the buffers hold at the end is flushed in the steady state's next seconds,
            # as the warm-up's were in the window: unmetered, so the window counts one period.
            meter.paused = True
            poller.flush()
        result = ScenarioResult(
            scenario=scenario,
            start=metered_from,
            end=end,
            records=tuple(meter.records),
            violations=tuple(meter.violations),
            statuses=dict(statuses),
            key_pks=frozenset(pk for _, pk in keys),
            counter_items=tuple(self._counter_item(table, pk) for _, pk in keys),
            monitor_failures=poller.failures if poller is not None else 0,
            wall_seconds=time.perf_counter() - started,
            environments=count,
            monitor_batches=tuple(poller.batches) if poller is not None else (),
            queue_calls=sink.calls - calls_before if sink is not None else 0,
            rows_monitored=self._rows_monitored(table) - rows_before,
            cold_requests=environments.cold,
            evict_after=evict_after,
            event_source=share,
            template_batch=self._event_source.batch_size,
            **self._buffer_fields(poller),
        )
        self._end(table, queue_url)
        return result

    def _begin(
        self, scenario: Scenario
    ) -> tuple[SimulatedClock, str, str | None, Any, CapacityMeter]:
        """A scenario's clock, fresh table and queue, settings on them, and meter."""
        clock = SimulatedClock(START)
        table, queue_url = self._fresh_table_and_queue(queue=scenario.monitor)
        settings = dataclasses.replace(
            self._settings, table_name=table, extraction_queue_url=queue_url
        )
        return clock, table, queue_url, settings, CapacityMeter(reader=self._plain, clock=clock)

    def _end(self, table: str, queue_url: str | None) -> None:
        self._plain.delete_table(TableName=table)
        if queue_url:
            self._sqs.delete_queue(QueueUrl=queue_url)

    def metering_starts(self) -> None:
        """Called by ``run_steady`` when its metered window opens (after the warm-up)."""

    def _rows_monitored(self, table: str) -> int:
        from security.extraction import DetectorState

        total = 0
        pages = self._plain.get_paginator("scan").paginate(TableName=table)
        for item in (item for page in pages for item in page.get("Items", [])):
            if item["pk"]["S"].startswith("mon#") and "state" in item:
                total += DetectorState.from_bytes(bytes(item["state"]["B"])).rows_seen
        return total

    def _fresh_table_and_queue(self, *, queue: bool) -> tuple[str, str | None]:
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
        if not queue:
            return name, None
        queue_url = self._sqs.create_queue(QueueName=name)["QueueUrl"]
        return name, str(queue_url)

    def _create_keys(
        self, settings: Any, scenario: Scenario, clock: SimulatedClock, count: int | None = None
    ) -> list[tuple[str, str]]:
        """(API key, partition key) of each of the scenario's keys (the first ``count``)."""
        from security.admin import KeyAdmin, uncapped
        from security.store import PrincipalStore, key_pk

        admin = KeyAdmin(
            store=PrincipalStore(client=self._plain, table_name=settings.table_name),
            settings=uncapped(settings),
            clock=clock,
        )
        width = max(scenario.rows_per_request, scenario.warmup_rows_per_request)
        per_minute = max(2, math.ceil(scenario.rate_per_key * width * 120))
        keys = []
        # Only the keys that send in the window are created (requests go round-robin).
        for index in range(count if count is not None else min(scenario.keys, scenario.requests)):
            created = admin.create(
                owner=f"capacity-{index}",
                rate_limit=f"{per_minute}/minute",
                budget=10**9,
                output_policy=settings.default_output_policy,
                shards=scenario.shards,
            )
            keys.append((str(created["api_key"]), key_pk(str(created["key_id"]))))
        return keys

    def _metered_store(self, settings: Any, meter: CapacityMeter) -> Any:
        from security.store import PrincipalStore

        return PrincipalStore(client=meter.attach(self._dynamodb()), table_name=settings.table_name)

    def _environments(
        self, settings: Any, meter: CapacityMeter, clock: SimulatedClock, count: int
    ) -> SimulatedEnvironments:
        return SimulatedEnvironments(
            store=self._metered_store(settings, meter),
            settings=settings,
            clock=clock,
            count=count,
            seed=_SEED,
        )

    def _predict_handler(
        self,
        settings: Any,
        meter: CapacityMeter,
        clock: SimulatedClock,
        environments: SimulatedEnvironments,
    ) -> tuple[Callable[[dict[str, Any], Any], dict[str, Any]], Any]:
        """The handler, and its app's query sink (the execution environment's buffer)."""
        from security.snapstart import SnapStartHooks
        from security.wiring import ApiFunction, Clients, build_predict_app

        clients = Clients(dynamodb=meter.attach(self._dynamodb()), sqs=self._sqs_client())
        app = build_predict_app(
            settings, clients, audit=self._audit, clock=clock, gatekeeper=environments
        )
        function = ApiFunction(settings, clients, SnapStartHooks(), self._audit, app)
        handler: Callable[[dict[str, Any], Any], dict[str, Any]] = function.lambda_handler()
        return handler, app.state.query_sink

    def _pollers(
        self, queue_url: str | None, settings: Any, meter: CapacityMeter, clock: SimulatedClock
    ) -> _Pollers | None:
        """The event source's pollers, each with its own monitor environment (none without a
        queue)."""
        if not queue_url:
            return None
        monitor_settings = dataclasses.replace(settings, **self._monitor_settings)
        environments = [
            self._monitor_handler(monitor_settings, meter, clock) for _ in range(self.pollers)
        ]
        return _Pollers(self, queue_url, environments, clock)

    def _buffer_fields(self, poller: _Pollers | None) -> dict[str, Any]:
        if poller is None:
            return {}
        buffer = poller.monitors[0].buffer
        return {"pollers": len(poller.monitors), "flush_seconds": buffer.flush_seconds,
                "flush_messages": buffer.flush_messages}  # fmt: skip

    def _monitor_handler(
        self, settings: Any, meter: CapacityMeter, clock: SimulatedClock
    ) -> tuple[Callable[[dict[str, Any], Any], dict[str, Any]], ExtractionMonitor]:
        """One monitor environment: its handler and its monitor (to flush it at the end)."""
        from security.wiring import monitor_function

        def factory(service: str, *, config: Any = None) -> Any:
            if service == "dynamodb":
                return meter.attach(self._dynamodb())
            return self._sqs_client()

        function = monitor_function(settings, factory=factory, clock=clock)

        def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
            # handlers/monitor.py's body
            function.audit.enter(context)
            return function.monitor.process_sqs_event(event)

        return handler, function.monitor

    def receive(self, queue_url: str) -> list[dict[str, Any]]:
        """Every message visible in the queue now, deleted as received (the poller holds them)."""
        received: list[dict[str, Any]] = []
        while True:
            response = self._sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=RECEIVE_MAX, WaitTimeSeconds=0
            )
            batch = [dict(message) for message in response.get("Messages", [])]
            if not batch:
                return received
            self._sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": str(m["ReceiptHandle"])}
                    for i, m in enumerate(batch)
                ],
            )
            received += batch

    @property
    def event_source(self) -> EventSourceModel:
        """MonitorEventSource as template.yaml declares it."""
        return self._event_source

    def _counter_item(self, table: str, pk: str) -> CounterItem:
        from mlmoat.bench.itemsize import item_size
        from security.store import RATE_ATTR_PREFIX
        from security.writers import WRITER_ATTR_PREFIX

        item = self._plain.get_item(TableName=table, Key={"pk": {"S": pk}}, ConsistentRead=True)
        found = item.get("Item") or {}
        lanes = {
            name: value for name, value in found.items() if name.startswith(WRITER_ATTR_PREFIX)
        }
        return CounterItem(
            pk=pk,
            size=item_size(found),
            lanes=len(lanes),
            lane_bytes=item_size(lanes),
            window_attrs=tuple(sorted(name for name in found if name.startswith(RATE_ATTR_PREFIX))),
        )


class _Poller:
    """One event-source poller: it holds the messages dealt to it until a batch is due, then
    invokes its monitor environment with it (``EventSourceModel``)."""

    def __init__(
        self,
        pollers: _Pollers,
        monitor: Callable[[dict[str, Any], Any], dict[str, Any]],
        clock: SimulatedClock,
    ) -> None:
        self._pollers = pollers
        self._monitor = monitor
        self._clock = clock
        self.held: list[tuple[float, dict[str, Any]]] = []

    def tick(self) -> None:
        """Invoke the monitor with every batch due at the simulated time now."""
        model = self._pollers.model
        while self.held and (
            len(self.held) >= model.batch_size
            or self._clock() - self.held[0][0] >= model.window_seconds
        ):
            self._invoke(model.batch_size)

    def finish(self) -> None:
        """Deliver what is held (the windows close after the last request)."""
        while self.held:
            self._invoke(self._pollers.model.batch_size)

    def _invoke(self, size: int) -> None:
        batch, self.held = self.held[:size], self.held[size:]
        result = self._monitor(
            sqs_event([m for _, m in batch]),
            LambdaContext("MonitorFunction", log_stream_name="capacity"),
        )
        self._pollers.failures += len(result.get("batchItemFailures", []))
        self._pollers.batches.append(len(batch))


class _Pollers:
    """The event source's pollers: what the sink has sent is received and dealt to them at
    random; each batches its own and invokes its own monitor environment."""

    def __init__(
        self,
        replay: CapacityReplay,
        queue_url: str,
        environments: list[
            tuple[Callable[[dict[str, Any], Any], dict[str, Any]], ExtractionMonitor]
        ],
        clock: SimulatedClock,
    ) -> None:
        self._replay = replay
        self._queue_url = queue_url
        self._clock = clock
        self._pollers = [_Poller(self, handler, clock) for handler, _ in environments]
        #: Each environment's monitor (its buffer).
        self.monitors = [monitor for _, monitor in environments]
        #: How batches close (the template's event source unless replaced).
        self.model = replay.event_source
        self.seen_calls = 0
        self.failures = 0
        #: Messages of each monitor invocation, in order (all pollers).
        self.batches: list[int] = []
        # Each received message goes to one poller at random (seeded: the same every run), as
        # each of Lambda's pollers receives what the queue hands it.
        self._rng = random.Random(_SEED)  # noqa: S311 - simulated, not a secret

    def receive_if(self, sent: bool, sink: Any) -> None:
        """Receive what the sink has sent (only after it sent: no call otherwise)."""
        if sink is not None:
            self.seen_calls = sink.calls
        if sent:
            now = self._clock()
            for message in self._replay.receive(self._queue_url):
                self._pollers[self._rng.randrange(len(self._pollers))].held.append((now, message))
            self.tick()

    def tick(self) -> None:
        """Every poller invokes its monitor with the batches due now."""
        for poller in self._pollers:
            poller.tick()

    def finish(self) -> None:
        """Every poller delivers what it holds."""
        for poller in self._pollers:
            poller.finish()

    def flush(self) -> None:
        """Every monitor environment applies its buffer, as at shutdown."""
        for monitor in self.monitors:
            monitor.flush()

    def pending_rows(self) -> int:
        """Rows the monitor environments' buffers hold."""
        return sum(monitor.buffer.pending_rows() for monitor in self.monitors)
