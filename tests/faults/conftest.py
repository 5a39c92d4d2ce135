"""Fixtures of the fault suite: one restartable moto server and fault proxy per session."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from faultproxy import FaultProxy
from faultstack import READY_S, FaultStack

from mlmoat.local.processes import free_port, stop_process, wait_for_port
from mlmoat.local.stack import build, dynamodb_command, mlmoat_command


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """One restartable moto server + proxy for the fault suite; start-api instances on demand."""
    work = tmp_path_factory.mktemp("faults")
    moto_port = free_port()
    with (work / "moto.log").open("wb") as handle:
        moto = subprocess.Popen(  # noqa: S603
            dynamodb_command(moto_port),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    proxy = FaultProxy(upstream_port=moto_port)
    stack = FaultStack(work=work, moto_port=moto_port, moto=moto, proxy=proxy)
    try:
        wait_for_port(moto_port, process=moto, timeout_s=READY_S)
        subprocess.run(  # noqa: S603
            mlmoat_command("local", "bootstrap"),
            env=stack.direct_env,
            check=True,
            capture_output=True,
            timeout=READY_S,
        )
        build()
        yield stack
    finally:
        for api in stack.apis:
            stop_process(api.process)
        proxy.close()
        stop_process(moto)
