"""mlmoat's security layer: authentication, exact limits, strict I/O, ML defences and audit.

Public names are listed in ``__all__`` (a test pins the list). The error tree and settings are
imported eagerly; everything else is imported on first use (PEP 562), so ``import security``
stays cheap for the CLI and a function only pays for the modules it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from security.errors import (
    AdversarialInputError,
    AuthenticationError,
    ConflictError,
    DependencyUnavailableError,
    ForbiddenError,
    InvalidPayloadError,
    MalformedBodyError,
    ModelIntegrityError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    SecretUnavailableError,
    SecurityError,
    StoreUnavailableError,
    UnsupportedMediaTypeError,
)
from security.settings import RateSpec, Settings, SettingsError

if TYPE_CHECKING:
    from security.api import create_app
    from security.api.errors import ERROR_RESPONSES
    from security.api.predict import schemas_for
    from security.audit import AuditEvent, AuditLog
    from security.auth import Authenticator, Credentials, Principal
    from security.limits import Admission, Gatekeeper
    from security.policy import OutputPolicy
    from security.sanitize import apply_output_policy, redact
    from security.store import PrincipalStore
    from security.validation import FeatureSchema, PredictionInput, parse_prediction_request

_LAZY: dict[str, str] = {
    "AuditEvent": "security.audit",
    "AuditLog": "security.audit",
    "Authenticator": "security.auth",
    "Credentials": "security.auth",
    "Principal": "security.auth",
    "ERROR_RESPONSES": "security.api.errors",
    "create_app": "security.api",
    "schemas_for": "security.api.predict",
    "Admission": "security.limits",
    "Gatekeeper": "security.limits",
    "OutputPolicy": "security.policy",
    "apply_output_policy": "security.sanitize",
    "redact": "security.sanitize",
    "PrincipalStore": "security.store",
    "FeatureSchema": "security.validation",
    "PredictionInput": "security.validation",
    "parse_prediction_request": "security.validation",
}

__all__ = [
    "ERROR_RESPONSES",
    "Admission",
    "AdversarialInputError",
    "AuditEvent",
    "AuditLog",
    "AuthenticationError",
    "Authenticator",
    "ConflictError",
    "Credentials",
    "DependencyUnavailableError",
    "FeatureSchema",
    "ForbiddenError",
    "Gatekeeper",
    "InvalidPayloadError",
    "MalformedBodyError",
    "ModelIntegrityError",
    "NotFoundError",
    "OutputPolicy",
    "PayloadTooLargeError",
    "PredictionInput",
    "Principal",
    "PrincipalStore",
    "RateLimitedError",
    "RateSpec",
    "SecretUnavailableError",
    "SecurityError",
    "Settings",
    "SettingsError",
    "StoreUnavailableError",
    "UnsupportedMediaTypeError",
    "apply_output_policy",
    "create_app",
    "parse_prediction_request",
    "redact",
    "schemas_for",
]


def __getattr__(name: str) -> Any:
    """Import a lazily re-exported name on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'security' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
