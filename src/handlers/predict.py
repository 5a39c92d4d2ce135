"""PredictFunction: ``POST /predict`` and ``POST /models/{model}/predict``.

Thin by design: settings are read from the environment once, clients, models and the app are
built once at init (cold start), and Mangum adapts API Gateway events to the ASGI app. Every
rule lives in the ``security`` layer.

SnapStart-ready (template parameter ``SnapStart``): each client is a ``RefreshableClient``
rebuilt after a restore (sockets opened at init are dead, credentials are resolved again), and
``random``/numpy are reseeded; without SnapStart the hooks are registered and never called.
"""

from __future__ import annotations

import os

import boto3
from botocore.config import Config
from mangum import Mangum

from security.extraction import sink_client_config
from security.integration import build_app
from security.settings import Settings
from security.snapstart import RefreshableClient, SnapStartHooks

settings = Settings.from_env(os.environ)
hooks = SnapStartHooks()
# Short timeouts and few retries: a slow DynamoDB fails the request closed (503) quickly.
dynamodb = RefreshableClient(
    lambda: boto3.client(
        "dynamodb",
        config=Config(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 3}),
    )
)
sqs = (
    RefreshableClient(lambda: boto3.client("sqs", config=sink_client_config()))
    if settings.extraction_queue_url
    else None
)
# The same for SSM: with the SDK defaults (60 s timeouts, 5 attempts) a hanging SSM ran the
# function into its 10 s timeout: a 502 with no audit record (tests/faults).
ssm = (
    RefreshableClient(
        lambda: boto3.client(
            "ssm",
            config=Config(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 2}),
        )
    )
    if settings.jwt_enabled
    else None
)
app = build_app(settings, dynamodb_client=dynamodb, sqs_client=sqs, ssm_client=ssm)
for client in (dynamodb, sqs, ssm):
    if client is not None:
        hooks.after_restore(client.refresh)
hooks.install()
handler = Mangum(app, lifespan="off")
