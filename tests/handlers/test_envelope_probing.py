"""The outside test's envelope recovery, replayed against the handler: it must stop early.

On a 60/minute key, a 61-row batch can never fit. Before refusals were counted, such a batch
answered 429 "never fits" when every value was inside the model's training envelope and 422
when one was outside, for free: a binary search per feature and bound recovered the exact
training minimum and maximum of all four iris features in 240 requests with 0 rows charged and
the RateLimit headers unchanged. Now every refusal spends one of the principal's refusals
(`SECURITY_REFUSAL_LIMIT`, 100/hour by default) and, once they are spent, in-envelope and
out-of-envelope probes get the same answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from handlersupport import header, invoke, new_key, response_body, rest_event

from logcapture import remember_key

BASE = [5.1, 3.5, 1.4, 0.2]  # an iris row inside the envelope
STEPS = 30  # 4 features x 2 bounds x 30 halvings = 240 requests, as in the outside test


def _probe(module: Any, key: str, feature: int, value: float) -> dict[str, Any]:
    row = list(BASE)
    row[feature] = value
    body = json.dumps({"instances": [row] * 61}).encode()
    event = rest_event(
        path="/models/iris/predict",
        body=body,
        headers={"Content-Type": "application/json", "X-API-Key": key},
    )
    return invoke(module, event)


def _answer(response: dict[str, Any]) -> tuple[int, str, str]:
    error = response_body(response)["error"]
    return response["statusCode"], error["code"], error["message"]


NEVER_FITS = (429, "rate_limited", "The rate limit or query budget is exhausted.")
CAPPED = (429, "rate_limited", "Too many refused requests from these credentials; retry later.")


def test_the_240_probe_envelope_recovery_is_stopped_before_the_120th(
    predict_module: Any, admin: Any
) -> None:
    created = new_key(admin, rate_limit="60/minute", budget=100000)
    key = remember_key(created["api_key"])
    answers: list[tuple[int, str]] = []
    recovered: dict[tuple[int, str], float] = {}
    for feature in range(4):
        for bound in ("min", "max"):
            inside = BASE[feature]
            outside = -1000.0 if bound == "min" else 1000.0
            for _ in range(STEPS):
                middle = (inside + outside) / 2
                answer = _answer(_probe(predict_module, key, feature, middle))
                answers.append(answer)
                if answer == NEVER_FITS:  # the value is inside the envelope
                    inside = middle
                else:
                    outside = middle
            recovered[feature, bound] = inside

    # Every request was refused; the first 100 each spent one refusal, the rest hit the cap
    assert len(answers) == 240
    capped = [i for i, a in enumerate(answers) if a == CAPPED]
    assert capped and capped[0] == 100 < 120
    assert capped == list(range(100, 240))
    # Once capped, a value far inside and one far outside are answered alike
    inside_answer = _probe(predict_module, key, 0, BASE[0])
    outside_answer = _probe(predict_module, key, 0, 1000.0)
    assert _answer(inside_answer) == _answer(outside_answer) == CAPPED
    assert header(inside_answer, "RateLimit-Remaining") == header(
        outside_answer, "RateLimit-Remaining"
    )
    retry = [int(header(r, "Retry-After") or -1) for r in (inside_answer, outside_answer)]
    assert min(retry) > 0 and abs(retry[0] - retry[1]) <= 1  # the same window's end
    # The search did not get the envelope: the three bounds searched before the cap came out
    # exact (the served envelope: the training range widened by the margin), the five after it
    # wrong; and no probe was charged a row
    manifest = Path(predict_module.settings.model_dir) / "iris" / "manifest.json"
    document = json.loads(manifest.read_text())
    margin = predict_module.settings.envelope_margin
    served = {}
    for feature, name in enumerate(document["feature_names"]):
        low, high = document["envelope"][name]["min"], document["envelope"][name]["max"]
        served[feature, "min"] = low - margin * (high - low)
        served[feature, "max"] = high + margin * (high - low)
    exact = [found for found, value in recovered.items() if abs(value - served[found]) < 1e-3]
    assert exact == [(0, "min"), (0, "max"), (1, "min")]
    assert admin.usage(created["key_id"])["usage"]["rows_used"] == 0
