"""What ``mlmoat local up`` seeds and shows: a demo API key and a request that works."""

from __future__ import annotations

import json
from typing import Any

from mlmoat.local.awsenv import dynamodb_client
from mlmoat.local.template import Template
from security.admin import KeyAdmin
from security.settings import Settings
from security.store import PrincipalStore

API_FUNCTION = "PredictFunction"


def create_demo_key(template: Template, *, owner: str = "demo") -> str:
    """Create a ``predict:*`` key through the security layer's key admin; return the API key.

    Raises:
        security.errors.SecurityError: the key store refused (e.g. the table is missing).
    """
    settings = Settings.from_env(template.function(API_FUNCTION).environment)
    store = PrincipalStore(
        client=dynamodb_client(template.endpoint, template.region), table_name=settings.table_name
    )
    created = KeyAdmin(store=store, settings=settings).create(owner=owner)
    return str(created["api_key"])


def sample_request(template: Template) -> dict[str, Any]:
    """A one-row request for the default model: the middle of each feature's training envelope."""
    settings = Settings.from_env(template.function(API_FUNCTION).environment)
    manifest_path = template.root / "models" / settings.default_model / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    envelope = manifest["envelope"]
    features = [
        round((envelope[name]["min"] + envelope[name]["max"]) / 2, 3)
        for name in manifest["feature_names"]
    ]
    return {"features": features}
