"""The suite-wide log capture (``log_sink`` in tests/conftest.py) fails a session with a leak.

Each test runs a small pytest session in a scratch directory with this suite's own
``conftest.py`` and ``logcapture.py`` (copied unchanged) and a test that logs something, and
looks at how that inner session ended. The planted tests sit in subdirectories with no conftest
of their own, as the suites do: the capture covers every directory below ``tests/``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

_PLANTED_UNREGISTERED = """
import logging

from security.keys import generate_key


def test_a_well_formed_key_nobody_registered_is_logged():
    parsed, api_key = generate_key()
    print("UNREGISTERED", parsed.key_id)
    logging.getLogger("some.library").warning("request from caller %s", api_key)
"""

_PLANTED_SECRET_ONLY = """
import logging

from logcapture import remember_key
from security.keys import generate_key


def test_the_secret_of_a_created_key_is_logged_alone():
    parsed, api_key = generate_key()
    remember_key(api_key)
    print("REGISTERED", parsed.key_id)
    logging.getLogger("some.library").info("token=%s", parsed.secret)
"""

_CLEAN = """
import logging

from logcapture import remember_key
from security.keys import generate_key


def test_only_the_public_key_id_is_logged():
    parsed, api_key = generate_key()
    remember_key(api_key)
    logging.getLogger("some.library").info("key %s used", parsed.key_id)
"""


def _inner_session(tmp_path: Path, tests: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for name in ("conftest.py", "logcapture.py"):
        shutil.copy(TESTS / name, tmp_path / name)
    for name, source in tests.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    return subprocess.run(  # noqa: S603 - this interpreter running pytest on our scratch dir
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        # Third-party plugins (hypothesis takes seconds to import) play no part here.
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _key_id(tag: str, output: str) -> str:
    (key_id,) = re.findall(r"\b" + tag + r" ([0-9A-Za-z]{12})", output)
    return key_id


def test_a_planted_key_or_secret_in_any_log_line_fails_the_session(tmp_path: Path) -> None:
    # given a session whose tests, in two suites' directories without a conftest of their own,
    # log a well-formed key nobody registered, and a created key's secret on its own
    result = _inner_session(
        tmp_path,
        {
            "unit/test_planted_key.py": _PLANTED_UNREGISTERED,
            "faults/test_planted_secret.py": _PLANTED_SECRET_ONLY,
        },
    )
    output = result.stdout + result.stderr
    unregistered, registered = _key_id("UNREGISTERED", output), _key_id("REGISTERED", output)
    # then both tests pass, but the session fails at the end, naming both leaks by key id only
    assert result.returncode == 1, output
    assert "2 passed, 1 error" in output
    assert "key material reached the logs" in output
    assert f"well-formed key {unregistered}" in output
    assert f"secret of key {registered}" in output


def test_a_session_that_logs_only_key_ids_passes(tmp_path: Path) -> None:
    # given a session that creates a key and logs only its public id
    result = _inner_session(tmp_path, {"test_clean.py": _CLEAN})
    # then it passes: the capture does not fail sessions for lines without key material
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
