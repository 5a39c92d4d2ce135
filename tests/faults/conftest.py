"""Fixtures of the fault suite: one restartable moto server and fault proxy per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faultproxy import FaultProxy
from faultstack import FaultStack

from mlmoat.local.processes import stop_process
from mlmoat.local.stack import LocalStack, build


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """One restartable moto server + proxy for the fault suite; start-api instances on demand."""
    work = tmp_path_factory.mktemp("faults")
    local = LocalStack(work_dir=work, instances=0)
    proxy: FaultProxy | None = None
    stack: FaultStack | None = None
    try:
        local.start_dynamodb()
        proxy = FaultProxy(upstream_port=local.dynamodb_port)
        stack = FaultStack(work=work, local=local, proxy=proxy)
        build()
        yield stack
    finally:
        for api in stack.apis if stack else []:
            stop_process(api.process)
        if proxy is not None:
            proxy.close()
        local.stop()
