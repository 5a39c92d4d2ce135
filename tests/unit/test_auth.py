"""Reading credentials from headers (security.auth): no DynamoDB involved."""

from __future__ import annotations

import pytest

from security.auth import Authenticator, Principal
from security.errors import AuthenticationError
from security.keys import generate_key, hash_secret
from security.settings import RateSpec, Settings


def _authenticator() -> Authenticator:
    return Authenticator(settings=Settings(table_name="t", model_dir="/m"), token_verifier=None)


def test_api_key_header_gives_key_credentials_with_hash_and_fingerprint() -> None:
    parsed, text = generate_key()
    creds = _authenticator().read_credentials({"x-api-key": f"  {text} "})
    assert creds.kind == "api_key" and creds.key_id == parsed.key_id
    assert creds.principal_id == f"key#{parsed.key_id}"
    assert creds.secret_hash == hash_secret(parsed.key_id, parsed.secret)
    assert parsed.secret not in repr(creds) and creds.fingerprint not in text


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_credentials"),
        ({"X-API-Key": "mlmoat_nope"}, "malformed_key"),
        ({"X-API-Key": "x" * 5000}, "malformed_key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "unsupported_scheme"),
        ({"Authorization": "Bearer "}, "unsupported_scheme"),
        ({"Authorization": "Bearer a.b.c"}, "jwt_disabled"),
    ],
)
def test_bad_or_missing_credentials_are_refused_before_any_lookup(
    headers: dict[str, str], reason: str
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        _authenticator().read_credentials(headers)
    assert caught.value.reason == reason


def test_both_credential_kinds_at_once_are_refused() -> None:
    _, text = generate_key()
    with pytest.raises(AuthenticationError) as caught:
        _authenticator().read_credentials({"X-API-Key": text, "Authorization": "Bearer a.b.c"})
    assert caught.value.reason == "ambiguous_credentials"


def test_principal_scopes() -> None:
    def principal(*scopes: str) -> Principal:
        return Principal(
            principal_id="key#x",
            kind="api_key",
            key_id="x",
            subject=None,
            owner="o",
            scopes=frozenset(scopes),
            output_policy="label",
            rate_limit=RateSpec(1, 60),
            budget=1,
        )

    assert principal("predict:*").allows("iris")
    assert principal("predict:iris").allows("iris")
    assert not principal("predict:iris").allows("breast-cancer")
    assert not principal("admin").allows("iris") and principal("admin").is_admin
