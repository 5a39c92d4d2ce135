"""MonitorFunction: the extraction queue's consumer, built once by ``security.wiring``. Each batch
is processed record by record (Powertools batch processing); only failed records are redelivered.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.batch import process_partial_response as process

from security.extraction import QueryMessage
from security.settings import Settings
from security.wiring import monitor_function

function = monitor_function(Settings.from_env(os.environ))
monitor, processor = function.monitor, BatchProcessor(event_type=EventType.SQS)


def record_handler(record: Any) -> None:
    """Apply one queued query to its principal's detector state."""
    monitor.process(QueryMessage.from_json(record.body))


def handler(event: dict[str, Any], context: Any) -> Any:
    """Lambda entry point: an SQS batch in, ``batchItemFailures`` out."""
    function.audit.enter(context)
    return process(event=event, record_handler=record_handler, processor=processor, context=context)
