"""The worker side of a local function: a stand-in for the Lambda Python runtime.

Run by ``workers.Worker`` as ``python -I -S lambda_runtime.py CONFIG_JSON``: isolated mode and
no ``site``, so ``sys.path`` starts as the standard library only. This script then puts the
function's code dir, its layers' ``python/`` dirs and the runtime's boto3 in front, as Lambda
does, imports the handler once (the cold start) and serves invocations, one JSON line per
request on stdin and one JSON line per reply on a private copy of stdout. The handler's own
stdout and stderr both go to this process's stderr (Lambda sends both to the log).

Only the standard library is imported here: nothing of mlmoat or the host's site-packages may
leak onto the function's path.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import traceback
import uuid
from typing import Any, TextIO


class LambdaContext:
    """The fields and method of the Lambda context object that handlers use.

    The one fake context of the tooling and the tests: this script's invocations, the red team's
    and the capacity replay's in-process calls and the handler tests build it. (The benchmark's
    child, ``mlmoat/bench/child.py``, keeps a copy: it runs with the function's path alone.)
    """

    def __init__(
        self,
        function_name: str = "PredictFunction",
        *,
        request_id: str | None = None,
        memory_mb: int = 1024,
        timeout_s: float = 29.0,
        function_arn: str | None = None,
        log_stream_name: str = "local",
    ) -> None:
        self.aws_request_id = request_id or str(uuid.uuid4())
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = (
            function_arn or f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        )
        self.memory_limit_in_mb = memory_mb
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = log_stream_name
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's timeout."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _error(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    return {
        "errorMessage": str(exc),
        "errorType": error_type or type(exc).__name__,
        "stackTrace": traceback.format_exception(exc),
    }


def _max_memory_mb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def _send(channel: TextIO, message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def main(argv: list[str]) -> int:
    """Load the handler, then answer invocations until stdin closes."""
    started = time.perf_counter()
    config = json.loads(argv[1])
    # The reply channel is a private copy of stdout; fd 1 itself now points at stderr so that
    # print() and loggers created by the handler end up in the log, not in the protocol.
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", encoding="utf-8", buffering=1)
    sys.path[:0] = config["paths"]
    os.chdir(config["code_dir"])
    module_name, _, function_name = config["handler"].rpartition(".")
    try:
        module = importlib.import_module(module_name)
        handler = getattr(module, function_name)
    # The Lambda runtime reports any import-time failure as Runtime.ImportModuleError / the
    # exception itself; so does this stand-in.
    except Exception as exc:  # noqa: BLE001
        error_type = "Runtime.ImportModuleError" if isinstance(exc, ImportError) else None
        _send(channel, {"ready": False, "error": _error(exc, error_type)})
        return 1
    init_ms = (time.perf_counter() - started) * 1000
    _send(channel, {"ready": True, "init_ms": init_ms, "max_memory_mb": _max_memory_mb()})
    for line in sys.stdin:
        request = json.loads(line)
        # Lambda sets the invocation's trace header in the environment (Powertools Logger reads
        # it into every record as xray_trace_id); not sampled: there is no X-Ray daemon here.
        os.environ["_X_AMZN_TRACE_ID"] = (
            f"Root=1-{int(time.time()):08x}-{os.urandom(12).hex()};"
            f"Parent={os.urandom(8).hex()};Sampled=0"
        )
        context = LambdaContext(
            config["function_name"],
            request_id=request["request_id"],
            memory_mb=int(config["memory_size"]),
            timeout_s=float(request["timeout"]),
            function_arn=config["function_arn"],
            log_stream_name=config["log_stream_name"],
        )
        begun = time.perf_counter()
        try:
            response = handler(request["event"], context)
            reply: dict[str, Any] = {"response": json.loads(json.dumps(response))}
        # As in Lambda, a handler exception becomes the invocation's error payload.
        except Exception as exc:  # noqa: BLE001
            reply = {"error": _error(exc)}
        reply["duration_ms"] = (time.perf_counter() - begun) * 1000
        reply["max_memory_mb"] = _max_memory_mb()
        sys.stdout.flush()
        sys.stderr.flush()
        _send(channel, reply)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
