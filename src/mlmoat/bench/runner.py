"""Start one function process (``child.py``), time its cold start and collect its measurements.

The clock starts just before the process is spawned and stops when the child reports its first
response, so the cold start covers the whole process: interpreter start-up, imports, init-time
work (model load, clients) and the first invocation end to end. Max RSS comes from ``wait4`` on
the child, as Lambda reports Max Memory Used for the whole execution environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlmoat import python313

CHILD = Path(__file__).with_name("child.py")


def lambda_python() -> Path:
    """The interpreter functions run under: CPython 3.13 (``make python313``).

    Raises:
        FunctionRunError: it is not installed.
    """
    python = python313.interpreter()
    if not python.is_file():
        raise FunctionRunError(f"{python} is missing: run `make python313`")
    return python


# BLAS tuning is passed through unchanged so that both stacks see the same machine.
_PASSTHROUGH = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


class FunctionRunError(RuntimeError):
    """The function process failed, timed out or answered the first request with an error."""


@dataclass(frozen=True)
class FunctionSpec:
    """How to start one stack as a Lambda function: its sys.path, handler and environment."""

    label: str
    paths: tuple[str, ...]
    handler: str
    env: dict[str, str] = field(default_factory=dict)
    hooks: bool = False
    function_name: str = "bench"
    memory_mb: int = 1024
    workdir: str | None = None


@dataclass(frozen=True)
class Phase:
    """``count`` warm invocations of one event after the cold one."""

    name: str
    event: dict[str, Any]
    count: int
    vary_source: bool = False


@dataclass
class RunResult:
    """One execution environment's measurements."""

    cold_s: float
    first: dict[str, Any]
    phases: dict[str, Any]
    maxrss_kb: int
    stdout_path: Path


def lambda_env(spec: FunctionSpec) -> dict[str, str]:
    """The child's environment: the runtime's own variables plus the function's."""
    env = {name: os.environ[name] for name in _PASSTHROUGH if name in os.environ}
    env.update(
        {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "AWS_LAMBDA_FUNCTION_NAME": spec.function_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "LAMBDA_TASK_ROOT": spec.paths[0] if spec.paths else "",
        }
    )
    env.update(spec.env)
    return env


def run_function(
    spec: FunctionSpec,
    first_event: dict[str, Any],
    phases: list[Phase],
    *,
    log_dir: Path,
    profile: Path | None = None,
    timers: tuple[str, ...] = (),
    timeout_s: float = 300.0,
) -> RunResult:
    """Run one cold start and the warm ``phases`` in a fresh process.

    The child is the Lambda runtime's Python (CPython 3.13, ``make python313``) with ``-B``: it
    reads the byte-code the trees on ``spec.paths`` ship and writes none, so a tree without
    ``.pyc`` files is compiled on every import, as on Lambda (read-only code) for a package that
    ships none.

    Raises:
        FunctionRunError: the process exited early, timed out, or the first response was not 200.
    """
    config = {
        "paths": list(spec.paths),
        "handler": spec.handler,
        "hooks": spec.hooks,
        "function_name": spec.function_name,
        "memory_mb": spec.memory_mb,
        "first_event": first_event,
        "profile": str(profile) if profile is not None else None,
        "timers": list(timers),
        "phases": [
            {"name": p.name, "event": p.event, "count": p.count, "vary_source": p.vary_source}
            for p in phases
        ],
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    fd, config_path = tempfile.mkstemp(prefix="bench-", suffix=".json", dir=log_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        json.dump(config, stream)
    stdout_path = log_dir / f"{spec.label}-{os.path.basename(config_path)[6:-5]}.stdout"
    stderr_path = stdout_path.with_suffix(".stderr")
    read_fd, write_fd = os.pipe()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        start = time.perf_counter()
        # Our own argv: this interpreter running child.py with a config file we just wrote.
        proc = subprocess.Popen(  # noqa: S603
            [str(lambda_python()), "-I", "-S", "-B", str(CHILD), config_path, str(write_fd)],
            pass_fds=(write_fd,),
            env=lambda_env(spec),
            cwd=spec.workdir or spec.paths[0],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        os.close(write_fd)
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            with os.fdopen(read_fd, "r", encoding="utf-8") as reader:
                first_line = reader.readline()
                cold_s = time.perf_counter() - start
                last_line = reader.readline()
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            timer.cancel()
    os.unlink(config_path)
    if not first_line or not last_line or proc.returncode != 0:
        tail = stderr_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise FunctionRunError(f"{spec.label}: function process exited {proc.returncode}:\n{tail}")
    first = json.loads(first_line)["first"]
    if first["status"] != 200:
        raise FunctionRunError(
            f"{spec.label}: first response was {first['status']}: {str(first.get('body'))[:500]}"
        )
    result = json.loads(last_line)["result"]
    return RunResult(
        cold_s=cold_s,
        first=first,
        phases=result["phases"],
        maxrss_kb=int(rusage.ru_maxrss),
        stdout_path=stdout_path,
    )
