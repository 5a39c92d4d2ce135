"""Edge cases of the HTTP surface found by an outside test: no redirects, nothing cacheable."""

from __future__ import annotations

import json
from typing import Any

import pytest
from handlersupport import header, invoke, load_event, response_body, rest_event

_ROW = json.dumps({"features": [5.1, 3.5, 1.4, 0.2]}).encode()

IAM_ARN = "arn:aws:iam::123456789012:user/ops-alice"


@pytest.mark.parametrize("path", ["/predict/", "/models/iris/predict/"])
def test_a_trailing_slash_is_a_404_in_the_envelope_not_a_redirect(
    path: str, predict_module: Any, keys: dict[str, str], log_sink: Any
) -> None:
    # Given a valid key and a Host/X-Forwarded-Proto an attacker chose
    event = rest_event(
        path=path,
        body=_ROW,
        headers={
            "Content-Type": "application/json",
            "X-API-Key": keys["API_KEY"],
            "Host": "evil.example",
            "X-Forwarded-Proto": "javascript",
        },
    )
    # When the path has a trailing slash
    response = invoke(predict_module, event)
    # Then it is the envelope's 404, with no Location anywhere
    assert response["statusCode"] == 404
    assert response_body(response)["error"]["code"] == "not_found"
    assert header(response, "Location") is None
    request_id = header(response, "X-Request-Id")
    assert [r["status"] for r in log_sink.audit_records() if r["request_id"] == request_id] == [404]


@pytest.mark.parametrize(
    ("key", "status"), [("API_KEY", 200), ("UNKNOWN_API_KEY", 401), (None, 401)]
)
def test_every_prediction_response_forbids_caching(
    key: str | None, status: int, predict_module: Any, keys: dict[str, str]
) -> None:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = keys[key]
    response = invoke(predict_module, rest_event(path="/predict", body=_ROW, headers=headers))
    assert response["statusCode"] == status
    assert header(response, "Cache-Control") == "no-store"


def test_admin_views_forbid_caching(admin_module: Any, keys: dict[str, str]) -> None:
    event = rest_event(path="/admin/keys", body=None, method="GET", headers={}, iam_arn=IAM_ARN)
    response = invoke(admin_module, event)
    assert response["statusCode"] == 200
    assert header(response, "Cache-Control") == "no-store"


@pytest.mark.parametrize("second", ["x-api-key", "X-API-KEY"])
def test_two_key_headers_differing_only_in_case_are_refused(
    second: str, predict_module: Any, keys: dict[str, str], log_sink: Any
) -> None:
    # Given a valid key and another key in a header of the same name in another case
    event = rest_event(
        path="/predict",
        body=_ROW,
        headers={"Content-Type": "application/json", "X-API-Key": keys["UNKNOWN_API_KEY"]},
    )
    event["headers"][second] = keys["API_KEY"]
    event["multiValueHeaders"][second] = [keys["API_KEY"]]
    # When both arrive
    response = invoke(predict_module, event)
    # Then neither silently wins: 401, audited as ambiguous
    assert response["statusCode"] == 401
    request_id = header(response, "X-Request-Id")
    (record,) = [r for r in log_sink.audit_records() if r["request_id"] == request_id]
    assert record["reason"] == "ambiguous_credentials"


def test_a_spent_budget_says_so_and_promises_no_retry(
    predict_module: Any, admin: Any, keys: dict[str, str]
) -> None:
    from handlersupport import new_key

    # Given a key whose budget is one row, and a key whose rate window is one row
    budgeted = new_key(admin, budget=1)["api_key"]
    windowed = keys["LIMITED_API_KEY"]
    responses = {}
    for name, key in (("budget", budgeted), ("rate", windowed)):
        headers = {"Content-Type": "application/json", "X-API-Key": key}
        first = invoke(predict_module, rest_event(path="/predict", body=_ROW, headers=headers))
        assert first["statusCode"] in (200, 429)
        responses[name] = invoke(
            predict_module, rest_event(path="/predict", body=_ROW, headers=headers)
        )
    # Then the budget's 429 names the budget and sends no Retry-After (it never refills) ...
    spent = responses["budget"]
    assert spent["statusCode"] == 429
    assert response_body(spent)["error"]["code"] == "budget_exhausted"
    assert header(spent, "Retry-After") is None
    # ... while the rate window's 429 keeps its window's Retry-After
    limited = responses["rate"]
    assert limited["statusCode"] == 429
    assert response_body(limited)["error"]["code"] == "rate_limited"
    assert 1 <= int(header(limited, "Retry-After") or 0) <= 60


_MALFORMED_HOSTS = [
    pytest.param({"Host": "a:b:c"}, id="host-two-colons"),
    pytest.param({"Host": "api.example.com:https"}, id="host-port-not-a-number"),
    pytest.param({"Host": "api.example.com:99999"}, id="host-port-out-of-range"),
    pytest.param({"X-Forwarded-Port": "80x"}, id="port-not-a-number"),
    pytest.param({"X-Forwarded-Port": "443, 80"}, id="port-two-values"),
]


def _audited(log_sink: Any, response: dict[str, Any]) -> list[dict[str, Any]]:
    request_id = header(response, "X-Request-Id")
    return [r for r in log_sink.audit_records() if r["request_id"] == request_id]


@pytest.mark.parametrize("bad", _MALFORMED_HOSTS)
def test_a_malformed_host_or_port_is_a_400_with_one_audit_record(
    bad: dict[str, str], predict_module: Any, keys: dict[str, str], log_sink: Any
) -> None:
    # Given a valid request whose Host or X-Forwarded-Port Mangum cannot parse
    headers = {"Content-Type": "application/json", "X-API-Key": keys["API_KEY"]}
    event = rest_event(path="/predict", body=_ROW, headers={**headers, **bad})
    # When it arrives (before: Mangum raised, API Gateway answered 502, nothing was audited)
    response = invoke(predict_module, event)
    # Then it is the envelope's 400, generic, audited once, and nothing of the header echoed
    assert response["statusCode"] == 400
    assert response_body(response)["error"]["code"] == "malformed_header"
    assert next(iter(bad.values())) not in response["body"]
    (record,) = _audited(log_sink, response)
    assert record["status"] == 400 and record["reason"] == "malformed_header"
    assert record["rows"] == 0


def test_two_host_headers_are_a_400_with_one_audit_record(
    predict_module: Any, keys: dict[str, str], log_sink: Any
) -> None:
    headers = {"Content-Type": "application/json", "X-API-Key": keys["API_KEY"]}
    event = rest_event(path="/predict", body=_ROW, headers={**headers, "Host": "a.example"})
    event["multiValueHeaders"]["Host"] = ["a.example", "b.example"]
    response = invoke(predict_module, event)
    assert response["statusCode"] == 400
    (record,) = _audited(log_sink, response)
    assert record["reason"] == "malformed_header"


def test_an_http_api_event_with_a_joined_host_is_a_400(
    predict_module: Any, keys: dict[str, str], log_sink: Any
) -> None:
    # HTTP API (v2) joins a repeated header with a comma
    event = load_event("http/predict-ok-single.json", {"API_KEY": keys["API_KEY"]})
    event["headers"]["host"] = "a.example:443,b.example:443"
    response = invoke(predict_module, event)
    assert response["statusCode"] == 400
    (record,) = _audited(log_sink, response)
    assert record["reason"] == "malformed_header"


@pytest.mark.parametrize("host", ["api.example.com", "api.example.com:443", "10.0.0.7:3000"])
def test_a_well_formed_host_is_served(host: str, predict_module: Any, keys: dict[str, str]) -> None:
    headers = {"Content-Type": "application/json", "X-API-Key": keys["API_KEY"], "Host": host}
    response = invoke(predict_module, rest_event(path="/predict", body=_ROW, headers=headers))
    assert response["statusCode"] == 200
