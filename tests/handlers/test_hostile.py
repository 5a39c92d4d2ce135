"""The hostile-body suite, through the Lambda handler: status, one envelope, nothing echoed.

Each body carries a marker that appears nowhere in a legitimate answer (odd digits, a unique
string); the response (body and headers) must not contain it. Refused bodies are never charged.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from handlersupport import header, invoke, new_key, response_body, rest_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MARK = "Zq9" + uuid.uuid4().hex[:10]  # a string marker
NUM = "4.718281828"  # inside the iris envelope for sepal_length; never in a rounded answer
ROW = f"[{NUM}, 3.5, 1.4, 0.2]"
JSON_CT = "application/json"

CASES: list[tuple[str, bytes, str | None, int]] = [
    ("three features", f'{{"features": [{NUM}, 3.5, 1.4]}}'.encode(), JSON_CT, 422),
    ("five features", f'{{"features": [{NUM}, 3.5, 1.4, 0.2, 0.2]}}'.encode(), JSON_CT, 422),
    ("no features", b'{"features": []}', JSON_CT, 422),
    ("ragged batch", f'{{"instances": [{ROW}, [{NUM}, 3.5]]}}'.encode(), JSON_CT, 422),
    ("string feature", f'{{"features": [{NUM}, 3.5, 1.4, "{MARK}"]}}'.encode(), JSON_CT, 422),
    ("numeric string", f'{{"features": ["{NUM}", 3.5, 1.4, 0.2]}}'.encode(), JSON_CT, 422),
    ("boolean", f'{{"features": [{NUM}, true, 1.4, 0.2]}}'.encode(), JSON_CT, 422),
    ("null", f'{{"features": [{NUM}, null, 1.4, 0.2]}}'.encode(), JSON_CT, 422),
    ("NaN literal", f'{{"features": [{NUM}, NaN, 1.4, 0.2]}}'.encode(), JSON_CT, 422),
    ("Infinity literal", f'{{"features": [{NUM}, Infinity, 1.4, 0.2]}}'.encode(), JSON_CT, 422),
    ("-Infinity literal", f'{{"features": [{NUM}, -Infinity, 1.4, 0.2]}}'.encode(), JSON_CT, 422),
    ("1e309", f'{{"features": [{NUM}, 1e309, 1.4, 0.2]}}'.encode(), JSON_CT, 422),
    (
        "5000-digit int",
        ('{"features": [' + "7" * 5000 + ", 3.5, 1.4, 0.2]}").encode(),
        JSON_CT,
        422,
    ),
    ("above envelope", b'{"features": [5.1, 3.5, 1.4, 987654.3217]}', JSON_CT, 422),
    ("below envelope", b'{"features": [-987654.3217, 3.5, 1.4, 0.2]}', JSON_CT, 422),
    ("seed's 1e6 bound", b'{"features": [999999.123, 3.5, 1.4, 0.2]}', JSON_CT, 422),
    ("unknown field", f'{{"features": {ROW}, "{MARK}": 1}}'.encode(), JSON_CT, 422),
    ("both shapes", f'{{"features": {ROW}, "instances": [{ROW}]}}'.encode(), JSON_CT, 422),
    ("empty object", b"{}", JSON_CT, 422),
    ("empty batch", b'{"instances": []}', JSON_CT, 422),
    ("root array", f"[{ROW}]".encode(), JSON_CT, 400),
    ("root string", f'"{MARK}"'.encode(), JSON_CT, 400),
    ("root number", NUM.encode(), JSON_CT, 400),
    ("root null", b"null", JSON_CT, 400),
    ("duplicate key", f'{{"features": {ROW}, "features": {ROW}}}'.encode(), JSON_CT, 400),
    ("malformed", f'{{"features": [{NUM}, "{MARK}'.encode(), JSON_CT, 400),
    ("empty body", b"", JSON_CT, 400),
    ("invalid utf-8", b'{"features": [5.1, 3.5, 1.4, 0.2], "\xff\xfe": 1}', JSON_CT, 400),
    ("deep nesting", b"[" * 20000 + b"]" * 20000, JSON_CT, 400),
    ("deep objects", b'{"a":' * 10000 + b"1" + b"}" * 10000, JSON_CT, 400),
    (
        "oversized body",
        json.dumps({"features": [5.1, 3.5, 1.4, 0.2], "pad": MARK * 8000}).encode(),
        JSON_CT,
        413,
    ),
    (
        "oversized batch",
        json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]] * 101}).encode(),
        JSON_CT,
        413,
    ),
    ("text/plain", f'{{"features": {ROW}}}'.encode(), "text/plain", 415),
    ("no content type", f'{{"features": {ROW}}}'.encode(), None, 415),
    ("form encoded", f"features={NUM}".encode(), "application/x-www-form-urlencoded", 415),
    (
        "latin-1 charset",
        f'{{"features": {ROW}}}'.encode(),
        "application/json; charset=latin-1",
        415,
    ),
]


@pytest.fixture(scope="module")
def hostile_key(admin: Any) -> dict[str, Any]:
    return new_key(admin, budget=1000)


@pytest.fixture(scope="module")
def fuzz_key(admin: Any) -> dict[str, Any]:
    return new_key(admin, rate_limit="100000/minute", budget=100000)


def _echoes(response: dict[str, Any], body: bytes) -> list[str]:
    text = json.dumps(response)
    # the rule messages name NaN and Infinity as rules; the markers are what must not come back
    found = [
        token for token in (MARK, NUM, "987654", "999999", "7777777", "1e309") if token in text
    ]
    if b"\xff" in body:
        found += [t for t in ("\\u00ff", "\\xff") if t in text]
    return found


@pytest.mark.parametrize(
    ("case", "body", "content_type", "status"), CASES, ids=[c[0] for c in CASES]
)
@pytest.mark.parametrize("encoding", ["base64", "plain"])
def test_hostile_body(
    case, body, content_type, status, encoding, predict_module, hostile_key, log_sink
) -> None:
    if encoding == "plain" and b"\xff" in body:
        pytest.skip("a non-UTF-8 body can only arrive base64-encoded")
    headers = {"X-API-Key": hostile_key["api_key"]}
    if content_type:
        headers["Content-Type"] = content_type
    event = rest_event(
        path="/predict", body=body, headers=headers, base64_body=encoding == "base64"
    )
    response = invoke(predict_module, event)
    payload = response_body(response)
    # then the status is the rule's, the body is the envelope and nothing of the input comes back
    assert response["statusCode"] == status, payload
    assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message", "request_id"}
    assert payload["error"]["request_id"] == header(response, "X-Request-Id")
    assert not _echoes(response, body)
    assert "pydantic" not in json.dumps(payload).lower() and "Traceback" not in json.dumps(payload)
    # the caller is authenticated (RateLimit-Policy) but nothing was charged
    assert header(response, "RateLimit-Policy") is not None
    (record,) = [
        r for r in log_sink.audit_records() if r["request_id"] == payload["error"]["request_id"]
    ]
    assert (record["status"], record["decision"], record["rows"]) == (status, "deny", 0)


def test_refused_bodies_are_never_charged(predict_module, admin, hostile_key) -> None:
    usage = admin.show(hostile_key["key_id"])["usage"]
    assert usage["rows_used"] == 0 and usage["requests"] == 0


def test_an_unauthenticated_hostile_body_gets_401_not_the_validation_rule(predict_module) -> None:
    event = rest_event(
        path="/predict", body=b'{"features": [NaN]}', headers={"Content-Type": JSON_CT}
    )
    response = invoke(predict_module, event)
    assert response["statusCode"] == 401
    assert response_body(response)["error"]["code"] == "unauthenticated"


def test_http_api_v2_events_get_the_same_answers(predict_module, hostile_key) -> None:
    from handlersupport import EVENTS

    template = json.loads((EVENTS / "http" / "predict-ok-single.json").read_text())
    for case, body, content_type, status in CASES[::5]:
        event = json.loads(json.dumps(template))
        event["requestContext"]["requestId"] = str(uuid.uuid4())
        event["headers"] = {"x-api-key": hostile_key["api_key"]}
        if content_type:
            event["headers"]["content-type"] = content_type
        event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
        response = invoke(predict_module, event)
        assert response["statusCode"] == status, case
        assert not _echoes(response, body), case


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["features", "instances", "x"]), children, max_size=3)
    ),
    max_leaves=20,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    document=_JSON,
    content_type=st.sampled_from([JSON_CT, "text/plain", None, "application/json; charset=utf-8"]),
    path=st.sampled_from(["/predict", "/models/iris/predict", "/models/breast-cancer/predict"]),
)
def test_property_any_request_gets_a_documented_status_one_envelope_and_one_record(
    document, content_type, path, predict_module, fuzz_key, log_sink
) -> None:
    headers = {"X-API-Key": fuzz_key["api_key"]}
    if content_type:
        headers["Content-Type"] = content_type
    event = rest_event(path=path, body=json.dumps(document).encode(), headers=headers)
    response = invoke(predict_module, event)
    status = response["statusCode"]
    payload = response_body(response)
    request_id = header(response, "X-Request-Id")
    assert status in (200, 400, 413, 415, 422)
    if status == 200:
        assert payload["request_id"] == request_id
    else:
        assert set(payload) == {"error"} and payload["error"]["request_id"] == request_id
    records = [r for r in log_sink.audit_records() if r["request_id"] == request_id]
    assert len(records) == 1 and records[0]["status"] == status
