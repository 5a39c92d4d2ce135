"""Helpers shared by the security-core integration tests, importable by spawned worker processes."""

from __future__ import annotations

import socket
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.config import Config
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from security.auth import Authenticator
from security.errors import RateLimitedError, SecurityError
from security.limits import Gatekeeper
from security.settings import Settings
from security.store import PrincipalStore

REPO = Path(__file__).resolve().parents[2]


class _CfnLoader(yaml.SafeLoader):
    """A YAML loader that accepts CloudFormation short-form tags (!Ref, !GetAtt, ...)."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)  # type: ignore[arg-type]


_CfnLoader.add_multi_constructor("!", _any_tag)


def table_definition() -> dict[str, Any]:
    """KeySchema and AttributeDefinitions of SecurityTable, read from template.yaml."""
    template = yaml.load((REPO / "template.yaml").read_text(), Loader=_CfnLoader)  # noqa: S506
    props = template["Resources"]["SecurityTable"]["Properties"]
    return {"KeySchema": props["KeySchema"], "AttributeDefinitions": props["AttributeDefinitions"]}


def create_table(client: Any, name: str) -> str:
    """Create the security table under ``name`` and wait for it."""
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST", **table_definition())
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.1})
    return name


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SerialMotoServer:
    """moto server over HTTP on loopback, handling one request at a time.

    moto's own ``ThreadedMotoServer`` runs requests on concurrent threads and its DynamoDB backend
    has no lock: measured here, 3 processes x 8 threads against a budget of 240 rows got 242-263
    rows counted, with lost ADDs. DynamoDB serialises the writes to one item; this server gets the
    same guarantee by serialising whole requests (connections are still accepted concurrently).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        app = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def serial_app(environ: Any, start_response: Any) -> list[bytes]:
            with lock:
                return list(app(environ, start_response))

        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", port, serial_app, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> SerialMotoServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (connections are then refused)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def make_client(endpoint: str, *, max_attempts: int = 3, read_timeout: float = 5.0) -> Any:
    """A DynamoDB client for ``endpoint`` with standard retries and short timeouts."""
    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=1,
            read_timeout=read_timeout,
            max_pool_connections=64,
        ),
    )


def settings_for(table: str, **overrides: Any) -> Settings:
    """Settings for tests (model dir unused here)."""
    overrides.setdefault("model_dir", "/nonexistent")
    return Settings(table_name=table, **overrides)


def hammer(
    endpoint: str,
    table: str,
    api_key: str,
    *,
    threads: int,
    rows: int,
    fixed_now: float,
    max_requests: int,
) -> tuple[int, dict[str, int]]:
    """One 'Lambda instance': its own client and Gatekeeper, ``threads`` threads admitting
    ``rows`` rows per request until refused (or ``max_requests`` each). Returns rows allowed
    and refusals by reason."""
    settings = settings_for(table)
    store = PrincipalStore(client=make_client(endpoint), table_name=table)
    gatekeeper = Gatekeeper(store=store, settings=settings, clock=lambda: fixed_now)
    credentials = Authenticator(settings=settings, token_verifier=None).read_credentials(
        {"X-API-Key": api_key}
    )
    allowed = Counter[str]()
    refused = Counter[str]()
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(max_requests):
            try:
                admission = gatekeeper.admit(
                    credentials,
                    model="iris",
                    rows=rows,
                    request_id=str(uuid.uuid4()),
                    source_ip="127.0.0.1",
                )
            except RateLimitedError as exc:
                with lock:
                    refused[exc.reason] += 1
                return
            except SecurityError as exc:
                with lock:
                    refused[exc.reason] += 1
                return
            with lock:
                allowed["rows"] += admission.rows

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return allowed["rows"], dict(refused)
