"""Fixtures for the security-core integration tests: real DynamoDB servers over HTTP.

- ``core_endpoint`` (session): a moto server on a free loopback port that serialises requests
  (see ``coresupport.SerialMotoServer`` for why), started here, stopped at the end of the session.
- ``core_table`` (function): a fresh table with the key schema read from ``template.yaml``'s
  ``SecurityTable`` (unique name per test, so tests never share counters).
- ``make_client(endpoint)``: a boto3 DynamoDB client configured as the handlers configure it.
The shared ``moto_server`` fixture (tests/conftest.py) is a plain ``ThreadedMotoServer``, whose
DynamoDB backend does not serialise concurrent writes; the exactness tests need the serialised one.
Dummy AWS credentials come from tests/conftest.py's autouse ``aws_dummy_credentials``.

- ``dynalite_endpoint`` (session): dynalite from npm (``npx dynalite``), skipped with a reason when
  node or the package is missing.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from coresupport import REPO, SerialMotoServer, create_table, free_port, make_client


@pytest.fixture(scope="session")
def core_endpoint() -> Iterator[str]:
    server = SerialMotoServer(free_port()).start()
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture()
def core_table(core_endpoint: str) -> str:
    return create_table(make_client(core_endpoint), f"sec-{uuid.uuid4().hex[:12]}")


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
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("dynalite did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
