"""Fixtures for the handler tests: the real PredictFunction module against a moto server.

- ``predict_module`` (session): ``handlers.predict`` imported once with the environment a
  deployed function has, against the session's ``moto_server`` (tests/conftest.py), the table
  created from template.yaml's key schema, as a cold start does.
- ``admin_module`` (session): ``handlers.admin`` imported the same way (AdminFunction).
- ``keys`` (session): API keys created through ``KeyAdmin`` for each outcome the events need.
- ``log_sink`` (session, tests/conftest.py): the suite-wide log capture; ``predict_module``
  attaches it to the audit logger too (which does not propagate to the root logger).
"""

from __future__ import annotations

import importlib.util
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from handlersupport import import_handler, new_key

from logcapture import LineSink, remember_key
from mlmoat.local.awsenv import DUMMY_CLIENT_CREDENTIALS, DUMMY_CREDENTIALS

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"


@pytest.fixture(scope="session")
def handler_env(moto_server: Any, create_security_table: Callable[..., str]) -> dict[str, str]:
    dynamodb_endpoint = moto_server.endpoint
    client = boto3.client("dynamodb", endpoint_url=dynamodb_endpoint, region_name="us-east-1")
    table = create_security_table(client, f"handlers-{uuid.uuid4().hex[:10]}")
    sqs = boto3.client("sqs", endpoint_url=dynamodb_endpoint, region_name="us-east-1")
    queue_url = sqs.create_queue(QueueName=f"extraction-{uuid.uuid4().hex[:10]}")["QueueUrl"]
    calibrated = all((d / "defences.json").is_file() for d in MODELS.iterdir() if d.is_dir())
    return {
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint,
        "AWS_ENDPOINT_URL_SQS": dynamodb_endpoint,
        "SECURITY_EXTRACTION_QUEUE_URL": queue_url,
        # These tests read each request's query from the queue right after it: the sink sends
        # it as it is served. Its buffered default (1 s) has tests of its own
        # (test_extraction_queue_failures.py, tests/unit/test_query_sink.py).
        "SECURITY_EXTRACTION_SEND_MAX_DELAY": "0",
        # And they read the monitor's state right after a batch: it applies each batch at once.
        # Its write-behind buffer (30 s by default) has tests of its own
        # (test_monitor_write_behind.py here, tests/unit/test_monitor_buffer.py, tests/bench).
        "SECURITY_MONITOR_FLUSH_SECONDS": "0",
        "AWS_DEFAULT_REGION": "us-east-1",
        **DUMMY_CREDENTIALS,
        "SECURITY_TABLE_NAME": table,
        "SECURITY_MODEL_DIR": str(MODELS),
        "SECURITY_DEFAULT_MODEL": "iris",
        "SECURITY_SQUEEZE_POLICY": "flag" if calibrated else "off",
        "SECURITY_SERVICE_NAME": "mlmoat",
        "POWERTOOLS_SERVICE_NAME": "mlmoat",
        "POWERTOOLS_METRICS_NAMESPACE": "mlmoat",
    }


@pytest.fixture(scope="session")
def predict_module(handler_env: dict[str, str], log_sink: LineSink) -> Iterator[Any]:
    module = import_handler("handlers.predict", handler_env)
    audit_logger = logging.getLogger(module.settings.service_name)
    # The audit logger does not propagate: capture its lines with its own (redacting) format.
    log_sink.setFormatter(audit_logger.handlers[0].formatter)
    audit_logger.addHandler(log_sink)
    yield module
    audit_logger.removeHandler(log_sink)


@pytest.fixture(scope="session")
def admin_module(handler_env: dict[str, str]) -> Any:
    if importlib.util.find_spec("handlers.admin") is None:
        pytest.skip("handlers/admin.py (AdminFunction) is not in the tree yet")
    return import_handler("handlers.admin", handler_env)


@pytest.fixture(scope="session")
def admin(predict_module: Any, handler_env: dict[str, str]) -> Any:
    from security.admin import KeyAdmin
    from security.store import PrincipalStore

    client = boto3.client(
        "dynamodb",
        endpoint_url=handler_env["AWS_ENDPOINT_URL_DYNAMODB"],
        region_name="us-east-1",
        **DUMMY_CLIENT_CREDENTIALS,
    )
    store = PrincipalStore(client=client, table_name=handler_env["SECURITY_TABLE_NAME"])
    return KeyAdmin(store=store, settings=predict_module.settings)


@pytest.fixture(scope="session")
def keys(admin: Any) -> dict[str, str]:
    """Placeholder values for the events: one key per outcome they exercise."""
    from security.keys import format_key, new_key_id, new_secret

    unknown = remember_key(format_key(new_key_id(), new_secret()))
    return {
        "API_KEY": new_key(admin, budget=100000, rate_limit="100000/minute")["api_key"],
        "LABEL_API_KEY": new_key(admin, output_policy="label")["api_key"],
        "SCOPED_API_KEY": new_key(admin, scopes=["predict:breast-cancer"])["api_key"],
        "LIMITED_API_KEY": new_key(admin, rate_limit="1/minute")["api_key"],
        "UNKNOWN_API_KEY": unknown,
    }
