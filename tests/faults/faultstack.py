"""The fault-injection stack: a restartable moto server, a fault proxy, start-api instances.

The function under test is the real ``PredictFunction`` served by ``mlmoat local start-api`` in
its own process, exactly as in ``make local``; only its DynamoDB endpoint is the fault proxy
(``tests/faults/faultproxy.py``) in front of a moto server that can stop and restart with its
state intact (``mlmoat.local.server.EmbeddedDynamoDB``). SQS and SSM go straight to the moto
server. Keys are created and counters read directly on the moto server, never through the proxy,
so the evidence does not depend on the fault being injected.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faultproxy import FaultProxy

from mlmoat.local.processes import free_port, wait_for_port
from mlmoat.local.stack import (
    KeyPlan,
    LocalStack,
    aws_client,
    create_key,
    local_env,
    mlmoat_command,
    read_audit,
    read_key_items,
    send,
)

REPO = Path(__file__).resolve().parents[2]
READY_S = 120.0


@dataclass
class Response:
    """One HTTP response from the function."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def request_id(self) -> str:
        """The ``X-Request-Id`` header (every response must carry it)."""
        return self.headers["x-request-id"]


@dataclass
class Api:
    """One ``mlmoat local start-api`` process and its log (audit records)."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def post(
        self,
        body: Mapping[str, Any] | bytes,
        *,
        api_key: str | None = None,
        token: str | None = None,
        path: str = "/predict",
    ) -> Response:
        """POST a JSON body with an API key or a bearer token."""
        headers = {"Content-Type": "application/json"}
        if api_key is not None:
            headers["X-API-Key"] = api_key
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, response_headers, payload = send(self.port, path=path, body=raw, headers=headers)
        return Response(status, response_headers, payload)

    def audit(self) -> list[dict[str, Any]]:
        """Every audit record this instance has written so far."""
        return read_audit([self.log])

    def audit_for(self, request_id: str, *, wait_s: float = 5.0) -> list[dict[str, Any]]:
        """The audit records carrying ``request_id`` (waits briefly for the log to flush)."""
        deadline = time.monotonic() + wait_s
        while True:
            records = [r for r in self.audit() if r.get("request_id") == request_id]
            if records or time.monotonic() > deadline:
                return records
            time.sleep(0.1)


@dataclass
class FaultStack:
    """The local stack (``mlmoat.local.stack.LocalStack``: its moto server, bootstrapped), the
    fault proxy in front of it, and helpers to read the truth behind them."""

    work: Path
    local: LocalStack
    proxy: FaultProxy
    apis: list[Api] = field(default_factory=list)

    @property
    def moto_port(self) -> int:
        """The moto server's port (behind the proxy)."""
        return self.local.dynamodb_port

    @property
    def moto(self) -> subprocess.Popen[bytes]:
        """The moto server's process."""
        return self.local.dynamodb_process

    @property
    def direct_env(self) -> dict[str, str]:
        """Environment for tools talking to the moto server directly (keys, bootstrap)."""
        return local_env(self.moto_port, self._side_endpoints())

    def function_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for the function: DynamoDB through the proxy, SQS/SSM direct."""
        env = local_env(self.proxy.port, self._side_endpoints())
        env.update(extra or {})
        return env

    def _side_endpoints(self) -> dict[str, str]:
        direct = f"http://127.0.0.1:{self.moto_port}"
        return {"AWS_ENDPOINT_URL_SQS": direct, "AWS_ENDPOINT_URL_SSM": direct}

    def client(self, service: str) -> Any:
        """A boto3 client straight to the moto server."""
        return aws_client(service, self.direct_env, endpoint=self.local.endpoint)

    def create_key(
        self, owner: str, *, rate: str = "1000/minute", budget: int = 1000
    ) -> tuple[str, str]:
        """A fresh key, created on the moto server directly; returns (key_id, api_key)."""
        count, _, unit = rate.partition("/")
        window = {"second": 1, "minute": 60, "hour": 3600}[unit]
        plan = KeyPlan("fault", rate=int(count), window_s=window, budget=budget)
        return create_key(self.direct_env, owner=owner, plan=plan)

    def key_item(self, key_id: str) -> dict[str, Any]:
        """The key's item read from the moto server (the truth behind the proxy)."""
        items = read_key_items(self.direct_env, [key_id])
        assert key_id in items, f"no item for key {key_id}"
        return items[key_id]

    def rows_used(self, key_id: str) -> int:
        """The key's ``rows_used`` counter (0 if never charged)."""
        return int(self.key_item(key_id).get("rows_used", 0))

    def start_api(
        self,
        name: str,
        extra_env: Mapping[str, str] | None = None,
        function_env: Mapping[str, str] | None = None,
    ) -> Api:
        """Start one ``mlmoat local start-api`` instance against the proxy.

        ``extra_env`` goes into start-api's own environment (endpoints); ``function_env`` is
        written to an ``--env-vars`` file for ``PredictFunction`` (template variables).
        """
        port = free_port()
        args: list[str] = []
        if function_env:
            env_file = self.work / f"{name}.env.json"
            env_file.write_text(json.dumps({"PredictFunction": dict(function_env)}))
            args = ["--env-vars", str(env_file)]
        log = self.work / f"{name}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(  # noqa: S603
                mlmoat_command("local", "start-api", "--port", str(port), "--no-build", *args),
                env=self.function_env(extra_env),
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        api = Api(port, process, log)
        self.apis.append(api)
        wait_for_port(port, process=process, timeout_s=READY_S)
        return api

    def stop_moto_listener(self) -> None:
        """Stop the moto server's listener (connections refused; state kept)."""
        self.local.stop_dynamodb_listener()

    def start_moto_listener(self) -> None:
        """Start the moto server's listener again on the same port."""
        self.local.start_dynamodb_listener()
