"""X-Ray tracing of the functions' AWS calls (Powertools Tracer on botocore).

In a Lambda execution environment, Powertools Tracer patches botocore, so every DynamoDB, SQS and
SSM call of a function is an X-Ray subsegment (operation, table or queue, status, retries; never
a key, an item or a message body). Measured under CPython 3.13 on these machines: about 50 ms of
cold start (importing and configuring the X-Ray SDK) and about 50 us per AWS call;
``POWERTOOLS_TRACE_DISABLED=true`` skips both.
"""

from __future__ import annotations

import os

_TRACING: list[bool] = []
_TRUTHY = frozenset({"1", "true", "yes", "on", "y", "t"})


def tracing_enabled(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """Whether the X-Ray SDK should be loaded: the conditions Powertools Tracer checks itself.

    In a Lambda execution environment (``LAMBDA_TASK_ROOT``), not under ``sam local`` or
    ``mlmoat local`` (``AWS_SAM_LOCAL``), and not switched off (``POWERTOOLS_TRACE_DISABLED``).
    Checked here first because constructing a Tracer, even a disabled one, imports the SDK.
    """
    if not environ.get("LAMBDA_TASK_ROOT") or environ.get("AWS_SAM_LOCAL"):
        return False
    return environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() not in _TRUTHY


def install_tracing(service: str) -> bool:
    """Patch botocore with Powertools Tracer (once per process); True if tracing is on.

    Only botocore is patched: the functions make no other outbound call. No handler decorator
    either: ``capture_lambda_handler`` would put the response (an admin ``create`` returns a new
    secret) into the trace as metadata.
    """
    if not _TRACING:
        on = tracing_enabled()
        if on:
            from aws_lambda_powertools import Tracer

            Tracer(service=service, patch_modules=("botocore",))
        _TRACING.append(on)
    return _TRACING[0]
