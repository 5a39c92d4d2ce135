"""JWT bearer tokens: asymmetric verification with PyJWT, the public key from SSM Parameter Store.

Rules (OWASP JWT cheat sheet): the accepted algorithms are an explicit allow-list from settings,
asymmetric only (``none`` and every HS* are refused before any key is fetched, so an HS256 token
"signed" with our RSA public key as an HMAC secret is refused); the allow-list is further narrowed
to the family of the key actually configured (an RSA key never verifies an ES256 header and vice
versa); ``exp``, ``iss``, ``aud`` and ``sub`` are required; ``nbf`` and ``exp`` are honoured with
``settings.jwt_leeway_seconds``. Scopes come from ``scope`` (space separated) or ``scp`` (a list
or a space separated string); a token with neither is refused.

Optional policy claims let the issuer narrow a subject's limits, never widen them beyond
settings: ``mlmoat:rate_limit`` (``"30/minute"``; replaced by ``settings.default_rate_limit``
unless its window is no longer than the default's, divides it, and allows no more rows in any
default window), ``mlmoat:budget`` (rows; clamped to ``settings.default_budget``) and
``mlmoat:output`` (an output policy; replaced by the default unless it reveals no more than the
default in the order of ``security.policy``: decimals, top-k, threshold, label).

The PEM public key is read through Powertools Parameters (``SSMProvider`` on the client we are
given), cached for ``settings.jwt_secret_max_age_seconds``; when it cannot be fetched the request
fails closed with ``SecretUnavailableError`` (503).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from aws_lambda_powertools.utilities.parameters import SSMProvider
from aws_lambda_powertools.utilities.parameters.exceptions import (
    GetParameterError,
    TransformParameterError,
)
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from security.errors import AuthenticationError, SecretUnavailableError
from security.policy import narrower_policy, rate_within
from security.settings import RateSpec, Settings
from security.store import issuer_hash as issuer_hash  # re-exported
from security.store import subject_pk

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

MAX_TOKEN_LENGTH = 8192
MAX_SUBJECT_LENGTH = 256
OUTPUT_CLAIM = "mlmoat:output"
RATE_CLAIM = "mlmoat:rate_limit"
BUDGET_CLAIM = "mlmoat:budget"
_FAMILIES = {
    "rsa": frozenset({"RS256", "RS384", "RS512", "PS256"}),
    "ec": frozenset({"ES256", "ES384", "ES512"}),
    "ed": frozenset({"EdDSA"}),
}


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says about its subject (already bounded by settings)."""

    issuer: str
    subject: str
    scopes: frozenset[str]
    expires_at: int
    output_policy: str
    rate_limit: RateSpec
    budget: int | None

    @property
    def principal_id(self) -> str:
        """``sub#<issuer-hash>#<subject>``: the subject's item in the security table."""
        return subject_pk(self.issuer, self.subject)


def _lifetime_exceeded(claims: dict[str, Any], *, now: float, max_lifetime: int) -> bool:
    # A token good for ten years (or until 1e300) is a credential nobody can take back; the cap
    # holds from now (no iat needed) and, when iat is given, over the token's whole life.
    expires = claims["exp"]
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        return True
    issued = claims.get("iat")
    span = 0.0
    if isinstance(issued, int | float) and not isinstance(issued, bool):
        span = expires - issued
    return bool(expires - now > max_lifetime or span > max_lifetime)


def bound_output_policy(claimed: str | None, default: str) -> str:
    """The claimed output policy if it reveals no more than the default, else the default."""
    return narrower_policy(claimed, default)


def bound_rate(claimed: str | None, default: RateSpec) -> RateSpec:
    """The claimed rate limit if it allows no more rows in any default window, else the default."""
    if claimed is None:
        return default
    try:
        spec = RateSpec.parse(claimed)
    except ValueError:
        return default
    if not rate_within(spec.count, spec.window_seconds, default.count, default.window_seconds):
        return default
    return spec


def bound_budget(claimed: object, default: int) -> int:
    """The claimed budget if a positive integer no larger than the default, else the default."""
    if isinstance(claimed, bool) or not isinstance(claimed, int) or not 0 < claimed <= default:
        return default
    return claimed


def _scopes(claims: dict[str, Any]) -> frozenset[str] | None:
    raw = claims.get("scope", claims.get("scp"))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return frozenset(s for s in raw if s)
    return None


class TokenVerifier:
    """Verifies bearer JWTs against the issuer's public key held in SSM Parameter Store."""

    def __init__(
        self,
        *,
        settings: Settings,
        ssm_client: SSMClient | None = None,
        provider: SSMProvider | None = None,
    ) -> None:
        if not settings.jwt_enabled:
            raise ValueError("JWT settings (issuer, audience, key parameter) are not configured")
        self._settings = settings
        self._provider = provider or SSMProvider(boto3_client=ssm_client)
        self._key_cache: tuple[str, Any, frozenset[str]] | None = None

    def _public_key(self) -> tuple[Any, frozenset[str]]:
        name = self._settings.jwt_public_key_parameter or ""
        try:
            pem = self._provider.get(
                name, max_age=self._settings.jwt_secret_max_age_seconds, decrypt=True
            )
        except (GetParameterError, TransformParameterError) as exc:
            raise SecretUnavailableError(detail="jwt public key parameter") from exc
        if isinstance(pem, bytes):
            pem = pem.decode("utf-8")
        if not isinstance(pem, str):
            raise SecretUnavailableError(detail="jwt public key parameter is not text")
        if self._key_cache is not None and self._key_cache[0] == pem:
            return self._key_cache[1], self._key_cache[2]
        try:
            key = load_pem_public_key(pem.encode("utf-8"))
        except ValueError as exc:
            raise SecretUnavailableError(detail="jwt public key is not a PEM public key") from exc
        if isinstance(key, rsa.RSAPublicKey):
            family = _FAMILIES["rsa"]
        elif isinstance(key, ec.EllipticCurvePublicKey):
            family = _FAMILIES["ec"]
        elif isinstance(key, ed25519.Ed25519PublicKey):
            family = _FAMILIES["ed"]
        else:
            raise SecretUnavailableError(detail="jwt public key type is not supported")
        allowed = family & frozenset(self._settings.jwt_algorithms)
        self._key_cache = (pem, key, allowed)
        return key, allowed

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        settings = self._settings
        limit = settings.jwt_max_lifetime_seconds + settings.jwt_leeway_seconds
        if _lifetime_exceeded(claims, now=time.time(), max_lifetime=limit):
            raise AuthenticationError("token_lifetime_exceeded")

    def verify(self, token: str) -> TokenClaims:
        """Verify a compact JWS and return its bounded claims.

        Raises:
            AuthenticationError: the token is malformed, uses a refused algorithm, has a bad
                signature, is expired or not yet valid, has the wrong issuer or audience, lacks a
                required claim or carries no scope (reasons: ``invalid_token``,
                ``invalid_algorithm``, ``expired_token``, ``token_not_yet_valid``, ...).
            SecretUnavailableError: the public key could not be fetched or parsed.
        """
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise AuthenticationError("invalid_token", detail="not a compact JWS")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError("invalid_token", detail="unreadable header") from exc
        alg = header.get("alg")
        # Refuse none/HS*/unknown before fetching any key: no key material ever meets them.
        if not isinstance(alg, str) or alg not in self._settings.jwt_algorithms:
            raise AuthenticationError("invalid_algorithm")
        key, allowed = self._public_key()
        if alg not in allowed:
            raise AuthenticationError("invalid_algorithm", detail="algorithm does not match key")
        settings = self._settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=sorted(allowed),
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                leeway=settings.jwt_leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_nbf": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("expired_token") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthenticationError("token_not_yet_valid") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthenticationError("invalid_audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthenticationError("invalid_issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError("missing_claim", detail=exc.claim) from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthenticationError("bad_signature") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationError("invalid_token", detail=type(exc).__name__) from exc
        self._check_lifetime(claims)
        subject = claims["sub"]
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_LENGTH:
            raise AuthenticationError("invalid_token", detail="bad subject")
        scopes = _scopes(claims)
        if not scopes:
            raise AuthenticationError("missing_scope")
        output = claims.get(OUTPUT_CLAIM)
        rate = claims.get(RATE_CLAIM)
        return TokenClaims(
            issuer=str(claims["iss"]),
            subject=subject,
            scopes=scopes,
            expires_at=int(claims["exp"]),
            output_policy=bound_output_policy(
                output if isinstance(output, str) else None, settings.default_output_policy
            ),
            rate_limit=bound_rate(
                rate if isinstance(rate, str) else None, settings.default_rate_limit
            ),
            budget=bound_budget(claims.get(BUDGET_CLAIM), settings.default_budget),
        )
