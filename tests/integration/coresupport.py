"""Helpers shared by the security-core integration tests, importable by spawned worker processes."""

from __future__ import annotations

import socket
import threading
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

from security.settings import Settings

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
