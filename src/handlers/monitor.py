"""MonitorFunction: consumes the extraction queue and runs the per-principal detectors.

SQS-triggered, thin: settings, clients and the monitor are built once at init; each batch is
processed record by record with Powertools batch processing, reporting partial failures so only
the failed records (a state-write race, a store outage) are redelivered.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from security.audit import AuditLog
from security.extraction import (
    ExtractionMonitor,
    QueryMessage,
    flag_audit_sink,
    load_monitor_references,
)
from security.settings import Settings
from security.store import PrincipalStore

settings = Settings.from_env(os.environ)
audit_log = AuditLog(service=settings.service_name)
monitor = ExtractionMonitor(
    store=PrincipalStore(client=boto3.client("dynamodb"), table_name=settings.table_name),
    references=load_monitor_references(settings.model_dir),
    action=settings.extraction_action,
    audit=flag_audit_sink(audit_log, service=settings.service_name),
)
processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> None:
    """Apply one queued query to its principal's detector state."""
    monitor.process(QueryMessage.from_json(record.body))


def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    """Lambda entry point: an SQS batch in, ``batchItemFailures`` out."""
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
