"""AdminFunction: the ``/admin/keys`` API behind the ``admin`` scope.

Thin by design: settings are read once, clients and the app are built once at init, and Mangum
adapts API Gateway events. Every rule lives in ``security.admin`` (``KeyAdmin``); the routes in
``security.admin_api``; the envelope, error table and audit records in ``security.integration``.
"""

from __future__ import annotations

import os

import boto3
from botocore.config import Config
from mangum import Mangum

from security.admin import KeyAdmin
from security.admin_api import create_admin_router
from security.audit import AuditLog
from security.auth import Authenticator
from security.integration import create_admin_app
from security.limits import Gatekeeper
from security.settings import Settings
from security.store import PrincipalStore
from security.tokens import TokenVerifier

settings = Settings.from_env(os.environ)
store = PrincipalStore(
    # Short timeouts and few retries: a slow DynamoDB fails the request closed (503) quickly.
    client=boto3.client(
        "dynamodb",
        config=Config(
            connect_timeout=1, read_timeout=2, retries={"mode": "standard", "total_max_attempts": 3}
        ),
    ),
    table_name=settings.table_name,
)
verifier = (
    TokenVerifier(settings=settings, ssm_client=boto3.client("ssm"))
    if settings.jwt_enabled
    else None
)
app = create_admin_app(
    settings=settings,
    router=create_admin_router(
        admin=KeyAdmin(store=store, settings=settings),
        authenticator=Authenticator(settings=settings, token_verifier=verifier),
        gatekeeper=Gatekeeper(store=store, settings=settings),
    ),
    audit=AuditLog(service=settings.service_name),
)
handler = Mangum(app, lifespan="off")
