"""Helpers shared by the security-core integration tests and their spawned worker processes.

It imports only what a Lambda instance would (boto3 and the security layer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from mlmoat.local.awsenv import DUMMY_CLIENT_CREDENTIALS
from security.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def make_client(endpoint: str, *, max_attempts: int = 3, read_timeout: float = 5.0) -> Any:
    """A DynamoDB client for ``endpoint`` with standard retries and short timeouts."""
    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        **DUMMY_CLIENT_CREDENTIALS,
        config=Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=1,
            read_timeout=read_timeout,
            max_pool_connections=64,
        ),
    )


def record_calls(client: Any) -> list[str]:
    """The DynamoDB operations ``client`` makes from now on, in order (a live list)."""
    calls: list[str] = []
    client.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))
    return calls


def settings_for(table: str, **overrides: Any) -> Settings:
    """Settings for tests (model dir unused here)."""
    overrides.setdefault("model_dir", "/nonexistent")
    return Settings(table_name=table, **overrides)
