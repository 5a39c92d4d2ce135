"""The security package's public names are pinned: changing them is a deliberate act."""

from __future__ import annotations

import security

PINNED = {
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
}


def test_all_is_pinned() -> None:
    assert set(security.__all__) == PINNED
    assert len(security.__all__) == len(set(security.__all__))


def test_every_public_name_resolves_and_has_a_docstring() -> None:
    for name in security.__all__:
        value = getattr(security, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), name


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        security.not_a_name  # noqa: B018
    except AttributeError:
        pass
    else:
        raise AssertionError("expected AttributeError")
