"""MonitorFunction: the extraction queue's consumer, built once by ``security.wiring``. Each batch
is grouped by principal and model: one state read and one state write per group; only the records
of a group that failed are redelivered (``batchItemFailures``).
"""

from __future__ import annotations

import os
from typing import Any

from security.settings import Settings
from security.wiring import monitor_function

function = monitor_function(Settings.from_env(os.environ))


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry point: an SQS batch in, ``batchItemFailures`` out."""
    function.audit.enter(context)
    return function.monitor.process_sqs_event(event)
