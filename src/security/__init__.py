"""mlmoat's security layer: authentication, exact limits, strict I/O, ML defences and audit.

The package's top level holds what every user of the layer needs and nothing that costs an
import: the error tree (``security.errors``) and the settings (``security.settings``). Everything
else is imported from its module (``security.wiring``, ``security.store``, ``security.api``, ...),
which is how the handlers and the ``mlmoat`` tooling import it; ``__all__`` is pinned by a test.
"""

from __future__ import annotations

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

__all__ = [
    "AdversarialInputError",
    "AuthenticationError",
    "ConflictError",
    "DependencyUnavailableError",
    "ForbiddenError",
    "InvalidPayloadError",
    "MalformedBodyError",
    "ModelIntegrityError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "RateSpec",
    "SecretUnavailableError",
    "SecurityError",
    "Settings",
    "SettingsError",
    "StoreUnavailableError",
    "UnsupportedMediaTypeError",
]
