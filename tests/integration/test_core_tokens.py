"""Token subjects get their own counters in DynamoDB, exactly like keys (moto server over HTTP,
which also serves SSM for the public key)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import boto3
import jwt
import pytest
from coresupport import make_client, record_calls, settings_for
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mlmoat.local.awsenv import DUMMY_CLIENT_CREDENTIALS
from security.auth import Authenticator
from security.errors import AuthenticationError, ForbiddenError, RateLimitedError
from security.limits import Gatekeeper
from security.store import PrincipalStore
from security.tokens import TokenVerifier

ISSUER = "https://idp.example.test/"
AUDIENCE = "mlmoat"
PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NOW = 1_900_001_030.0


@pytest.fixture()
def stack(core_endpoint: str, core_table: str) -> dict[str, Any]:
    param = f"/mlmoat/{uuid.uuid4().hex}/jwt-public-key"
    ssm = boto3.client(
        "ssm",
        endpoint_url=core_endpoint,
        region_name="us-east-1",
        **DUMMY_CLIENT_CREDENTIALS,
    )
    pem = (
        PRIVATE.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    ssm.put_parameter(Name=param, Value=pem, Type="String")
    settings = settings_for(
        core_table, jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_public_key_parameter=param
    )
    client = make_client(core_endpoint)
    calls = record_calls(client)
    store = PrincipalStore(client=client, table_name=core_table)
    return {
        "store": store,
        "calls": calls,
        "authenticator": Authenticator(
            settings=settings, token_verifier=TokenVerifier(settings=settings, ssm_client=ssm)
        ),
        "gatekeeper": Gatekeeper(store=store, settings=settings, clock=lambda: NOW),
    }


def _bearer(stack: dict[str, Any], subject: str, **extra: Any) -> Any:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "exp": now + 300,
        "scope": "predict:iris",
        **extra,
    }
    token = jwt.encode(claims, PRIVATE, algorithm="RS256")
    return stack["authenticator"].read_credentials({"Authorization": f"Bearer {token}"})


def _admit(stack: dict[str, Any], creds: Any, rows: int = 1, model: str = "iris") -> Any:
    return stack["gatekeeper"].admit(
        creds, model=model, rows=rows, request_id=str(uuid.uuid4()), source_ip="10.9.9.9"
    )


def test_subject_counters_are_created_by_the_first_write_and_budget_binds(
    stack: dict[str, Any],
) -> None:
    subject = f"svc-{uuid.uuid4().hex[:8]}"
    creds = _bearer(stack, subject, **{"mlmoat:budget": 5})
    # when the subject's first request arrives: one write, no read, creates its item
    first = _admit(stack, creds, rows=2)
    assert stack["calls"] == ["UpdateItem"]
    assert first.budget_remaining == 3 and first.principal.subject == subject
    item = stack["store"].get(creds.principal_id)
    assert item["status"] == "active" and item["rows_used"] == 2 and item["kind"] == "jwt"
    # then a fresh token for the same subject shares the counters, and the budget binds
    _admit(stack, _bearer(stack, subject, **{"mlmoat:budget": 5}), rows=3)
    with pytest.raises(RateLimitedError) as caught:
        _admit(stack, creds, rows=1)
    assert caught.value.reason == "budget_exhausted"
    # and another subject has its own counters
    assert (
        _admit(stack, _bearer(stack, subject + "-other", **{"mlmoat:budget": 5})).budget_remaining
        == 4
    )


def test_subject_scope_and_suspension(stack: dict[str, Any]) -> None:
    subject = f"svc-{uuid.uuid4().hex[:8]}"
    creds = _bearer(stack, subject)
    with pytest.raises(ForbiddenError):
        _admit(stack, creds, model="breast-cancer")
    _admit(stack, creds)
    stack["store"].flag_principal(
        creds.principal_id, reason="extraction", suspend=True, now=int(NOW)
    )
    with pytest.raises(AuthenticationError) as caught:
        _admit(stack, _bearer(stack, subject))
    assert caught.value.reason == "suspended"
    with pytest.raises(AuthenticationError):
        stack["gatekeeper"].authenticate(creds, model="iris", source_ip="10.9.9.9")
    assert stack["store"].get(creds.principal_id)["rows_used"] == 1


def test_bad_signature_tokens_are_guesses_the_throttle_counts(stack: dict[str, Any]) -> None:
    # Given tokens signed by a key that is not the issuer's (30 of them, from one address:
    # the outside test found none of them counted)
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-x", "exp": int(time.time()) + 300}
    token = jwt.encode({**claims, "scope": "predict:iris"}, forger, algorithm="RS256")
    answers = []
    for _ in range(30):
        try:
            stack["authenticator"].read_credentials({"Authorization": f"Bearer {token}"})
        except AuthenticationError as exc:
            assert exc.reason == "bad_signature"
            answers.append(
                type(stack["gatekeeper"].credential_failure(exc, source_ip="10.7.7.7")).__name__
            )
    # Then the first 20 are 401s and from the 21st on the address is throttled (429)
    assert answers == ["AuthenticationError"] * 20 + ["RateLimitedError"] * 10
    # and a well-signed token from another address is still served
    _admit(stack, _bearer(stack, f"svc-{uuid.uuid4().hex[:8]}"))
