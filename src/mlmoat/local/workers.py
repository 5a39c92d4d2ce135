"""Functions run as Lambda runs them: one subprocess per warm instance, from the Lambda build.

``Worker`` is one warm instance: a ``python3.13 -I -B -S`` subprocess (see ``lambda_runtime``) of
the CPython 3.13 that ``make python313`` installs (``mlmoat.python313``), whose path holds only
the function's code dir, its layers' ``python/`` dirs (template order) and the runtime's boto3
(``make lambda-runtime``), all with the build's cp313 byte-code; the environment is the
template's (Globals + function, resolved locally, with ``/opt/...`` values remapped into the
built layers) plus ``--env-vars`` overrides as SAM applies them. ``WorkerPool`` keeps N such
instances per function and gives each request to one idle instance at a time, as Lambda
serialises requests per execution environment.
"""

from __future__ import annotations

import json
import math
import os
import queue
import selectors
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mlmoat import python313
from mlmoat.local.awsenv import passthrough
from mlmoat.local.template import FunctionSpec, Template

_RUNTIME_SCRIPT = Path(__file__).with_name("lambda_runtime.py")


class FunctionStartError(RuntimeError):
    """The function could not be initialised (its handler failed to import)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('errorType')}: {error.get('errorMessage')}")
        self.error = error


@dataclass(frozen=True, slots=True)
class Invocation:
    """The outcome of one invocation, with the figures of Lambda's REPORT line."""

    request_id: str
    response: Any
    error: dict[str, Any] | None
    duration_ms: float
    memory_size: int
    max_memory_mb: int
    init_ms: float | None

    def report_line(self) -> str:
        """The Lambda-style ``REPORT`` line."""
        line = (
            f"REPORT RequestId: {self.request_id}\tDuration: {self.duration_ms:.2f} ms\t"
            f"Billed Duration: {max(1, math.ceil(self.duration_ms))} ms\t"
            f"Memory Size: {self.memory_size} MB\tMax Memory Used: {self.max_memory_mb} MB"
        )
        if self.init_ms is not None:
            line += f"\tInit Duration: {self.init_ms:.2f} ms"
        return line


def lambda_python() -> tuple[Path, Path]:
    """The interpreter and runtime site a python3.13 function runs with: Lambda's Python and boto3.

    Raises:
        FunctionStartError: ``make python313 lambda-runtime`` has not made them yet.
    """
    python, site = python313.interpreter(), python313.runtime_site()
    for path, target in ((python, "python313"), (site, "lambda-runtime")):
        if not path.exists():
            raise FunctionStartError(
                {
                    "errorType": "Runtime.Unavailable",
                    "errorMessage": f"{path} is missing: run `make {target}`",
                }
            )
    return python, site


def load_env_vars_file(path: Path) -> dict[str, dict[str, str]]:
    """Read a SAM ``--env-vars`` JSON file: ``{"Parameters": {...}, "<LogicalId>": {...}}``.

    Raises:
        ValueError: the file is not a JSON object of objects.
    """
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not all(isinstance(v, dict) for v in document.values()):
        raise ValueError(f"{path}: expected a JSON object of objects")
    return {
        key: {name: _text(value) for name, value in values.items()}
        for key, values in document.items()
    }


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


class FunctionLayout:
    """Where a function's code and layers are in a build dir, and its local environment."""

    def __init__(
        self,
        template: Template,
        build_dir: Path,
        function_id: str,
        *,
        env_overrides: Mapping[str, Mapping[str, str]] | None = None,
        host_environ: Mapping[str, str] | None = None,
    ) -> None:
        self.template = template
        self.build_dir = build_dir
        self.spec: FunctionSpec = template.function(function_id)
        self.code_dir = build_dir / function_id
        self.layer_dirs = [build_dir / layer_id for layer_id in self.spec.layers]
        self._overrides = env_overrides or {}
        self._host_environ = os.environ if host_environ is None else host_environ

    def handler_module_file(self) -> Path:
        """The file the handler's module would be loaded from."""
        module = self.spec.handler.rpartition(".")[0]
        return self.code_dir / (module.replace(".", "/") + ".py")

    def paths(self) -> list[str]:
        """The function's ``sys.path`` entries ahead of the standard library, in Lambda's order."""
        layer_paths = [str(layer / "python") for layer in self.layer_dirs]
        return [str(self.code_dir), *layer_paths, str(lambda_python()[1])]

    def remap(self, value: str) -> str:
        """Point an ``/opt/...`` value at the built layer that provides it."""
        if not (value == "/opt" or value.startswith("/opt/")):
            return value
        rest = value[len("/opt/") :] if value.startswith("/opt/") else ""
        for layer in reversed(self.layer_dirs):  # later layers win, as when Lambda extracts them
            candidate = layer / rest
            if candidate.exists():
                return str(candidate)
        return value

    def environment(self) -> dict[str, str]:
        """The function's process environment: Lambda's variables, the template's, the overrides."""
        spec = self.spec
        declared = dict(spec.environment)
        # As in SAM: --env-vars only override variables the template declares; "Parameters"
        # applies to every function, the function's own section wins.
        for section in ("Parameters", spec.logical_id):
            for name, value in self._overrides.get(section, {}).items():
                if name in declared:
                    declared[name] = value
        function_name = self.template.physical_name(spec.logical_id)
        environ = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "LAMBDA_TASK_ROOT": str(self.code_dir),
            "LAMBDA_RUNTIME_DIR": str(_RUNTIME_SCRIPT.parent),
            "_HANDLER": spec.handler,
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
            "AWS_LAMBDA_FUNCTION_NAME": function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_size),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"local/[$LATEST]{uuid.uuid4().hex}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            # As sam local: no X-Ray daemon here, so Powertools Tracer stays off.
            "AWS_SAM_LOCAL": "true",
            # Never read the developer's own AWS profile: only the local endpoint's dummies.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "PYTHONDONTWRITEBYTECODE": "1",
            **passthrough(self._host_environ),
        }
        environ.update({name: self.remap(value) for name, value in declared.items()})
        return environ

    def worker_config(self) -> dict[str, Any]:
        """What ``lambda_runtime`` needs to load the handler."""
        function_name = self.template.physical_name(self.spec.logical_id)
        return {
            "paths": self.paths(),
            "code_dir": str(self.code_dir),
            "handler": self.spec.handler,
            "function_name": function_name,
            "function_arn": self.template.arn(self.spec.logical_id),
            "memory_size": self.spec.memory_size,
            "log_stream_name": f"local/[$LATEST]{uuid.uuid4().hex}",
        }


class Worker:
    """One warm instance of a function: a subprocess started on first use and then reused."""

    def __init__(self, layout: FunctionLayout, *, log: IO[str] | None = None) -> None:
        """``log``: where the function's output (stdout and stderr) goes; default: ours."""
        self.layout = layout
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._init_ms: float | None = None

    @property
    def alive(self) -> bool:
        """Whether the subprocess is running."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the subprocess and wait for the handler to load (the cold start).

        Raises:
            FunctionStartError: the handler failed to load.
        """
        self._buffer = b""
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [
                str(lambda_python()[0]),
                "-I",
                # -I ignores PYTHONDONTWRITEBYTECODE: without -B the build output gets __pycache__.
                "-B",
                "-S",
                str(_RUNTIME_SCRIPT),
                json.dumps(self.layout.worker_config()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=self.layout.environment(),
            cwd=self.layout.code_dir,
        )
        ready = self._read(time.monotonic() + max(10.0, float(self.layout.spec.timeout)))
        if ready is None or not ready.get("ready"):
            self.stop()
            error = (ready or {}).get("error") or {
                "errorType": "Runtime.ExitError",
                "errorMessage": "the function's process exited or did not start in time",
            }
            raise FunctionStartError(error)
        self._init_ms = float(ready["init_ms"])

    def invoke(self, event: Any, request_id: str | None = None) -> Invocation:
        """Run one invocation (starting the instance first if it is cold).

        Raises:
            FunctionStartError: a cold start failed.
        """
        if not self.alive:
            self.start()
        assert self._process is not None and self._process.stdin is not None
        request_id = request_id or str(uuid.uuid4())
        timeout = float(self.layout.spec.timeout)
        init_ms, self._init_ms = self._init_ms, None
        started = time.perf_counter()
        message = {"event": event, "request_id": request_id, "timeout": timeout}
        try:
            self._process.stdin.write(json.dumps(message).encode() + b"\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            reply = None
        else:
            reply = self._read(time.monotonic() + timeout)
        if reply is None:
            timed_out = self.alive
            self.stop()
            elapsed = (time.perf_counter() - started) * 1000
            error = (
                {
                    "errorType": "Sandbox.Timedout",
                    "errorMessage": f"Task timed out after {timeout:.2f} seconds",
                }
                if timed_out
                else {
                    "errorType": "Runtime.ExitError",
                    "errorMessage": "the function's process exited",
                }
            )
            return Invocation(
                request_id, None, error, elapsed, self.layout.spec.memory_size, 0, init_ms
            )
        return Invocation(
            request_id=request_id,
            response=reply.get("response"),
            error=reply.get("error"),
            duration_ms=float(reply["duration_ms"]),
            memory_size=self.layout.spec.memory_size,
            max_memory_mb=int(reply["max_memory_mb"]),
            init_ms=init_ms,
        )

    def stop(self) -> None:
        """Stop the subprocess (the instance goes cold)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()

    def _read(self, deadline: float) -> dict[str, Any] | None:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    return None
                chunk = os.read(stdout.fileno(), 1 << 16)
                if not chunk:
                    return None
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply


class WorkerPool:
    """Up to ``size`` warm instances of one function; each serves one request at a time."""

    def __init__(self, layout: FunctionLayout, size: int = 1) -> None:
        self.layout = layout
        self._idle: queue.LifoQueue[Worker] = queue.LifoQueue()
        for _ in range(max(1, size)):
            self._idle.put(Worker(layout))
        self._all = list(self._idle.queue)
        self._lock = threading.Lock()

    def invoke(self, event: Any, request_id: str | None = None) -> Invocation:
        """Run one invocation on an idle instance, waiting for one when all are busy.

        Raises:
            FunctionStartError: a cold start failed.
        """
        worker = self._idle.get()
        try:
            return worker.invoke(event, request_id)
        finally:
            self._idle.put(worker)

    def stop(self) -> None:
        """Stop every instance."""
        with self._lock:
            for worker in self._all:
                worker.stop()
