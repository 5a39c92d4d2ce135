"""Edge cases of the HTTP surface found by an outside test: no redirects, nothing cacheable."""

from __future__ import annotations

import json
from typing import Any

import pytest
from handlersupport import header, invoke, response_body, rest_event

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
