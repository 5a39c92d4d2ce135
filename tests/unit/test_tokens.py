"""JWT verification (security.tokens) with the public key in SSM (moto in-process)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from moto import mock_aws

from mlmoat.local.awsenv import DUMMY_CLIENT_CREDENTIALS
from security.auth import Authenticator
from security.errors import AuthenticationError, SecretUnavailableError
from security.settings import RateSpec, Settings
from security.tokens import TokenVerifier, issuer_hash

ISSUER = "https://issuer.example.test/"
AUDIENCE = "mlmoat-api"
PARAM = "/mlmoat/test/jwt-public-key"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _pem(private: Any) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


class SsmCalls:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, **_: Any) -> None:
        self.count += 1


@pytest.fixture(scope="module")
def ssm() -> Iterator[Any]:
    # one in-process moto for the module (starting it per test costs ~1 s each)
    with mock_aws():
        yield boto3.client(
            "ssm",
            region_name="us-east-1",
            **DUMMY_CLIENT_CREDENTIALS,
        )


def _settings(**kw: Any) -> Settings:
    base: dict[str, Any] = dict(
        table_name="t",
        model_dir="/m",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_public_key_parameter=PARAM,
        default_rate_limit=RateSpec(60, 60),
        default_budget=1000,
        default_output_policy="probabilities:2",
    )
    base.update(kw)
    return Settings(**base)


def _verifier(ssm: Any, private: Any = RSA_KEY, **kw: Any) -> TokenVerifier:
    ssm.put_parameter(Name=PARAM, Value=_pem(private), Type="String", Overwrite=True)
    return TokenVerifier(settings=_settings(**kw), ssm_client=ssm)


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "svc-42",
        "iat": now,
        "exp": now + 300,
        "scope": "predict:iris predict:breast-cancer",
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _token(private: Any = RSA_KEY, alg: str = "RS256", **over: Any) -> str:
    return jwt.encode(_claims(**over), private, algorithm=alg)


def _reason(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(token)
    return caught.value.reason


def test_valid_rs256_token_gives_bounded_claims(ssm: Any) -> None:
    claims = _verifier(ssm).verify(_token())
    assert claims.subject == "svc-42" and claims.issuer == ISSUER
    assert claims.scopes == {"predict:iris", "predict:breast-cancer"}
    assert claims.principal_id == f"sub#{issuer_hash(ISSUER)}#svc-42"
    assert (claims.output_policy, claims.rate_limit, claims.budget) == (
        "probabilities:2",
        RateSpec(60, 60),
        1000,
    )


def test_valid_es256_token_with_an_ec_key(ssm: Any) -> None:
    assert _verifier(ssm, EC_KEY).verify(_token(EC_KEY, "ES256")).subject == "svc-42"


def test_expired_token_is_refused(ssm: Any) -> None:
    past = int(time.time()) - 120
    assert _reason(_verifier(ssm), _token(exp=past)) == "expired_token"


def test_not_yet_valid_token_is_refused_but_leeway_is_honoured(ssm: Any) -> None:
    verifier = _verifier(ssm, jwt_leeway_seconds=30)
    assert _reason(verifier, _token(nbf=int(time.time()) + 120)) == "token_not_yet_valid"
    assert verifier.verify(_token(nbf=int(time.time()) + 10)).subject == "svc-42"


def test_wrong_audience_or_issuer_is_refused(ssm: Any) -> None:
    verifier = _verifier(ssm)
    assert _reason(verifier, _token(aud="someone-else")) == "invalid_audience"
    assert _reason(verifier, _token(iss="https://evil.example.test/")) == "invalid_issuer"


@pytest.mark.parametrize("claim", ["exp", "aud", "iss", "sub"])
def test_required_claims(ssm: Any, claim: str) -> None:
    reason = _reason(_verifier(ssm), _token(**{claim: None}))
    assert reason == "missing_claim"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_alg_none_is_refused(ssm: Any) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    assert _reason(_verifier(ssm), f"{header}.{payload}.") == "invalid_algorithm"


def test_hs256_token_signed_with_the_rsa_public_key_is_refused(ssm: Any) -> None:
    # the classic key-confusion attack: HMAC "signed" with the public PEM as the secret
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(scope="predict:* admin")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(_pem(RSA_KEY).encode(), signing_input, hashlib.sha256).digest()
    assert _reason(_verifier(ssm), f"{header}.{payload}.{_b64(signature)}") == "invalid_algorithm"


def test_algorithm_must_match_the_configured_key_family(ssm: Any) -> None:
    # an ES256 token while the configured key is RSA: refused, never tried
    assert _reason(_verifier(ssm), _token(EC_KEY, "ES256")) == "invalid_algorithm"


def test_tampered_payload_or_signature_is_refused(ssm: Any) -> None:
    verifier = _verifier(ssm)
    header, payload, signature = _token().split(".")
    forged = _b64(json.dumps(_claims(sub="admin-user")).encode())
    assert _reason(verifier, f"{header}.{forged}.{signature}") == "bad_signature"
    flipped = signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")
    assert _reason(verifier, f"{header}.{payload}.{flipped}") == "bad_signature"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert _reason(verifier, _token(other)) == "bad_signature"


def test_missing_scope_is_refused_and_scp_is_accepted(ssm: Any) -> None:
    verifier = _verifier(ssm)
    assert _reason(verifier, _token(scope=None)) == "missing_scope"
    assert _reason(verifier, _token(scope="")) == "missing_scope"
    assert verifier.verify(_token(scope=None, scp=["predict:iris"])).scopes == {"predict:iris"}


def test_policy_claims_can_narrow_but_never_widen(ssm: Any) -> None:
    verifier = _verifier(ssm)
    narrow = verifier.verify(
        _token(**{"mlmoat:rate_limit": "10/minute", "mlmoat:budget": 50, "mlmoat:output": "label"})
    )
    assert (narrow.rate_limit, narrow.budget, narrow.output_policy) == (
        RateSpec(10, 60),
        50,
        "label",
    )
    wide = verifier.verify(
        _token(
            **{
                "mlmoat:rate_limit": "1000/second",
                "mlmoat:budget": 10**9,
                "mlmoat:output": "probabilities:6",
            }
        )
    )
    assert (wide.rate_limit, wide.budget, wide.output_policy) == (
        RateSpec(60, 60),
        1000,
        "probabilities:2",
    )


def test_public_key_is_cached_for_max_age(ssm: Any) -> None:
    verifier = _verifier(ssm, jwt_secret_max_age_seconds=300)
    calls = SsmCalls()
    ssm.meta.events.register("before-call.ssm.GetParameter", calls)
    for _ in range(5):
        verifier.verify(_token())
    assert calls.count == 1


def test_unavailable_key_fails_closed(ssm: Any) -> None:
    missing = "/mlmoat/test/never-created"
    verifier = TokenVerifier(settings=_settings(jwt_public_key_parameter=missing), ssm_client=ssm)
    with pytest.raises(SecretUnavailableError):
        verifier.verify(_token())
    # a refused algorithm is refused before the key is even fetched
    assert _reason(verifier, "eyJhbGciOiJub25lIn0.e30.") == "invalid_algorithm"


def test_bearer_header_through_the_authenticator(ssm: Any) -> None:
    verifier = _verifier(ssm)
    authenticator = Authenticator(settings=_settings(), token_verifier=verifier)
    token = _token()
    creds = authenticator.read_credentials({"Authorization": f"Bearer {token}"})
    assert creds.kind == "jwt" and creds.subject == "svc-42" and creds.key_id is None
    assert creds.fingerprint not in token and creds.claims is not None
    with pytest.raises(AuthenticationError):
        authenticator.read_credentials({"Authorization": "Bearer not-a-token"})


def test_a_token_living_longer_than_the_cap_is_refused(ssm: Any) -> None:
    verifier = _verifier(ssm, jwt_max_lifetime_seconds=3600)
    now = int(time.time())
    # Ten years out, 1e300 (a float PyJWT accepts), and an hour's cap exceeded by a day's iat span
    assert _reason(verifier, _token(exp=now + 10 * 365 * 86400)) == "token_lifetime_exceeded"
    assert _reason(verifier, _token(exp=1e300)) == "token_lifetime_exceeded"
    assert _reason(verifier, _token(iat=now - 86400, exp=now + 60)) == "token_lifetime_exceeded"
    # Within the cap it is accepted
    assert verifier.verify(_token(iat=now, exp=now + 3000)).subject == "svc-42"
