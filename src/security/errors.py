"""The exception hierarchy of the security layer, and nothing else.

::

    SecurityError
    ├── AuthenticationError        missing/malformed/unknown/expired/revoked credentials   401
    ├── ForbiddenError             valid credentials without the model's scope             403
    ├── NotFoundError              unknown model or route                                  404
    ├── ConflictError              an admin change the target's state forbids (key_exists,
    │                              invalid_transition)                                     409
    ├── RateLimitedError           rate window or budget exhausted; retry_after or None    429
    ├── InvalidPayloadError        the request body broke a rule                           422
    │   ├── MalformedBodyError     not JSON, duplicate keys, wrong root type                400
    │   ├── PayloadTooLargeError   body or batch over its cap                              413
    │   └── UnsupportedMediaTypeError  not application/json                                415
    ├── AdversarialInputError      refused by the squeezing detector                       422
    ├── DependencyUnavailableError a dependency failed; fail closed; carries retry_after   503
    │   ├── StoreUnavailableError  DynamoDB
    │   ├── SecretUnavailableError the JWT verification key (SSM / Secrets Manager)
    │   └── RuntimeConfigUnavailableError  the runtime defences document (SSM): unreadable
    │                              with nothing read before, or malformed (never "unset")
    ├── ModelIntegrityError        a model's artifact, manifest or defences fail a check (the
    │                              model is not served)
    └── ModelUnavailableError      a request for a model that failed verification at init   503

Every error carries ``reason``: a short machine code for the audit log (never sent to the
client), an optional ``detail`` for the log, and ``headers``: extra response headers such as
``RateLimit`` on an authenticated refusal. ``integration`` maps each class to a status and
one generic public message.
"""

from __future__ import annotations


class SecurityError(Exception):
    """Base of every error raised by the security layer."""

    default_reason = "security_error"

    def __init__(self, reason: str | None = None, *, detail: str | None = None) -> None:
        self.reason = reason or self.default_reason
        self.detail = detail
        # Extra response headers (e.g. RateLimit on an authenticated refusal); never secrets.
        self.headers: dict[str, str] = {}
        super().__init__(self.reason if detail is None else f"{self.reason}: {detail}")


class AuthenticationError(SecurityError):
    """Credentials are missing, malformed, unknown, expired, suspended or revoked."""

    default_reason = "unauthenticated"


class ForbiddenError(SecurityError):
    """Credentials are valid but do not carry the scope the request needs."""

    default_reason = "forbidden_scope"


class NotFoundError(SecurityError):
    """The route or model does not exist."""

    default_reason = "not_found"


class ConflictError(SecurityError):
    """An admin change conflicts with the target's state (e.g. reinstating a revoked key)."""

    default_reason = "conflict"


class RateLimitedError(SecurityError):
    """A rate window, a budget or the failed-authentication throttle is exhausted."""

    default_reason = "rate_limited"

    def __init__(
        self, reason: str | None = None, *, retry_after: int | None, detail: str | None = None
    ) -> None:
        super().__init__(reason, detail=detail)
        # None: the limit never resets (a budget is the rows a key may ever predict).
        self.retry_after = None if retry_after is None else max(1, int(retry_after))


class InvalidPayloadError(SecurityError):
    """The request body broke a validation rule; ``reason`` names the rule, never a value."""

    default_reason = "invalid_features"


class MalformedBodyError(InvalidPayloadError):
    """The body is not a well-formed JSON document of the expected shape."""

    default_reason = "malformed_body"


class PayloadTooLargeError(InvalidPayloadError):
    """The body or the batch is larger than its cap."""

    default_reason = "payload_too_large"


class UnsupportedMediaTypeError(InvalidPayloadError):
    """The request does not declare a JSON content type."""

    default_reason = "unsupported_media_type"


class AdversarialInputError(SecurityError):
    """The squeezing detector judged the input adversarial and the policy is to refuse."""

    default_reason = "adversarial_input"


class DependencyUnavailableError(SecurityError):
    """A dependency failed; the request is refused rather than served uncounted."""

    default_reason = "dependency_unavailable"

    def __init__(
        self, reason: str | None = None, *, retry_after: int = 1, detail: str | None = None
    ) -> None:
        super().__init__(reason, detail=detail)
        self.retry_after = max(1, int(retry_after))


class StoreUnavailableError(DependencyUnavailableError):
    """DynamoDB could not be reached, throttled us or answered with an error."""

    default_reason = "store_unavailable"


class SecretUnavailableError(DependencyUnavailableError):
    """The JWT verification key could not be fetched."""

    default_reason = "secret_unavailable"


class RuntimeConfigUnavailableError(DependencyUnavailableError):
    """The runtime defences document could not be read, or is malformed (fail closed)."""

    default_reason = "runtime_config_unavailable"


class ModelIntegrityError(SecurityError):
    """A model's artifact, manifest or defences file fails a check: that model is not served."""

    default_reason = "model_integrity"


class ModelUnavailableError(SecurityError):
    """The request names a model that failed verification at init (``ModelIntegrityError``).

    Its ``detail`` names the model and the check it failed (audit only); no ``retry_after``:
    the model stays unavailable until a fixed artifact is deployed.
    """

    default_reason = "model_unavailable"
