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
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from coresupport import REPO, make_client

from mlmoat.local.server import free_port, wait_for_port


@pytest.fixture(scope="session")
def core_endpoint(moto_server: Any) -> str:
    return str(moto_server.endpoint)


@pytest.fixture()
def core_table(core_endpoint: str, create_security_table: Callable[..., str]) -> str:
    return create_security_table(make_client(core_endpoint), f"sec-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def dynalite_endpoint() -> Iterator[str]:
    npx = shutil.which("npx")
    local_bin = REPO / "node_modules" / ".bin" / "dynalite"
    if npx is None or not local_bin.exists():
        pytest.skip("dynalite not installed: run `npm ci` (package-lock.json pins it)")
    port = free_port()
    process = subprocess.Popen(  # noqa: S603
        [str(local_bin), "--port", str(port), "--host", "127.0.0.1", "--createTableMs", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=15)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
