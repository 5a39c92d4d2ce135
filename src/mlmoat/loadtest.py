"""The bounded load test across instances: several ``start-api`` processes, one DynamoDB.

``python -m mlmoat.loadtest [--instances 3] [--clients 8] [--keys 24] [--duration 30]``

It starts one local DynamoDB (``mlmoat.local.server.EmbeddedDynamoDB``, a moto server that
applies DynamoDB calls one at a time as DynamoDB applies the writes to an item), creates its
tables (``mlmoat local bootstrap``),
creates many keys with small budgets and rate limits (``mlmoat keys create``), starts several
``mlmoat local start-api``
processes standing in for Lambda instances, all sharing that one table, and drives concurrent
clients against them for a bounded time and a bounded number of requests, on loopback only.
Then it stops everything and checks, from three independent records (the responses the
clients saw, the audit lines the instances wrote, the items DynamoDB holds):

* no 5xx and no transport error; every status is 200 or 429;
* exactly one audit record per request (by ``X-Request-Id``), and none without a request;
* every budget exact to the row: rows used never exceed it, and every refusal for the budget
  came when the request's rows no longer fitted;
* every rate window exact to the row, the same way, per window;
* DynamoDB's counters (``rows_used``, ``requests``, the live window) equal the audit trail's
  allowed rows and requests, which equal the responses'.

It prints a summary and exits 0 only if every check holds; ``--report`` writes it as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3

from mlmoat.local.server import EmbeddedDynamoDB, free_port, serve_until_signalled

_HOST = "127.0.0.1"
_READY_TIMEOUT_S = 120.0
_REQUEST_TIMEOUT_S = 30.0
_REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True, slots=True)
class LoadConfig:
    """How big and how long the run is; every bound is explicit."""

    instances: int = 3
    clients: int = 8
    keys: int = 24
    duration_s: float = 30.0
    max_requests: int = 20000
    seed: int = 7
    model: str = "iris"
    batch_share: float = 0.3
    jwt_subjects: int = 4
    work_dir: str | None = None


@dataclass(frozen=True, slots=True)
class KeyPlan:
    """One key's limits: ``rate`` rows per ``window_s`` seconds and ``budget`` rows ever."""

    profile: str
    rate: int
    window_s: int
    budget: int

    @property
    def rate_text(self) -> str:
        """The ``--rate-limit`` argument."""
        unit = {1: "second", 60: "minute", 3600: "hour"}[self.window_s]
        return f"{self.rate}/{unit}"


def plan_keys(count: int, rng: random.Random) -> list[KeyPlan]:
    """A mix of keys where the budget binds, the minute window binds, both, or a 1 s window."""
    plans: list[KeyPlan] = []
    for index in range(count):
        kind = ("budget", "minute", "both", "second")[index % 4]
        if kind == "budget":
            plans.append(KeyPlan(kind, rate=600, window_s=60, budget=rng.randint(8, 30)))
        elif kind == "minute":
            plans.append(KeyPlan(kind, rate=rng.randint(5, 14), window_s=60, budget=1_000_000))
        elif kind == "both":
            rate = rng.randint(6, 12)
            plans.append(KeyPlan(kind, rate=rate, window_s=60, budget=rate + rng.randint(2, 8)))
        else:
            plans.append(KeyPlan(kind, rate=rng.randint(2, 4), window_s=1, budget=1_000_000))
    return plans


# --------------------------------------------------------------------------- processes
def local_env(dynamodb_port: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every local command gets: the local endpoint and dummy credentials."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "SECURITY_", "POWERTOOLS_"))
    }
    env.update(
        {
            "AWS_ENDPOINT_URL_DYNAMODB": f"http://{_HOST}:{dynamodb_port}",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",  # noqa: S105 - the local emulator's dummy
        }
    )
    env.update(extra or {})
    return env


def mlmoat_command(*args: str) -> list[str]:
    """``mlmoat ARGS`` run with this interpreter, whatever the PATH says."""
    return [sys.executable, "-m", "mlmoat.cli", *args]


def dynamodb_command(port: int) -> list[str]:
    """The command that serves an ``EmbeddedDynamoDB`` on ``port`` until SIGTERM/SIGINT.

    SIGUSR1 stops its listener and SIGUSR2 starts it again, state intact
    (``mlmoat.local.server.serve_until_signalled``).
    """
    return [sys.executable, "-m", "mlmoat.loadtest", "--serve-dynamodb", str(port)]


def wait_for_port(port: int, *, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until something accepts connections on ``port``.

    Raises:
        RuntimeError: the process exited or the port stayed closed past the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((_HOST, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listening on {_HOST}:{port} after {timeout_s:.0f}s")


def stop_process(process: subprocess.Popen[bytes], *, timeout_s: float = 15.0) -> None:
    """Ask a process to stop (SIGINT, then SIGTERM), kill it only if it does not."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5.0)):
        process.send_signal(sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
    process.kill()
    process.wait(timeout=5.0)


@dataclass
class LocalStack:
    """One embedded DynamoDB and ``instances`` start-api processes sharing it."""

    work_dir: Path
    instances: int
    env_extra: Mapping[str, str] = field(default_factory=dict)
    env_vars_file: Path | None = None
    dynamodb_port: int = 0
    api_ports: list[int] = field(default_factory=list)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[Path] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The environment for local commands against this stack."""
        return local_env(self.dynamodb_port, self.env_extra)

    @property
    def api_logs(self) -> list[Path]:
        """The combined stdout/stderr file of each start-api instance."""
        return self._logs[1:]

    def start_dynamodb(self) -> None:
        """Start one serialised moto server and create the template's tables with bootstrap.

        Raises:
            RuntimeError: the server did not come up or the bootstrap failed.
        """
        self.dynamodb_port = free_port()
        log = self.work_dir / "dynamodb.log"
        self._spawn(dynamodb_command(self.dynamodb_port), log)
        wait_for_port(self.dynamodb_port, process=self._processes[-1], timeout_s=_READY_TIMEOUT_S)
        subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
            mlmoat_command("local", "bootstrap"),
            env=self.env,
            check=True,
            capture_output=True,
            timeout=_READY_TIMEOUT_S,
        )

    def start_apis(self) -> None:
        """Build the host variant once, start the instances, wait until each accepts connections.

        Raises:
            RuntimeError: an instance exited or did not come up in time.
        """
        build_host()
        for index in range(self.instances):
            port = free_port()
            self.api_ports.append(port)
            log = self.work_dir / f"instance-{index}.log"
            extra = ["--env-vars", str(self.env_vars_file)] if self.env_vars_file else []
            self._spawn(
                mlmoat_command("local", "start-api", "--port", str(port), "--no-build", *extra),
                log,
            )
        for port, process in zip(self.api_ports, self._processes[1:], strict=True):
            wait_for_port(port, process=process, timeout_s=_READY_TIMEOUT_S)

    def stop_apis(self) -> None:
        """Stop the start-api instances (their logs are complete afterwards)."""
        for process in self._processes[1:]:
            stop_process(process)

    def stop(self) -> None:
        """Stop every process this stack started, newest first."""
        for process in reversed(self._processes):
            stop_process(process)

    def _spawn(self, command: list[str], log: Path) -> None:
        handle = log.open("wb")
        process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            command, env=self.env, stdout=handle, stderr=subprocess.STDOUT, cwd=_REPO
        )
        handle.close()
        self._processes.append(process)
        self._logs.append(log)


SECURITY_TABLE = "SecurityTable"


def table_name() -> str:
    """The local name of the template's security table (as every local command names it)."""
    from mlmoat.local.template import Template, find_template

    return Template(find_template(_REPO)).physical_name(SECURITY_TABLE)


def dynamodb_client(env: Mapping[str, str]) -> Any:
    """A boto3 DynamoDB client for the local endpoint in ``env``."""
    return boto3.client(
        "dynamodb",
        endpoint_url=env["AWS_ENDPOINT_URL_DYNAMODB"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def create_key(
    env: Mapping[str, str],
    *,
    owner: str,
    plan: KeyPlan,
    scopes: Sequence[str] = (),
    output: str = "label",
) -> tuple[str, str]:
    """Create one key through ``security.admin.KeyAdmin`` (what ``mlmoat keys create`` runs).

    Returns ``(key_id, api_key)``. In-process rather than one CLI process per key: the run
    creates dozens of keys and what is under test is the API, not the admin tool.

    Raises:
        InvalidPayloadError: the plan is not a valid key configuration.
        StoreUnavailableError: the local DynamoDB failed.
    """
    from security.admin import KeyAdmin
    from security.settings import Settings
    from security.store import PrincipalStore

    table = table_name()
    store = PrincipalStore(client=dynamodb_client(env), table_name=table)
    admin = KeyAdmin(store=store, settings=Settings(table_name=table, model_dir=str(_REPO)))
    created = admin.create(
        owner=owner,
        scopes=scopes,
        rate_limit=plan.rate_text,
        budget=plan.budget,
        output_policy=output,
    )
    return str(created["key_id"]), str(created["api_key"])


def build_host() -> None:
    """Build (or confirm fresh) the host variant once, before instances start with --no-build.

    Raises:
        BuildError: the build failed.
    """
    from mlmoat.local.build import ensure_host_build

    ensure_host_build(_REPO)


# --------------------------------------------------------------------------- traffic
@dataclass(frozen=True, slots=True)
class Sample:
    """One request as the client saw it (never the secret)."""

    key_id: str
    instance: int
    rows: int
    sent: float
    received: float
    status: int
    request_id: str | None
    error_code: str | None
    returned_rows: int
    transport_error: str | None = None
    route: str = "/predict"


@dataclass(frozen=True, slots=True)
class LoadKey:
    """A principal under load: an API key, or a JWT subject (``token`` set), and its plan.

    ``key_id`` names it in samples and messages (the key id, or the token's subject); ``pk`` is
    its item in the security table (``key#<id>`` or ``sub#<issuer-hash>#<subject>``).
    """

    key_id: str
    api_key: str
    plan: KeyPlan
    token: str | None = None
    subject_pk: str | None = None

    @property
    def pk(self) -> str:
        """The principal's item in the security table."""
        return self.subject_pk or f"key#{self.key_id}"


def feature_envelope(model: str) -> list[tuple[float, float]]:
    """Per-feature (low, high) of the model's training envelope, from its manifest.

    Raises:
        RuntimeError: the manifest does not describe an envelope.
    """
    manifest = json.loads((_REPO / "models" / model / "manifest.json").read_text())
    envelope = manifest.get("envelope") or manifest.get("feature_envelope")
    if isinstance(envelope, dict):
        names = manifest["feature_names"]
        return [(float(envelope[n]["min"]), float(envelope[n]["max"])) for n in names]
    if isinstance(envelope, list):
        return [(float(e["min"]), float(e["max"])) for e in envelope]
    raise RuntimeError(f"models/{model}/manifest.json has no training envelope")


def _body(rows: int, envelope: Sequence[tuple[float, float]], rng: random.Random) -> bytes:
    values = [[round(rng.uniform(lo, hi), 3) for lo, hi in envelope] for _ in range(rows)]
    document = {"features": values[0]} if rows == 1 else {"instances": values}
    return json.dumps(document).encode()


def send(
    port: int, *, path: str, body: bytes, headers: Mapping[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """POST one request on a fresh loopback connection; return status, headers, body."""
    connection = http.client.HTTPConnection(_HOST, port, timeout=_REQUEST_TIMEOUT_S)
    try:
        connection.request("POST", path, body=body, headers={**headers, "Connection": "close"})
        response = connection.getresponse()
        payload = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload
    finally:
        connection.close()


def _one_request(
    key: LoadKey,
    instance: int,
    port: int,
    rows: int,
    body: bytes,
    model: str,
    *,
    default_route: bool = True,
) -> Sample:
    # The default model answers on both routes; both count against the same key.
    path = "/predict" if model == "iris" and default_route else f"/models/{model}/predict"
    headers = {"Content-Type": "application/json"}
    if key.token is not None:
        headers["Authorization"] = f"Bearer {key.token}"
    else:
        headers["X-API-Key"] = key.api_key
    sent = time.time()
    try:
        status, response_headers, payload = send(port, path=path, body=body, headers=headers)
    except (OSError, http.client.HTTPException) as exc:
        return Sample(key.key_id, instance, rows, sent, time.time(), 0, None, None, 0,
                      transport_error=type(exc).__name__, route=path)  # fmt: skip
    received = time.time()
    error_code: str | None = None
    returned = 0
    with contextlib.suppress(ValueError):
        document = json.loads(payload)
        if isinstance(document, dict):
            if isinstance(document.get("error"), dict):
                error_code = str(document["error"].get("code"))
            if isinstance(document.get("predictions"), list):
                returned = len(document["predictions"])
    return Sample(key.key_id, instance, rows, sent, received, status,
                  response_headers.get("x-request-id"), error_code, returned,
                  route=path)  # fmt: skip


JWT_ISSUER = "https://issuer.load.mlmoat.test"
JWT_AUDIENCE = "mlmoat-load"
JWT_PARAMETER = "/mlmoat/load/jwt-public-key"


def jwt_subjects(
    env: Mapping[str, str], count: int, rng: random.Random, *, seed: int, work: Path, valid_s: float
) -> tuple[list[LoadKey], Path]:
    """JWT subjects with small limits, and the ``--env-vars`` file that turns JWT on.

    A fresh RSA key signs the tokens; its public half goes to SSM on the local endpoint, where
    the function fetches it. Each token narrows its subject's limits with the policy claims
    (``mlmoat:rate_limit``, ``mlmoat:budget``), which may not exceed the defaults (60/minute,
    10 000 rows). The subject's counters live on ``sub#<issuer-hash>#<subject>``, created by its
    first counted request, whichever instance serves it.
    """
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from security.tokens import issuer_hash

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    ssm = boto3.client(
        "ssm",
        endpoint_url=env["AWS_ENDPOINT_URL_DYNAMODB"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    ssm.put_parameter(Name=JWT_PARAMETER, Value=pem, Type="String", Overwrite=True)
    env_file = work / "jwt-env-vars.json"
    settings = {
        "SECURITY_JWT_ISSUER": JWT_ISSUER,
        "SECURITY_JWT_AUDIENCE": JWT_AUDIENCE,
        "SECURITY_JWT_PUBLIC_KEY_PARAMETER": JWT_PARAMETER,
    }
    env_file.write_text(json.dumps({"PredictFunction": settings}))
    now = int(time.time())
    subjects: list[LoadKey] = []
    for index in range(count):
        if index % 2 == 0:
            plan = KeyPlan("jwt-budget", rate=60, window_s=60, budget=rng.randint(8, 30))
        else:
            plan = KeyPlan("jwt-minute", rate=rng.randint(5, 14), window_s=60, budget=10000)
        subject = f"load-{seed}-subject-{index}"
        claims = {
            "iss": JWT_ISSUER,
            "aud": JWT_AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + int(valid_s) + 900,
            "scope": "predict:iris",
            "mlmoat:rate_limit": plan.rate_text,
            "mlmoat:budget": plan.budget,
        }
        token = jwt.encode(claims, private, algorithm="RS256")
        pk = f"sub#{issuer_hash(JWT_ISSUER)}#{subject}"
        subjects.append(LoadKey(subject, "", plan, token=token, subject_pk=pk))
    return subjects, env_file


def warm_up(key: LoadKey, ports: Sequence[int], model: str) -> tuple[list[Sample], int]:
    """Cold-start each instance with one request, one instance at a time, before the timed run.

    Returns the warm-up samples (checked like every other request) and how many cold starts
    failed and were retried: on a loaded 2-core machine several simultaneous inits can exceed
    Lambda's 10 s init limit, which says nothing about the API under test.
    """
    rng = random.Random(0)  # noqa: S311 - load shape, not security
    envelope = feature_envelope(model)
    samples: list[Sample] = []
    failed_inits = 0
    for index, port in enumerate(ports):
        for _ in range(3):
            sample = _one_request(key, index, port, 1, _body(1, envelope, rng), model)
            if sample.status == 502 and sample.request_id is None:
                failed_inits += 1
                continue
            samples.append(sample)
            break
    return samples, failed_inits


def drive(
    keys: Sequence[LoadKey], ports: Sequence[int], config: LoadConfig
) -> tuple[list[Sample], float]:
    """Run ``config.clients`` client threads until the duration or the request cap is reached."""
    envelope = feature_envelope(config.model)
    samples: list[Sample] = []
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + config.duration_s

    def client(index: int) -> None:
        rng = random.Random(config.seed * 1000 + index)  # noqa: S311 - load shape, not security
        while time.monotonic() < deadline:
            with lock:
                if issued[0] >= config.max_requests:
                    return
                issued[0] += 1
            key = rng.choice(keys)
            instance = rng.randrange(len(ports))
            rows = rng.randint(2, 3) if rng.random() < config.batch_share else 1
            body = _body(rows, envelope, rng)
            sample = _one_request(
                key, instance, ports[instance], rows, body, config.model,
                default_route=rng.random() < 0.5,
            )  # fmt: skip
            with lock:
                samples.append(sample)

    started = time.monotonic()
    threads = [
        threading.Thread(target=client, args=(i,), daemon=True) for i in range(config.clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=config.duration_s + _REQUEST_TIMEOUT_S + 30)
    return samples, time.monotonic() - started


# --------------------------------------------------------------------------- evidence
def read_audit(logs: Sequence[Path]) -> list[dict[str, Any]]:
    """Every audit record (JSON line with ``message == "audit"``) in the instances' logs."""
    records: list[dict[str, Any]] = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            # The function's JSON line is written whole, but start-api's own lines (REPORT) share
            # the file and can land in front of it without their newline: parse from the first
            # brace, wherever it is.
            start = line.find("{")
            if start < 0:
                continue
            try:
                record = json.loads(line[start:])
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("message") == "audit":
                records.append(record)
    return records


def read_items(env: Mapping[str, str], pks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The DynamoDB item of every principal (by partition key), read after the run."""
    client = dynamodb_client(env)
    table = table_name()
    items: dict[str, dict[str, Any]] = {}
    for pk in pks:
        raw = client.get_item(TableName=table, Key={"pk": {"S": pk}}, ConsistentRead=True).get(
            "Item"
        )
        if raw:
            items[pk] = {name: _plain(value) for name, value in raw.items()}
    return items


def read_key_items(env: Mapping[str, str], key_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The DynamoDB item of every key, read straight from the table after the run."""
    client = dynamodb_client(env)
    table = table_name()
    items: dict[str, dict[str, Any]] = {}
    for key_id in key_ids:
        raw = client.get_item(
            TableName=table, Key={"pk": {"S": f"key#{key_id}"}}, ConsistentRead=True
        ).get("Item")
        if raw:
            items[key_id] = {name: _plain(value) for name, value in raw.items()}
    return items


def _plain(value: Mapping[str, Any]) -> Any:
    ((kind, raw),) = value.items()
    if kind == "N":
        number = float(raw)
        return int(number) if number.is_integer() else number
    if kind in ("SS", "NS"):
        return sorted(raw)
    return raw


# --------------------------------------------------------------------------- checks
@dataclass
class Report:
    """What the run did and whether every exactness check held."""

    instances: int
    clients: int
    keys: int
    duration_s: float
    jwt_subjects: int = 0
    requests: int = 0
    allowed_requests: int = 0
    allowed_rows: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    routes: dict[str, int] = field(default_factory=dict)
    audit_records: int = 0
    extraction_flags: int = 0
    warmup_requests: int = 0
    failed_inits: int = 0
    windows_checked: int = 0
    windows_saturated: int = 0
    budgets_checked: int = 0
    budgets_exhausted: int = 0
    requests_per_second: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check held and there was traffic to check."""
        return not self.failures and self.requests > 0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {**asdict(self), "ok": self.ok}


def check_run(
    keys: Sequence[LoadKey],
    samples: Sequence[Sample],
    audit: Sequence[Mapping[str, Any]],
    items: Mapping[str, Mapping[str, Any]],
    report: Report,
) -> None:
    """Cross-check responses, audit records and DynamoDB items; record every failure."""
    fail = report.failures.append
    report.requests = len(samples)
    # The extraction monitor (served by the same start-api, off the hot path) writes its own
    # audit records for flags; the per-request records are the PredictFunction's.
    report.extraction_flags = sum(1 for r in audit if r.get("event") == "extraction_flag")
    audit = [r for r in audit if r.get("event", "request") == "request"]
    report.audit_records = len(audit)
    statuses: dict[str, int] = defaultdict(int)
    for sample in samples:
        statuses[str(sample.status) if not sample.transport_error else sample.transport_error] += 1
    report.statuses = dict(sorted(statuses.items()))
    routes: dict[str, int] = defaultdict(int)
    for sample in samples:
        routes[sample.route] += 1
    report.routes = dict(sorted(routes.items()))

    transport = [s for s in samples if s.transport_error]
    if transport:
        fail(f"{len(transport)} requests failed at the transport level")
    server_errors = [s for s in samples if s.status >= 500]
    if server_errors:
        fail(f"{len(server_errors)} responses were 5xx")
    unexpected = [s for s in samples if s.status not in (200, 429) and not s.transport_error]
    if unexpected:
        fail(f"{len(unexpected)} responses had a status other than 200/429")
    short = [s for s in samples if s.status == 200 and s.returned_rows != s.rows]
    if short:
        fail(f"{len(short)} allowed responses did not return one prediction per row")

    # Exactly one audit record per request, and none without a request.
    by_id: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in audit:
        by_id[str(record.get("request_id"))].append(record)
    missing_id = [s for s in samples if not s.request_id and not s.transport_error]
    if missing_id:
        fail(f"{len(missing_id)} responses carried no X-Request-Id")
    answered = {s.request_id for s in samples if s.request_id}
    no_record = [rid for rid in answered if len(by_id.get(rid, [])) == 0]
    duplicated = [rid for rid, recs in by_id.items() if len(recs) > 1]
    orphans = [rid for rid in by_id if rid not in answered]
    if no_record:
        fail(f"{len(no_record)} requests have no audit record")
    if duplicated:
        fail(f"{len(duplicated)} requests have more than one audit record")
    if orphans:
        fail(f"{len(orphans)} audit records match no request")
    pk_of = {key.key_id: key.pk for key in keys}
    for sample in samples:
        records = by_id.get(sample.request_id or "", [])
        if len(records) != 1:
            continue
        record = records[0]
        if int(record.get("status", -1)) != sample.status:
            fail(f"audit status {record.get('status')} != response {sample.status}")
        elif _principal(record) != pk_of.get(sample.key_id):
            fail("an audit record names another principal than the request's")
        elif sample.status == 200 and (
            record.get("decision") != "allow" or int(record.get("rows", -1)) != sample.rows
        ):
            fail("an allowed request's audit record is not allow with its rows")

    refused: dict[str, int] = defaultdict(int)
    for sample in samples:
        if sample.status == 429:
            refused[_refusal_reason(sample, by_id)] += 1
    report.refused = dict(sorted(refused.items()))
    allowed = [s for s in samples if s.status == 200]
    report.allowed_requests = len(allowed)
    report.allowed_rows = sum(s.rows for s in allowed)

    for key in keys:
        _check_key(key, samples, by_id, audit, items.get(key.pk), report)


def _principal(record: Mapping[str, Any]) -> str | None:
    """The principal an audit record names: ``principal_id``, or ``key#<key_id>``."""
    if record.get("principal_id"):
        return str(record["principal_id"])
    return f"key#{record['key_id']}" if record.get("key_id") else None


def _refusal_reason(sample: Sample, by_id: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    records = by_id.get(sample.request_id or "", [])
    if len(records) == 1 and records[0].get("reason"):
        return str(records[0]["reason"])
    return sample.error_code or "unknown"


def _is_budget(reason: str) -> bool:
    return "budget" in reason or "quota" in reason


def _check_key(
    key: LoadKey,
    samples: Sequence[Sample],
    by_id: Mapping[str, Sequence[Mapping[str, Any]]],
    audit: Sequence[Mapping[str, Any]],
    item: Mapping[str, Any] | None,
    report: Report,
) -> None:
    fail = report.failures.append
    mine = [s for s in samples if s.key_id == key.key_id and not s.transport_error]
    allowed = [s for s in mine if s.status == 200]
    refusals = [(s, _refusal_reason(s, by_id)) for s in mine if s.status == 429]
    served_rows = sum(s.rows for s in allowed)
    audited = [r for r in audit if _principal(r) == key.pk and r.get("decision") == "allow"]
    audit_rows = sum(int(r.get("rows", 0)) for r in audited)
    if item is None:
        fail(f"key {key.key_id}: no DynamoDB item after the run")
        return
    used = int(item.get("rows_used", 0))
    counted_requests = int(item.get("requests", 0))
    # Counters == audit trail == responses.
    if not used == audit_rows == served_rows:
        fail(f"key {key.key_id}: rows_used {used}, audit {audit_rows}, served {served_rows}")
    if counted_requests != len(audited) or len(audited) != len(allowed):
        fail(
            f"key {key.key_id}: requests {counted_requests}, audit {len(audited)}, "
            f"served {len(allowed)}"
        )
    # Budget: never over; a refusal for the budget only when the rows no longer fitted.
    report.budgets_checked += 1
    if used > key.plan.budget:
        fail(f"key {key.key_id}: {used} rows used over a budget of {key.plan.budget}")
    budget_refusals = [s for s, reason in refusals if _is_budget(reason)]
    for sample in budget_refusals:
        if used + sample.rows <= key.plan.budget:
            fail(
                f"key {key.key_id}: refused {sample.rows} rows for the budget with "
                f"{key.plan.budget - used} rows left"
            )
    if budget_refusals:
        report.budgets_exhausted += 1
    # Rate windows: attribute each request to its window when its send/receive interval lies
    # inside one window (the server's clock is this machine's); otherwise it is ambiguous.
    window = key.plan.window_s
    certain: dict[int, int] = defaultdict(int)
    maybe: dict[int, int] = defaultdict(int)
    for sample in allowed:
        first, last = int(sample.sent) // window, int(sample.received) // window
        if first == last:
            certain[first * window] += sample.rows
        else:
            for w in range(first, last + 1):
                maybe[w * window] += sample.rows
    for start in sorted(set(certain) | set(maybe)):
        report.windows_checked += 1
        if certain[start] > key.plan.rate:
            fail(f"key {key.key_id}: {certain[start]} rows in a window of {key.plan.rate}")
    saturated: set[int] = set()
    for sample, reason in refusals:
        if _is_budget(reason):
            continue
        first, last = int(sample.sent) // window, int(sample.received) // window
        if first != last:
            continue
        start = first * window
        if certain[start] + maybe[start] + sample.rows <= key.plan.rate:
            fail(
                f"key {key.key_id}: refused {sample.rows} rows for the rate with at most "
                f"{certain[start] + maybe[start]} of {key.plan.rate} used in the window"
            )
        saturated.add(start)
    report.windows_saturated += len(saturated)
    # The live window's counter in DynamoDB equals the rows attributed to that window.
    for name, value in item.items():
        if not name.startswith("rw_"):
            continue
        start = int(name[3:])
        low, high = certain.get(start, 0), certain.get(start, 0) + maybe.get(start, 0)
        if not low <= int(value) <= high:
            fail(f"key {key.key_id}: window {start} counter {value} outside [{low}, {high}]")


# --------------------------------------------------------------------------- the run
def _percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(config: LoadConfig) -> Report:
    """Run the whole load test once and return its report.

    Raises:
        RuntimeError: the local stack could not be started or keys could not be created.
    """
    rng = random.Random(config.seed)  # noqa: S311 - load shape, not security
    report = Report(config.instances, config.clients, config.keys, config.duration_s)
    report.jwt_subjects = config.jwt_subjects
    with _work_dir(config.work_dir) as work:
        stack = LocalStack(work_dir=work, instances=config.instances)
        try:
            stack.start_dynamodb()
            plans = plan_keys(config.keys, rng)
            keys = [
                LoadKey(*create_key(stack.env, owner=f"load-{config.seed}-{i}", plan=plan), plan)
                for i, plan in enumerate(plans)
            ]
            if config.jwt_subjects:
                subjects, stack.env_vars_file = jwt_subjects(
                    stack.env, config.jwt_subjects, rng, seed=config.seed, work=work,
                    valid_s=config.duration_s,
                )  # fmt: skip
                keys += subjects
            warm_plan = KeyPlan("warmup", rate=1000, window_s=60, budget=1000)
            warm = LoadKey(
                *create_key(stack.env, owner=f"load-{config.seed}-warmup", plan=warm_plan),
                warm_plan,
            )
            stack.start_apis()
            # One request per instance first, so cold starts do not count in the timed run.
            warmup, report.failed_inits = warm_up(warm, stack.api_ports, config.model)
            samples, elapsed = drive(keys, stack.api_ports, config)
            samples = warmup + samples
            keys = [warm, *keys]
            stack.stop_apis()
            audit = read_audit(stack.api_logs)
            items = read_items(stack.env, [k.pk for k in keys])
        finally:
            stack.stop()
        report.duration_s = round(elapsed, 2)
        check_run(keys, samples, audit, items, report)
        report.warmup_requests = len(warmup)
        samples = samples[len(warmup) :]
        latencies = [(s.received - s.sent) * 1000 for s in samples if not s.transport_error]
        report.requests_per_second = round(len(samples) / elapsed, 1) if elapsed else 0.0
        report.latency_p50_ms = round(_percentile(latencies, 0.5), 1)
        report.latency_p99_ms = round(_percentile(latencies, 0.99), 1)
    return report


@contextlib.contextmanager
def _work_dir(path: str | None) -> Iterator[Path]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="mlmoat-load-") as tmp:
        yield Path(tmp)


def format_summary(report: Report) -> str:
    """The human summary printed at the end of a run."""
    lines = [
        f"load: {report.requests} requests, {report.instances} instances, "
        f"{report.clients} clients, {report.keys} keys + {report.jwt_subjects} JWT subjects, "
        f"{report.duration_s:.1f} s "
        f"({report.requests_per_second} req/s, p50 {report.latency_p50_ms} ms, "
        f"p99 {report.latency_p99_ms} ms)",
        f"  statuses: {report.statuses}; routes: {report.routes}",
        f"  allowed: {report.allowed_requests} requests, {report.allowed_rows} rows; "
        f"refused: {report.refused}",
        f"  audit records: {report.audit_records} for {report.requests} requests "
        f"({report.warmup_requests} of them warm-up, after {report.failed_inits} failed cold "
        f"starts); extraction flags raised by the monitor: "
        f"{report.extraction_flags}",
        f"  budgets: {report.budgets_checked} checked, {report.budgets_exhausted} exhausted; "
        f"rate windows: {report.windows_checked} checked, {report.windows_saturated} saturated",
        "  exactness: " + ("every check held" if report.ok else "FAILED"),
    ]
    lines += [f"  - {failure}" for failure in report.failures[:50]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: run once, print the summary, exit 0 only if every check held."""
    parser = argparse.ArgumentParser(
        prog="python -m mlmoat.loadtest", description=__doc__.split("\n")[0]
    )
    defaults = LoadConfig()
    parser.add_argument("--instances", type=int, default=defaults.instances)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--keys", type=int, default=defaults.keys)
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds")
    parser.add_argument("--max-requests", type=int, default=defaults.max_requests)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument(
        "--jwt-subjects", type=int, default=defaults.jwt_subjects, help="JWT subjects besides keys"
    )
    parser.add_argument("--work-dir", default=None, help="keep logs here (default: a temp dir)")
    parser.add_argument("--report", default=None, help="also write the report as JSON here")
    parser.add_argument(
        "--serve-dynamodb", type=int, metavar="PORT", help="only serve a serial moto server"
    )
    args = parser.parse_args(argv)
    if args.serve_dynamodb is not None:
        return serve_until_signalled(EmbeddedDynamoDB(host=_HOST, port=args.serve_dynamodb))
    if not 0 <= args.jwt_subjects <= 1000:
        parser.error("--jwt-subjects must be between 0 and 1000")
    for name, high in (
        ("instances", 16),
        ("clients", 256),
        ("keys", 10000),
        ("max_requests", 10**6),
    ):
        if not 1 <= getattr(args, name) <= high:
            parser.error(f"--{name.replace('_', '-')} must be between 1 and {high}")
    if not 1 <= args.duration <= 3600:
        parser.error("--duration must be between 1 and 3600 seconds")
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so the stack's processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    config = LoadConfig(
        instances=args.instances,
        clients=args.clients,
        keys=args.keys,
        duration_s=args.duration,
        max_requests=args.max_requests,
        seed=args.seed,
        model=args.model,
        jwt_subjects=args.jwt_subjects,
        work_dir=args.work_dir,
    )
    report = run(config)
    print(format_summary(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
