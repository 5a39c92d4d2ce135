"""The interpreter a test's subprocess runs: the one running the tests.

Under `make test-py313` the tests run in the unpacked CPython 3.13 (``mlmoat.python313``), whose
``sys.executable`` is the bare binary: only its wrapper starts it with its own loader and
libraries. The Makefile names the wrapper in ``MLMOAT_TEST_PYTHON``.
"""

from __future__ import annotations

import os
import sys

PYTHON = os.environ.get("MLMOAT_TEST_PYTHON") or sys.executable

# What a child needs to import what this run imports (the 3.13 run's path is PYTHONPATH).
PATH_ENV = {
    name: os.environ[name]
    for name in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    if name in os.environ
}
