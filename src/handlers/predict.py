"""PredictFunction: ``POST /predict`` and ``POST /models/{model}/predict``.

Thin by design: settings are read from the environment once, clients, models and the app are
built once at init (cold start), and Mangum adapts API Gateway events to the ASGI app. Every
rule lives in the ``security`` layer.
"""

from __future__ import annotations

import os

import boto3
from botocore.config import Config
from mangum import Mangum

from security.extraction import sink_client_config
from security.integration import build_app
from security.settings import Settings

settings = Settings.from_env(os.environ)
app = build_app(
    settings,
    # Short timeouts and few retries: a slow DynamoDB fails the request closed (503) quickly.
    dynamodb_client=boto3.client(
        "dynamodb",
        config=Config(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 3}),
    ),
    sqs_client=boto3.client("sqs", config=sink_client_config())
    if settings.extraction_queue_url
    else None,
    # The same for SSM: with the SDK defaults (60 s timeouts, 5 attempts) a hanging SSM ran the
    # function into its 10 s timeout: a 502 with no audit record (tests/faults).
    ssm_client=boto3.client(
        "ssm",
        config=Config(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 2}),
    )
    if settings.jwt_enabled
    else None,
)
handler = Mangum(app, lifespan="off")
