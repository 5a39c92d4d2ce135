"""The error tree and the error-to-response table."""

from __future__ import annotations

import pytest

from security import errors
from security.api.errors import ERROR_RESPONSES, error_response_for
from security.validation import RULE_MESSAGES


def all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | all_subclasses(sub)
    return found


def test_every_security_error_subclass_is_in_the_response_table() -> None:
    # classes defined in errors.py and any subclass another module defines later
    defined = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.SecurityError)
    }
    missing = (defined | all_subclasses(errors.SecurityError)) - set(ERROR_RESPONSES)
    names = sorted(c.__name__ for c in missing)
    assert not missing, f"add to security.api.errors.ERROR_RESPONSES: {names}"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.AuthenticationError("bad_secret"), 401),
        (errors.AuthenticationError("unknown_key"), 401),
        (errors.ForbiddenError(), 403),
        (errors.NotFoundError("unknown_model"), 404),
        (errors.RateLimitedError(retry_after=3), 429),
        (errors.InvalidPayloadError("outside_envelope"), 422),
        (errors.MalformedBodyError("duplicate_key"), 400),
        (errors.PayloadTooLargeError("too_many_rows"), 413),
        (errors.UnsupportedMediaTypeError(), 415),
        (errors.AdversarialInputError(), 422),
        (errors.StoreUnavailableError(), 503),
        (errors.SecretUnavailableError(), 503),
        (errors.ModelIntegrityError(), 503),
        (errors.ModelUnavailableError(), 503),
    ],
)
def test_each_error_maps_to_its_status(error: errors.SecurityError, status: int) -> None:
    assert error_response_for(error).status == status


def test_every_authentication_failure_reads_the_same_to_the_client() -> None:
    reasons = [
        "missing_credentials",
        "malformed_key",
        "unknown_key",
        "bad_secret",
        "revoked",
        "expired",
    ]
    responses = {error_response_for(errors.AuthenticationError(reason)) for reason in reasons}
    assert len(responses) == 1


def test_validation_messages_name_the_rule_and_nothing_else() -> None:
    error = errors.InvalidPayloadError("outside_envelope", detail="feature=petal_width")
    response = error_response_for(error)
    assert response.message == RULE_MESSAGES["outside_envelope"]
    assert "petal_width" not in response.message and "outside_envelope" not in response.message


def test_public_messages_carry_no_internal_names() -> None:
    for cls, response in ERROR_RESPONSES.items():
        assert cls.__name__ not in response.message
        assert "dynamo" not in response.message.lower() and "Error" not in response.message


def test_an_unavailable_model_has_its_own_public_code_and_no_internals() -> None:
    error = errors.ModelUnavailableError(detail="model=iris: model_hash_mismatch: iris: onnx")
    response = error_response_for(error)
    assert (response.status, response.code) == (503, "model_unavailable")
    assert response.message == "This model is temporarily unavailable."
    assert error.reason == "model_unavailable"
    # no retry hint: it stays unavailable until a fixed artifact is deployed
    assert not hasattr(error, "retry_after")
