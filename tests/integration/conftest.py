"""Fixtures for the security-core integration tests: real DynamoDB servers over HTTP.

- ``core_endpoint`` (session): the URL of the session's ``moto_server`` (tests/conftest.py), an
  ``mlmoat.local.server.EmbeddedDynamoDB`` that applies DynamoDB calls one at a time as DynamoDB
  applies the writes to an item (moto's own threaded server loses concurrent ``ADD``s, see that
  module's docstring), so the exactness tests are meaningful.
- ``core_table`` (function): a fresh table shaped like ``template.yaml``'s ``SecurityTable``
  (tests/conftest.py's ``create_security_table``; unique name per test, so tests never share
  counters).
- ``make_client(endpoint)``: a boto3 DynamoDB client configured as the handlers configure it.
Dummy AWS credentials come from tests/conftest.py's autouse ``aws_dummy_credentials``.

- ``dynalite_endpoint`` (session): dynalite from npm (``npx dynalite``), skipped with a reason when
  node or the package is missing.
- ``local_dynamodb_cli`` (function): ``mlmoat local dynamodb`` in its own process on a free port
  (its bootstrap creates ``mlmoat-local-SecurityTable``); yields its URL.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from coresupport import REPO, make_client

from mlmoat.local.processes import free_port, stop_process, wait_for_port
from mlmoat.local.stack import mlmoat_command


@pytest.fixture(scope="session")
def core_endpoint(moto_server: Any) -> str:
    return str(moto_server.endpoint)


@pytest.fixture()
def core_table(core_endpoint: str, create_security_table: Callable[..., str]) -> str:
    return create_security_table(make_client(core_endpoint), f"sec-{uuid.uuid4().hex[:12]}")


def _serve(command: list[str], port: int, *, ready_s: float) -> Iterator[str]:
    """Run a DynamoDB server process that listens on ``port``; yield its URL; stop it."""
    process = subprocess.Popen(  # noqa: S603 - fixed commands of our own choosing
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO
    )
    try:
        wait_for_port(port, process=process, timeout_s=ready_s)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def dynalite_endpoint() -> Iterator[str]:
    npx = shutil.which("npx")
    local_bin = REPO / "node_modules" / ".bin" / "dynalite"
    if npx is None or not local_bin.exists():
        pytest.skip("dynalite not installed: run `npm ci` (package-lock.json pins it)")
    port = free_port()
    yield from _serve(
        [str(local_bin), "--port", str(port), "--host", "127.0.0.1", "--createTableMs", "0"],
        port,
        ready_s=15,
    )


@pytest.fixture()
def local_dynamodb_cli() -> Iterator[str]:
    """``mlmoat local dynamodb`` in its own process, as a developer runs it; yields its URL."""
    port = free_port()
    yield from _serve(mlmoat_command("local", "dynamodb", "--port", str(port)), port, ready_s=60)
