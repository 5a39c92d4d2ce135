"""The error table: every ``SecurityError`` class and refusal reason, and how it is answered.

One table for every API function: the prediction API, the admin API and any function built on
the same shell answer a refusal with the same status, public code and generic message. The real
reason of a refusal goes to the audit record, never to the client. The OpenAPI document's
status table (``security.api.openapi``) is generated from these tables, so it cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from security.errors import (
    AdversarialInputError,
    AuthenticationError,
    ConflictError,
    DependencyUnavailableError,
    ForbiddenError,
    InvalidPayloadError,
    MalformedBodyError,
    ModelIntegrityError,
    ModelUnavailableError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    RuntimeConfigUnavailableError,
    SecretUnavailableError,
    SecurityError,
    StoreUnavailableError,
    UnsupportedMediaTypeError,
)
from security.validation import RULE_MESSAGES


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """How one error class is answered: status, public code and one generic message."""

    status: int
    code: str
    message: str


_UNAVAILABLE = ErrorResponse(503, "service_unavailable", "The service is temporarily unavailable.")
INTERNAL = ErrorResponse(500, "internal_error", "The request failed.")

#: Every ``SecurityError`` class, mapped to its response. A test pins that none is missing.
ERROR_RESPONSES: dict[type[SecurityError], ErrorResponse] = {
    SecurityError: INTERNAL,
    AuthenticationError: ErrorResponse(401, "unauthenticated", "Missing or invalid credentials."),
    ForbiddenError: ErrorResponse(
        403, "forbidden", "These credentials are not allowed to use this model."
    ),
    NotFoundError: ErrorResponse(404, "not_found", "No such model or route."),
    ConflictError: ErrorResponse(
        409, "conflict", "The change conflicts with the key's current state."
    ),
    RateLimitedError: ErrorResponse(
        429, "rate_limited", "The rate limit or query budget is exhausted."
    ),
    InvalidPayloadError: ErrorResponse(
        422, "invalid_features", "The features broke a validation rule."
    ),
    MalformedBodyError: ErrorResponse(
        400, "malformed_body", "The request body is not a well-formed JSON object."
    ),
    PayloadTooLargeError: ErrorResponse(
        413, "payload_too_large", "The request is larger than this API accepts."
    ),
    UnsupportedMediaTypeError: ErrorResponse(
        415, "unsupported_media_type", "The request body must be application/json."
    ),
    AdversarialInputError: ErrorResponse(422, "input_refused", "The input was refused."),
    DependencyUnavailableError: _UNAVAILABLE,
    StoreUnavailableError: _UNAVAILABLE,
    SecretUnavailableError: _UNAVAILABLE,
    RuntimeConfigUnavailableError: _UNAVAILABLE,
    ModelIntegrityError: _UNAVAILABLE,
    # One model failed verification at init; the others are served. No Retry-After: it stays
    # unavailable until a fixed artifact is deployed.
    ModelUnavailableError: ErrorResponse(
        503, "model_unavailable", "This model is temporarily unavailable."
    ),
}

#: The prediction API's refusals in words of their own (reason -> response).
PREDICT_REASON_RESPONSES: dict[str, ErrorResponse] = {
    "budget_exhausted": ErrorResponse(
        429, "budget_exhausted", "The query budget of these credentials is used up."
    ),
    "refusal_limit": ErrorResponse(
        429, "rate_limited", "Too many refused requests from these credentials; retry later."
    ),
}
#: The admin API's refusals in admin wording (reason -> response).
ADMIN_REASON_RESPONSES: dict[str, ErrorResponse] = {
    "iam_identity_required": ErrorResponse(
        403, "forbidden", "Only a signed IAM identity may administer keys."
    ),
    "unknown_key": ErrorResponse(404, "not_found", "No such key."),
    "unknown_subject": ErrorResponse(404, "not_found", "No such token subject."),
    "key_exists": ErrorResponse(409, "conflict", "A key with this id already exists."),
    "invalid_transition": ErrorResponse(
        409, "conflict", "The key's current status does not allow this change."
    ),
    **{
        reason: ErrorResponse(422, "invalid_request", message)
        for reason, message in {
            "invalid_admin_request": "The request body broke a rule of the admin API.",
            "invalid_owner": "The owner is not valid.",
            "invalid_scope": "A scope is not valid.",
            "invalid_rate_limit": "The rate limit is not valid.",
            "invalid_budget": "The budget is not valid.",
            "invalid_output_policy": "The output policy is not valid.",
            "invalid_duration": "The duration is not valid.",
            "invalid_shards": "The shard count is not valid.",
            "invalid_key_id": "The key id is not valid.",
            "invalid_subject": "The token subject is not valid.",
            "issuer_required": "No token issuer is configured.",
            "scope_not_grantable": "A scope is not one an admin may grant.",
            "rate_limit_over_cap": "The rate limit is above the cap for keys.",
            "budget_over_cap": "The budget is above the cap for keys.",
            "output_policy_over_cap": "The output policy reveals more than keys may.",
            "lifetime_over_cap": "The lifetime is above the cap for keys.",
        }.items()
    },
}
#: Every reason with words of its own; used when its status agrees with the class's entry.
REASON_RESPONSES: dict[str, ErrorResponse] = {**PREDICT_REASON_RESPONSES, **ADMIN_REASON_RESPONSES}

#: Starlette's own refusals (routing), by status: the audit reason and the response.
HTTP_RESPONSES: dict[int, tuple[str, ErrorResponse]] = {
    404: ("route_not_found", ErrorResponse(404, "not_found", "No such model or route.")),
    405: (
        "method_not_allowed",
        ErrorResponse(405, "method_not_allowed", "This method is not allowed on this route."),
    ),
}
#: A request that does not match a route's declared parameters (FastAPI's own 422, which would
#: echo the input and pydantic's internals).
REQUEST_MISMATCH = ErrorResponse(422, "invalid_request", "The request does not match the API.")
MALFORMED_HEADER = ErrorResponse(400, "malformed_header", "The request's headers are malformed.")


def error_response_for(exc: SecurityError) -> ErrorResponse:
    """The response of an error: its class's entry (nearest base), with the rule's message."""
    for cls in type(exc).__mro__:
        entry = ERROR_RESPONSES.get(cls)
        if entry is not None:
            break
    else:  # pragma: no cover - SecurityError itself is in the table
        entry = INTERNAL
    own = REASON_RESPONSES.get(exc.reason)
    if own is not None and own.status == entry.status:
        return own
    if isinstance(exc, InvalidPayloadError) and exc.reason in RULE_MESSAGES:
        return ErrorResponse(entry.status, entry.code, RULE_MESSAGES[exc.reason])
    return entry
