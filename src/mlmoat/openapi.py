"""``mlmoat openapi``: print the prediction API's (or the admin API's) OpenAPI document.

The document is generated from the wiring the Lambda functions run
(``security.wiring.build_predict_app`` and ``build_admin_app``). The prediction API's has every
served model's request schema (from its manifest), the response and error envelopes, and the
security schemes (``X-API-Key`` header, bearer JWT); the training envelope is not published.
``--api admin`` prints the admin API's: its routes, request bodies, admin-worded error table and
the SigV4 (``AWS_IAM``) scheme in API Gateway's ``x-amazon-apigateway-authtype`` extension.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import boto3

from security.settings import Settings
from security.wiring import Clients, build_admin_app, build_predict_app

_REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def _offline_client() -> Any:
    # No AWS call is made: building an app needs a client object, not a connection, and the
    # placeholder credentials are never sent anywhere.
    return boto3.client(
        "dynamodb",
        region_name="us-east-1",
        aws_access_key_id="offline",
        aws_secret_access_key="offline",  # noqa: S106  # nosec B106
    )


def openapi_document(*, model_dir: str, default_model: str, max_rows: int) -> dict[str, Any]:
    """Build the prediction app offline with the function's own wiring; its OpenAPI document.

    Raises:
        ModelIntegrityError: an artifact under ``model_dir`` does not match its manifest.
    """
    settings = Settings(
        table_name="openapi-offline",
        model_dir=model_dir,
        default_model=default_model,
        max_rows=max_rows,
    )
    app = build_predict_app(settings, Clients(dynamodb=_offline_client()), docs=True)
    return app.openapi()


def admin_openapi_document() -> dict[str, Any]:
    """Build the admin app offline with the function's own wiring; its OpenAPI document."""
    settings = Settings(table_name="openapi-offline", model_dir=str(_REPO_MODELS))
    app = build_admin_app(settings, Clients(dynamodb=_offline_client()), docs=True)
    return app.openapi()


def main(argv: list[str]) -> int:
    """Run ``mlmoat openapi``."""
    parser = argparse.ArgumentParser(prog="mlmoat openapi", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--api",
        choices=("predict", "admin"),
        default="predict",
        help="predict: the prediction API (PredictFunction, default); admin: the admin API",
    )
    parser.add_argument("--model-dir", default=str(_REPO_MODELS), help="default: models/")
    parser.add_argument("--default-model", default="iris")
    parser.add_argument("--max-rows", type=int, default=100)
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    if args.api == "admin":
        document = admin_openapi_document()
    else:
        document = openapi_document(
            model_dir=args.model_dir, default_model=args.default_model, max_rows=args.max_rows
        )
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
