"""Secrets unavailable, end to end: the JWT verification key in SSM is missing or unreachable.

``PredictFunction`` runs under ``start-api`` with JWT bearer tokens enabled; its SSM endpoint is
a second fault proxy in front of the moto server. A bearer request whose key cannot be fetched
must fail closed with 503 and ``Retry-After`` (an outage is not a bad token: never 401), leave
one audit record and count nothing; API-key requests on the same instance keep working, and
tokens work again once the parameter is back.

An instance caches the key it fetched (``SECURITY_JWT_KEY_MAX_AGE_SECONDS``, 300 s by default)
and never caches a failure, so the outage tests run first, on an instance that has never
fetched the key, and the last test shows a cached key riding out an outage. The tests of this
module therefore run in file order (pytest's default).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from faultproxy import FaultProxy
from faultstack import Api, FaultStack, Response

ROW = {"features": [5.1, 3.5, 1.4, 0.2]}
ISSUER = "https://issuer.faults.test"
AUDIENCE = "mlmoat-faults"
PARAMETER = f"/mlmoat/faults/jwt-{uuid.uuid4().hex[:8]}"
PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = (
    PRIVATE_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def _token(subject: str) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": now,
        "exp": now + 300,
        "scope": "predict:iris",
    }
    return jwt.encode(claims, PRIVATE_KEY, algorithm="RS256")


@pytest.fixture(scope="module")
def ssm_proxy(fault_stack: FaultStack) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_port=fault_stack.moto_port)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def api(fault_stack: FaultStack, ssm_proxy: FaultProxy) -> Api:
    fault_stack.client("ssm").put_parameter(Name=PARAMETER, Value=PUBLIC_PEM, Type="String")
    return fault_stack.start_api(
        "secrets-faults",
        extra_env={"AWS_ENDPOINT_URL_SSM": ssm_proxy.endpoint},
        function_env={
            "SECURITY_JWT_ISSUER": ISSUER,
            "SECURITY_JWT_AUDIENCE": AUDIENCE,
            "SECURITY_JWT_PUBLIC_KEY_PARAMETER": PARAMETER,
        },
    )


@pytest.fixture(autouse=True)
def healthy(fault_stack: FaultStack, ssm_proxy: FaultProxy) -> Iterator[None]:
    fault_stack.proxy.clear()
    ssm_proxy.clear()
    if ssm_proxy._listener is None:
        ssm_proxy.start_listening()
    fault_stack.client("ssm").put_parameter(
        Name=PARAMETER, Value=PUBLIC_PEM, Type="String", Overwrite=True
    )
    yield
    ssm_proxy.clear()
    if ssm_proxy._listener is None:
        ssm_proxy.start_listening()


def _subject_rows(stack: FaultStack, subject: str) -> int:
    """rows_used of the token subject's item (0 when it was never charged)."""
    client = stack.client("dynamodb")
    from mlmoat.local.stack import table_name

    items = client.scan(
        TableName=table_name(),
        FilterExpression="subject = :s",
        ExpressionAttributeValues={":s": {"S": subject}},
        ConsistentRead=True,
    )["Items"]
    return sum(int(item.get("rows_used", {"N": "0"})["N"]) for item in items)


def _assert_secret_outage(api: Api, response: Response, subject: str, stack: FaultStack) -> None:
    assert response.status == 503, response.body
    assert int(response.headers["retry-after"]) >= 1
    assert "www-authenticate" not in response.headers  # not an authentication failure
    body = response.json
    assert set(body) == {"error"} and body["error"]["request_id"] == response.request_id
    text = response.body.decode()
    for leak in ("predictions", PARAMETER, "SSM", "Traceback", "BEGIN PUBLIC KEY"):
        assert leak not in text
    records = api.audit_for(response.request_id)
    assert len(records) == 1, records
    assert (records[0]["status"], records[0]["decision"]) == (503, "deny")
    assert records[0]["reason"] in ("secret_unavailable", "dependency_unavailable")
    assert _subject_rows(stack, subject) == 0


def test_a_missing_key_parameter_fails_closed_and_api_keys_still_work(
    api: Api, fault_stack: FaultStack
) -> None:
    # given the verification key parameter deleted from SSM
    fault_stack.client("ssm").delete_parameter(Name=PARAMETER)
    subject = f"svc-{uuid.uuid4().hex[:8]}"
    # when a signed token is presented / then 503 Retry-After, audited, nothing counted
    response = api.post(ROW, token=_token(subject))
    _assert_secret_outage(api, response, subject, fault_stack)
    # and an API key on the same instance is still served
    key_id, api_key = fault_stack.create_key(f"fault-{uuid.uuid4().hex[:8]}")
    assert api.post(ROW, api_key=api_key).status == 200
    assert fault_stack.rows_used(key_id) == 1


def test_ssm_refusing_connections_fails_closed(
    api: Api, fault_stack: FaultStack, ssm_proxy: FaultProxy
) -> None:
    # given nothing listening at the SSM endpoint
    ssm_proxy.stop_listening()
    subject = f"svc-{uuid.uuid4().hex[:8]}"
    # when a signed token is presented / then 503, audited, nothing counted
    response = api.post(ROW, token=_token(subject))
    _assert_secret_outage(api, response, subject, fault_stack)


def test_ssm_throttling_fails_closed(
    api: Api, fault_stack: FaultStack, ssm_proxy: FaultProxy
) -> None:
    # given SSM answering every GetParameter with a throttling error
    ssm_proxy.set_fault("throttle", operations={"GetParameter"})
    subject = f"svc-{uuid.uuid4().hex[:8]}"
    # when a signed token is presented / then 503, audited, nothing counted
    response = api.post(ROW, token=_token(subject))
    _assert_secret_outage(api, response, subject, fault_stack)


def test_ssm_hanging_fails_closed_within_the_function_timeout(
    api: Api, fault_stack: FaultStack, ssm_proxy: FaultProxy
) -> None:
    # given SSM accepting the connection and never answering
    ssm_proxy.set_fault("hold_before", operations={"GetParameter"}, hold_seconds=120)
    subject = f"svc-{uuid.uuid4().hex[:8]}"
    # when a signed token is presented
    started = time.monotonic()
    response = api.post(ROW, token=_token(subject))
    # then the function answers 503 itself (not the platform's 502 timeout, which would leave
    # no audit record) before its 10 s timeout
    assert time.monotonic() - started < 10.0
    _assert_secret_outage(api, response, subject, fault_stack)


def test_once_the_key_is_back_a_valid_token_is_served_and_counted(
    api: Api, fault_stack: FaultStack
) -> None:
    # given the verification key in SSM again / when a signed token is presented
    subject = f"svc-{uuid.uuid4().hex[:8]}"
    response = api.post(ROW, token=_token(subject))
    # then it is served and charged to the token's subject
    assert response.status == 200, response.body
    assert _subject_rows(fault_stack, subject) == 1


def test_a_cached_key_rides_out_an_ssm_outage(
    api: Api, fault_stack: FaultStack, ssm_proxy: FaultProxy
) -> None:
    # given an instance that fetched the key (previous test) and SSM now refusing connections
    ssm_proxy.stop_listening()
    subject = f"svc-{uuid.uuid4().hex[:8]}"
    # when a signed token is presented / then it is served from the cached key and counted
    response = api.post(ROW, token=_token(subject))
    assert response.status == 200, response.body
    assert _subject_rows(fault_stack, subject) == 1
