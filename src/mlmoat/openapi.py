"""``mlmoat openapi``: print the prediction API's OpenAPI document.

The document is generated from the same ``create_app`` the Lambda function runs, with every
served model's request schema (from its manifest), the response and error envelopes, and the
security schemes (``X-API-Key`` header, bearer JWT). The training envelope is not published.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import boto3

from security.audit import AuditLog
from security.auth import Authenticator
from security.integration import create_app, schemas_for
from security.limits import Gatekeeper
from security.model import ModelRegistry
from security.settings import Settings
from security.store import PrincipalStore

_REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def openapi_document(*, model_dir: str, default_model: str, max_rows: int) -> dict[str, Any]:
    """Build the app offline (no AWS call is made) and return its OpenAPI document.

    Raises:
        ModelIntegrityError: an artifact under ``model_dir`` does not match its manifest.
    """
    settings = Settings(
        table_name="openapi-offline",
        model_dir=model_dir,
        default_model=default_model,
        max_rows=max_rows,
    )
    registry = ModelRegistry.load(model_dir)
    # The client is never called: building the app needs a store object, not a connection,
    # and these placeholder credentials are never sent anywhere.
    client = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        aws_access_key_id="offline",
        aws_secret_access_key="offline",  # noqa: S106  # nosec B106
    )
    app = create_app(
        settings=settings,
        registry=registry,
        schemas=schemas_for(registry, registry.names, margin=settings.envelope_margin),
        authenticator=Authenticator(settings=settings, token_verifier=None),
        gatekeeper=Gatekeeper(
            store=PrincipalStore(client=client, table_name=settings.table_name),
            settings=settings,
        ),
        audit=AuditLog(service="mlmoat-openapi"),
        docs=True,
    )
    return app.openapi()


def main(argv: list[str]) -> int:
    """Run ``mlmoat openapi``."""
    parser = argparse.ArgumentParser(prog="mlmoat openapi", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(_REPO_MODELS), help="default: models/")
    parser.add_argument("--default-model", default="iris")
    parser.add_argument("--max-rows", type=int, default=100)
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    document = openapi_document(
        model_dir=args.model_dir, default_model=args.default_model, max_rows=args.max_rows
    )
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
