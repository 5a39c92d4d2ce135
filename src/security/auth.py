"""Credentials from request headers, and the authenticated ``Principal``.

``Authenticator.read_credentials`` does everything that needs no DynamoDB: it reads ``X-API-Key``
or ``Authorization: Bearer <JWT>``, checks the key's format and checksum (a malformed key is
refused with no DynamoDB call) and hashes its secret, or verifies the token's signature and
claims. Looking the principal up, checking its status and counting are ``limits.Gatekeeper``'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from security.errors import AuthenticationError
from security.keys import MalformedKeyError, fingerprint, hash_secret, parse_key
from security.policy import is_output_policy
from security.records import KeyRecord, key_pk
from security.settings import RateSpec, Settings

if TYPE_CHECKING:
    # PyJWT and cryptography cost ~80 ms of cold start: only ``security.wiring`` imports
    # ``security.tokens``, and only when JWT is enabled.
    from security.tokens import TokenClaims, TokenVerifier

ADMIN_SCOPE = "admin"
PREDICT_ALL_SCOPE = "predict:*"
MAX_API_KEY_HEADER = 256

PrincipalKind = Literal["api_key", "jwt"]


_CREDENTIAL_HEADERS = frozenset({"x-api-key", "authorization"})


def _refuse_repeated_credentials(event: Mapping[str, Any]) -> None:
    # API Gateway hands over header names as the client sent them; Mangum folds names that
    # differ only in case into one (the last wins) before the app sees them. So the raw event's
    # ``headers`` / ``multiValueHeaders`` are checked here: a credential header named twice, or
    # with two values, is ambiguous.
    for section in ("headers", "multiValueHeaders"):
        names = [str(name).lower() for name in (event.get(section) or {})]
        if any(names.count(name) > 1 for name in _CREDENTIAL_HEADERS):
            raise AuthenticationError("ambiguous_credentials")
    for name, values in (event.get("multiValueHeaders") or {}).items():
        repeated = isinstance(values, list) and len(values) > 1
        if repeated and str(name).lower() in _CREDENTIAL_HEADERS:
            raise AuthenticationError("ambiguous_credentials")


@dataclass(frozen=True, slots=True)
class Credentials:
    """Presented and syntactically valid credentials; nothing looked up yet."""

    kind: PrincipalKind
    principal_id: str
    key_id: str | None
    subject: str | None
    fingerprint: str
    secret_hash: str | None = field(default=None, repr=False)
    claims: TokenClaims | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller with its configuration (scopes, limits, output policy)."""

    principal_id: str
    kind: PrincipalKind
    key_id: str | None
    subject: str | None
    owner: str | None
    scopes: frozenset[str]
    output_policy: str
    rate_limit: RateSpec
    budget: int | None
    config_version: int = 0
    expires_at: int | None = None
    shards: int = 1

    def allows(self, model: str) -> bool:
        """Whether the principal may predict with ``model`` (``admin`` alone does not predict)."""
        return PREDICT_ALL_SCOPE in self.scopes or f"predict:{model}" in self.scopes

    @property
    def is_admin(self) -> bool:
        """Whether the principal carries the ``admin`` scope."""
        return ADMIN_SCOPE in self.scopes


def principal_from_key(record: KeyRecord, *, settings: Settings) -> Principal:
    """Build an API key's principal from its record (defaults from settings)."""
    policy = record.output_policy
    return Principal(
        principal_id=record.principal_id,
        kind="api_key",
        key_id=record.key_id,
        subject=None,
        owner=record.owner,
        scopes=record.scopes,
        output_policy=policy
        if policy is not None and is_output_policy(policy)
        else settings.default_output_policy,
        rate_limit=record.rate_limit or settings.default_rate_limit,
        budget=record.budget,
        config_version=record.config_version,
        expires_at=record.expires_at,
        shards=record.shards,
    )


def principal_from_claims(claims: TokenClaims) -> Principal:
    """Build a token subject's principal from its verified, bounded claims."""
    return Principal(
        principal_id=claims.principal_id,
        kind="jwt",
        key_id=None,
        subject=claims.subject,
        owner=claims.issuer,
        scopes=claims.scopes,
        output_policy=claims.output_policy,
        rate_limit=claims.rate_limit,
        budget=claims.budget,
        expires_at=claims.expires_at,
    )


class Authenticator:
    """Reads credentials from headers; verifies what can be verified without DynamoDB."""

    def __init__(self, *, settings: Settings, token_verifier: TokenVerifier | None) -> None:
        self._settings = settings
        self._verifier = token_verifier

    def read_credentials(
        self, headers: Mapping[str, str], *, event: Mapping[str, Any] | None = None
    ) -> Credentials:
        """Parse ``X-API-Key`` or ``Authorization: Bearer`` into ``Credentials``.

        Raises:
            AuthenticationError: no credentials (``missing_credentials``), both kinds at once
                or one header twice in any case (``ambiguous_credentials``), a malformed key
                (``malformed_key``), an unsupported scheme (``unsupported_scheme``), bearer
                tokens not enabled (``jwt_disabled``) or an
                invalid token (see ``TokenVerifier.verify``).
            SecretUnavailableError: the JWT verification key could not be fetched.
        """
        if isinstance(event, Mapping):
            _refuse_repeated_credentials(event)
        lowered: dict[str, str] = {}
        for name, value in headers.items():
            name = name.lower()
            # Two credential headers of one name (in any case) are ambiguous: refusing them is
            # safer than letting whichever came last silently win.
            if name in _CREDENTIAL_HEADERS and name in lowered:
                raise AuthenticationError("ambiguous_credentials")
            lowered[name] = value
        api_key = lowered.get("x-api-key")
        authorization = lowered.get("authorization")
        if api_key is not None and authorization is not None:
            raise AuthenticationError("ambiguous_credentials")
        if api_key is not None:
            return self._read_key(api_key.strip())
        if authorization is not None:
            return self._read_bearer(authorization.strip())
        raise AuthenticationError("missing_credentials")

    def _read_key(self, text: str) -> Credentials:
        if len(text) > MAX_API_KEY_HEADER:
            raise AuthenticationError("malformed_key")
        try:
            parsed = parse_key(text)
        except MalformedKeyError as exc:
            raise AuthenticationError("malformed_key") from exc
        return Credentials(
            kind="api_key",
            principal_id=key_pk(parsed.key_id),
            key_id=parsed.key_id,
            subject=None,
            fingerprint=fingerprint(text),
            secret_hash=hash_secret(parsed.key_id, parsed.secret),
        )

    def _read_bearer(self, value: str) -> Credentials:
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("unsupported_scheme")
        if self._verifier is None:
            raise AuthenticationError("jwt_disabled")
        token = token.strip()
        claims = self._verifier.verify(token)
        return Credentials(
            kind="jwt",
            principal_id=claims.principal_id,
            key_id=None,
            subject=claims.subject,
            fingerprint=fingerprint(token),
            claims=claims,
        )
