"""Which code the handler suite drives: the sources (3.11 run) or the Lambda build (3.13 run).

`make test` runs this suite twice: under the tooling's Python against ``src/``, then (`make
test-py313`) under CPython 3.13 against the Lambda build itself, its function dir, layers and
cp313 byte-code, with the runtime's boto3, as Lambda runs it. ``MLMOAT_TEST_BUILD`` names the
build for the second run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import boto3
import mangum
import pytest

import security

REPO = Path(__file__).resolve().parents[2]
BUILD = os.environ.get("MLMOAT_TEST_BUILD")


def _origin(module: object) -> Path:
    return Path(str(getattr(module, "__file__", ""))).resolve()


@pytest.mark.skipif(BUILD is not None, reason="the 3.13 run drives the build")
def test_the_source_run_drives_the_sources(predict_module: Any) -> None:
    assert _origin(security).is_relative_to(REPO / "src" / "security")
    assert _origin(predict_module).is_relative_to(REPO / "src" / "handlers")


@pytest.mark.skipif(BUILD is None, reason="the 3.11 run drives the sources")
def test_the_build_run_drives_the_lambda_build_under_python_3_13(predict_module: Any) -> None:
    assert BUILD is not None
    build = Path(BUILD).resolve()
    assert sys.version_info[:2] == (3, 13)
    assert _origin(predict_module).is_relative_to(build / "PredictFunction")
    assert _origin(security).is_relative_to(build / "SecurityLayer" / "python")
    assert _origin(mangum).is_relative_to(build / "DepsLayer" / "python")
    assert "lambda-runtime" in _origin(boto3).parts[-4:-1] or ".cache" in _origin(boto3).parts
    # and every module it imports from the build has the byte-code the build ships
    modules: list[Any] = [predict_module, security, mangum]
    for module in modules:
        cached = module.__spec__.cached
        assert cached is not None and Path(cached).is_file(), module
