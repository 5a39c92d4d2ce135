"""The benchmark's function process: one Lambda execution environment, cold then warm.

``mlmoat bench`` runs this file as a script in a fresh CPython 3.13 (``mlmoat.python313``, the
Lambda runtime's Python) started with ``-I -S -B`` (no site-packages, no environment-driven
paths, no byte-code written: it reads what the trees ship, as Lambda's read-only code does), so
only what the parent puts on ``sys.path`` is importable: the function's code, its layers, and
boto3. It is never imported by the ``mlmoat`` package and imports nothing from
it: it must run with the standard library alone.

Protocol: ``python3.13 -I -S -B child.py CONFIG_JSON RESULT_FD``.
The child imports the handler,
sends the first event, and writes one JSON line ``{"first": {...}}`` to ``RESULT_FD`` the
moment the first response is back (the parent timestamps that line: process start to first
response). It then runs each phase and writes one final JSON line with every measurement.
The handler's own stdout (audit records, EMF metrics) stays on stdout, which the parent sends
to a file, as Lambda sends it to CloudWatch.

With ``"hooks": true`` it registers botocore event handlers on every client the handler creates
(through botocore's ``Session.create_client``, which boto3 also calls), to
count AWS requests per invocation and to time each DynamoDB round trip from ``before-send`` to
the HTTP response (``before-parse``), and each whole SDK call (``provide-client-params`` to
``after-call``), so the in-process time can be reported with the wire, or the SDK, subtracted.
The hooks only observe: they return ``None`` and never change a request.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import resource
import sys
import time
import uuid
from typing import Any

_start = time.perf_counter()


class _Context:
    """The parts of ``LambdaContext`` that Powertools and Mangum read."""

    def __init__(self, function_name: str, memory_mb: int) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        )
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "bench"
        self._deadline = time.monotonic() + 30.0

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class _Wire:
    """Counts AWS requests and sums DynamoDB wire time, per invocation."""

    def __init__(self) -> None:
        self.reset()
        self._open: int | None = None
        self._service = "?"

    def reset(self) -> None:
        self.calls: list[str] = []
        self.sends: dict[str, int] = {}
        self.wire_ns = 0
        self.wire_ns_by_service: dict[str, int] = {}
        self.sdk_ns = 0
        self._call_start: int | None = None
        self.request_bytes = 0
        self.response_bytes = 0
        self.bytes_by_service: dict[str, int] = {}

    def install(self) -> None:
        # Every client, boto3's or botocore's, is made by botocore's Session.create_client: each
        # new client gets the hooks on its own event emitter. Only botocore is imported here
        # (which the function imports anyway), so the hooks add no import to the cold start.
        import botocore.session

        original = botocore.session.Session.create_client
        hooks = self

        def create_client(session: Any, *args: Any, **kwargs: Any) -> Any:
            client = original(session, *args, **kwargs)
            hooks.register(client.meta.events)
            return client

        botocore.session.Session.create_client = create_client  # type: ignore[method-assign,assignment]

    def register(self, events: Any) -> None:
        """Put the hooks on one client's event emitter."""
        events.register("provide-client-params", self._call_begins, unique_id="mlmoat-bench-begin")
        events.register("after-call", self._call_ends, unique_id="mlmoat-bench-end")
        events.register("after-call-error", self._call_ends, unique_id="mlmoat-bench-end-error")
        events.register("before-call", self._before_call, unique_id="mlmoat-bench-call")
        events.register("before-send", self._before_send, unique_id="mlmoat-bench-send")
        events.register("before-parse", self._after_send, unique_id="mlmoat-bench-parse")
        events.register("needs-retry", self._needs_retry, unique_id="mlmoat-bench-retry")

    def _call_begins(self, **_: Any) -> None:
        # First event of botocore's _make_api_call: the SDK's own work starts here.
        self._call_start = time.perf_counter_ns()

    def _call_ends(self, **_: Any) -> None:
        if self._call_start is not None:
            self.sdk_ns += time.perf_counter_ns() - self._call_start
            self._call_start = None

    def _before_call(self, model: Any = None, **_: Any) -> None:
        if model is not None:
            self.calls.append(f"{model.service_model.service_id.hyphenize()}:{model.name}")

    def _before_send(self, request: Any = None, event_name: str = "", **_: Any) -> None:
        service = event_name.split(".")[1] if "." in event_name else "?"
        self.sends[service] = self.sends.get(service, 0) + 1
        body = getattr(request, "body", None) or b""
        self.request_bytes += len(body)
        self.bytes_by_service[service] = self.bytes_by_service.get(service, 0) + len(body)
        self._service = service
        self._open = time.perf_counter_ns()

    def _close(self) -> None:
        if self._open is not None:
            elapsed = time.perf_counter_ns() - self._open
            self.wire_ns += elapsed
            by_service = self.wire_ns_by_service
            by_service[self._service] = by_service.get(self._service, 0) + elapsed
            self._open = None

    def _after_send(self, response_dict: Any = None, **_: Any) -> None:
        self._close()
        if isinstance(response_dict, dict):
            body = response_dict.get("body") or b""
            self.response_bytes += len(body)
            by_service = self.bytes_by_service
            by_service[self._service] = by_service.get(self._service, 0) + len(body)

    def _needs_retry(self, **_: Any) -> None:
        # Reached without before-parse only when the send itself failed.
        self._close()

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": list(self.calls),
            "sends": dict(self.sends),
            "wire_ns": self.wire_ns,
            "wire_ns_by_service": dict(self.wire_ns_by_service),
            "sdk_ns": self.sdk_ns,
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "bytes_by_service": dict(self.bytes_by_service),
        }


def _status(response: Any) -> int:
    if isinstance(response, dict):
        return int(response.get("statusCode", 0))
    return 0


def _fresh(event: dict[str, Any], index: int, vary_source: bool) -> dict[str, Any]:
    # API Gateway gives every request its own id (mlmoat's idempotency digest keys on it).
    copy = dict(event)
    context = dict(copy.get("requestContext") or {})
    context["requestId"] = str(uuid.uuid4())
    if vary_source:
        # A distinct client address per request: the baseline's in-memory limiter keys on it.
        identity = dict(context.get("identity") or {})
        identity["sourceIp"] = f"198.51.{(index // 250) % 250}.{index % 250 + 1}"
        context["identity"] = identity
    copy["requestContext"] = context
    return copy


class _Timers:
    """Wall time spent inside named callables per invocation (``module:Qualified.name``)."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = {}

    def wrap(self, target: str) -> None:
        module_name, _, qualname = target.partition(":")
        owner: Any = importlib.import_module(module_name)
        *path, attr = qualname.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, attr)
        timers = self.ns

        if asyncio.iscoroutinefunction(original):

            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter_ns()
                try:
                    return await original(*args, **kwargs)
                finally:
                    timers[target] = timers.get(target, 0) + time.perf_counter_ns() - start

            setattr(owner, attr, timed_async)
        else:

            def timed(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter_ns()
                try:
                    return original(*args, **kwargs)
                finally:
                    timers[target] = timers.get(target, 0) + time.perf_counter_ns() - start

            setattr(owner, attr, timed)


def main(config_path: str, result_fd: int) -> int:
    with open(config_path, encoding="utf-8") as stream:
        config = json.load(stream)
    out = os.fdopen(result_fd, "w", buffering=1)
    for path in reversed(config["paths"]):
        sys.path.insert(0, path)

    wire = _Wire()
    t0 = time.perf_counter()
    if config.get("hooks"):
        wire.install()
    t_hooks = time.perf_counter() - t0

    timers = _Timers()
    module_name, _, attr = config["handler"].rpartition(".")
    t0 = time.perf_counter()
    module = importlib.import_module(module_name)
    handler = getattr(module, attr)
    t_import = time.perf_counter() - t0
    # Diagnostic only (``timers`` in the config): wrap callables to time them per invocation.
    for target in config.get("timers") or []:
        timers.wrap(target)

    name = config.get("function_name", "bench")
    memory_mb = int(config.get("memory_mb", 1024))
    wire.reset()
    t0 = time.perf_counter()
    response = handler(_fresh(config["first_event"], 0, False), _Context(name, memory_mb))
    t_first = time.perf_counter() - t0
    first = {
        "status": _status(response),
        "hooks_s": t_hooks,
        "import_s": t_import,
        "first_invoke_s": t_first,
        "since_script_s": time.perf_counter() - _start,
        "wire": wire.snapshot(),
        "body": response.get("body") if isinstance(response, dict) else None,
    }
    out.write(json.dumps({"first": first}) + "\n")

    phases: dict[str, Any] = {}
    for phase in config.get("phases", []):
        samples: list[dict[str, Any]] = []
        statuses: dict[str, int] = {}
        profiler = None
        if config.get("profile") and phase["name"] == "warm":
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        for index in range(int(phase["count"])):
            event = _fresh(phase["event"], index, bool(phase.get("vary_source")))
            wire.reset()
            timers.ns.clear()
            t0 = time.perf_counter_ns()
            response = handler(event, _Context(name, memory_mb))
            elapsed = time.perf_counter_ns() - t0
            status = _status(response)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            sample = wire.snapshot()
            sample["ns"] = elapsed
            sample["status"] = status
            if timers.ns:
                sample["timers_ns"] = dict(timers.ns)
            samples.append(sample)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(config["profile"])
        phases[phase["name"]] = {
            "samples": samples,
            "statuses": statuses,
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }
    out.write(json.dumps({"result": {"first": first, "phases": phases}}) + "\n")
    out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], int(sys.argv[2])))
