"""``mlmoat openapi``: print the prediction API's OpenAPI document.

The document is generated from the wiring the Lambda function runs
(``security.wiring.build_predict_app``), with every served model's request schema (from its
manifest), the response and error envelopes, and the
security schemes (``X-API-Key`` header, bearer JWT). The training envelope is not published.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import boto3

from security.settings import Settings
from security.wiring import Clients, build_predict_app

_REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def openapi_document(*, model_dir: str, default_model: str, max_rows: int) -> dict[str, Any]:
    """Build the app offline with the function's own wiring and return its OpenAPI document.

    No AWS call is made: building the app needs a client object, not a connection, and the
    placeholder credentials below are never sent anywhere.

    Raises:
        ModelIntegrityError: an artifact under ``model_dir`` does not match its manifest.
    """
    settings = Settings(
        table_name="openapi-offline",
        model_dir=model_dir,
        default_model=default_model,
        max_rows=max_rows,
    )
    client = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        aws_access_key_id="offline",
        aws_secret_access_key="offline",  # noqa: S106  # nosec B106
    )
    app = build_predict_app(settings, Clients(dynamodb=client), docs=True)
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
