"""The one local stack of the tooling and the tests: DynamoDB, tables, keys, the functions.

One local DynamoDB (``mlmoat.local.server.EmbeddedDynamoDB``, the moto server over HTTP on
loopback, DynamoDB calls applied one at a time as DynamoDB applies them to an item; SQS and SSM
served beside it), bootstrapped from template.yaml (``mlmoat local bootstrap``: tables and
queues), the functions' environment as the template gives it, keys created through
``security.admin``, and the functions served either by ``mlmoat local start-api`` (this
module's ``LocalStack.start_apis``: the load test) or in process from the Lambda build (the
red team's ``mlmoat.redteam.stack``, the benchmark's ``mlmoat.bench.stack``: both start their
DynamoDB here). The fault suite's ``FaultStack`` adds a fault proxy in front of it.

* ``LocalStack``: the DynamoDB server in its own process (restartable: SIGUSR1 stops its
  listener, SIGUSR2 starts it again, state intact) and any number of start-api instances.
* ``start_function``: the in-process variant, one warm instance of a function from the Lambda
  build whose handler the caller invokes (``BuiltFunction.handler``; the red team's stack).
* helpers every caller shares: ``local_env``, ``aws_client``, ``dynamodb_client``,
  ``table_name``, ``key_admin``, ``create_key``, ``read_audit``, ``read_items``, ``send``,
  ``mlmoat_command``.

``python -m mlmoat.local.stack --serve-dynamodb PORT`` serves one such DynamoDB until signalled.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import boto3

from mlmoat.local.awsenv import DUMMY_CREDENTIALS
from mlmoat.local.processes import HOST, free_port, stop_process, wait_closed, wait_for_port
from mlmoat.local.server import EmbeddedDynamoDB, serve_until_signalled

READY_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 30.0
REPO = Path(__file__).resolve().parents[3]
REGION = "us-east-1"
FUNCTION = "PredictFunction"
SECURITY_TABLE = "SecurityTable"


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


def local_env(dynamodb_port: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every local command gets: the local endpoint and dummy credentials."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "SECURITY_", "POWERTOOLS_"))
    }
    env.update(
        {
            "AWS_ENDPOINT_URL_DYNAMODB": f"http://{HOST}:{dynamodb_port}",
            "AWS_DEFAULT_REGION": REGION,
            **DUMMY_CREDENTIALS,
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
    return [sys.executable, "-m", "mlmoat.local.stack", "--serve-dynamodb", str(port)]


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

    @property
    def endpoint(self) -> str:
        """The local DynamoDB's (and SQS's, SSM's) endpoint."""
        return f"http://{HOST}:{self.dynamodb_port}"

    @property
    def dynamodb_process(self) -> subprocess.Popen[bytes]:
        """The DynamoDB server's process (``start_dynamodb`` started it)."""
        return self._processes[0]

    def stop_dynamodb_listener(self) -> None:
        """Stop the DynamoDB server's listener: connections refused, state kept."""
        self.dynamodb_process.send_signal(signal.SIGUSR1)
        wait_closed(self.dynamodb_port)

    def start_dynamodb_listener(self) -> None:
        """Start the DynamoDB server's listener again on the same port."""
        self.dynamodb_process.send_signal(signal.SIGUSR2)
        wait_for_port(self.dynamodb_port, process=self.dynamodb_process, timeout_s=READY_TIMEOUT_S)

    def start_dynamodb(self) -> None:
        """Start one serialised moto server and create the template's tables with bootstrap.

        Raises:
            RuntimeError: the server did not come up or the bootstrap failed.
        """
        self.dynamodb_port = free_port()
        log = self.work_dir / "dynamodb.log"
        self._spawn(dynamodb_command(self.dynamodb_port), log)
        wait_for_port(self.dynamodb_port, process=self._processes[-1], timeout_s=READY_TIMEOUT_S)
        subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
            mlmoat_command("local", "bootstrap"),
            env=self.env,
            check=True,
            capture_output=True,
            timeout=READY_TIMEOUT_S,
        )

    def start_apis(self) -> None:
        """Build once, start the instances, wait until each accepts connections.

        Raises:
            RuntimeError: an instance exited or did not come up in time.
        """
        build()
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
            wait_for_port(port, process=process, timeout_s=READY_TIMEOUT_S)

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
            command, env=self.env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO
        )
        handle.close()
        self._processes.append(process)
        self._logs.append(log)


class BuiltFunction:
    """One function of the Lambda build behind its handler's signature: one warm instance
    under CPython 3.13 (``mlmoat.local.workers.Worker``), as ``mlmoat local invoke`` runs it (the
    stack's in-process variant: the caller invokes the handler, no HTTP in between)."""

    def __init__(self, worker: Any) -> None:
        self._worker = worker

    def handler(self, event: Mapping[str, Any], context: Any) -> Any:
        """Invoke the function; its error (an exception in the handler) is raised here."""
        invocation = self._worker.invoke(event, request_id=context.aws_request_id)
        if invocation.error is not None:
            error = invocation.error
            raise RuntimeError(f"{error.get('errorType')}: {error.get('errorMessage')}")
        return invocation.response

    def stop(self) -> None:
        """Stop the instance."""
        self._worker.stop()


def start_function(
    template: Any, build_dir: Path, logical_id: str, *, env: Mapping[str, str], log: IO[str]
) -> BuiltFunction:
    """Start one warm instance of ``logical_id`` from the Lambda build, with the template's
    environment and ``env`` over it (the host's endpoints and credentials from ``os.environ``);
    its output goes to ``log``.

    Raises:
        FunctionStartError: the instance did not start (its cold start failed).
    """
    from mlmoat.local.workers import FunctionLayout, Worker

    layout = FunctionLayout(
        template,
        build_dir,
        logical_id,
        env_overrides={logical_id: dict(env)},
        host_environ=dict(os.environ),
    )
    return BuiltFunction(Worker(layout, log=log))


def table_name() -> str:
    """The local name of the template's security table (as every local command names it)."""
    from mlmoat.local.template import Template, find_template

    return Template(find_template(REPO)).physical_name(SECURITY_TABLE)


def aws_client(service: str, env: Mapping[str, str], *, endpoint: str | None = None) -> Any:
    """A boto3 client of ``service`` for the local endpoint in ``env`` (the service's own
    ``AWS_ENDPOINT_URL_<SERVICE>``, else DynamoDB's) or at ``endpoint``."""
    url = endpoint or env.get(f"AWS_ENDPOINT_URL_{service.upper()}")
    make: Any = boto3.client  # its overloads know service names only as literals
    return make(
        service,
        endpoint_url=url or env["AWS_ENDPOINT_URL_DYNAMODB"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def dynamodb_client(env: Mapping[str, str]) -> Any:
    """A boto3 DynamoDB client for the local endpoint in ``env``."""
    return aws_client("dynamodb", env)


def key_admin(env: Mapping[str, str], *, settings: Any = None) -> Any:
    """``security.admin.KeyAdmin`` on the local table, its caps lifted (``uncapped``: tooling
    that measures the system, never the admin API). ``settings``: the function's (default: the
    table's name and the repository's models)."""
    from security.admin import KeyAdmin, uncapped
    from security.settings import Settings
    from security.store import PrincipalStore

    if settings is None:
        settings = Settings(table_name=table_name(), model_dir=str(REPO))
    store = PrincipalStore(client=dynamodb_client(env), table_name=settings.table_name)
    return KeyAdmin(store=store, settings=uncapped(settings))


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
    created = key_admin(env).create(
        owner=owner,
        scopes=scopes,
        rate_limit=plan.rate_text,
        budget=plan.budget,
        output_policy=output,
    )
    return str(created["key_id"]), str(created["api_key"])


def build() -> None:
    """Build (or confirm fresh) the Lambda build once, before instances start with --no-build.

    Raises:
        BuildError: the build failed.
    """
    from mlmoat.local.build import ensure_build

    ensure_build(REPO)


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


def send(
    port: int, *, path: str, body: bytes, headers: Mapping[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """POST one request on a fresh loopback connection; return status, headers, body."""
    connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("POST", path, body=body, headers={**headers, "Connection": "close"})
        response = connection.getresponse()
        payload = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    """``--serve-dynamodb PORT``: serve one serialised moto server until signalled."""
    parser = argparse.ArgumentParser(prog="python -m mlmoat.local.stack")
    parser.add_argument("--serve-dynamodb", type=int, metavar="PORT", required=True)
    args = parser.parse_args(argv)
    return serve_until_signalled(EmbeddedDynamoDB(host=HOST, port=args.serve_dynamodb))


if __name__ == "__main__":
    raise SystemExit(main())
