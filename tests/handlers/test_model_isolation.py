"""One model's trouble is that model's alone: through the real handlers, against moto.

Each case copies the committed ``models/`` tree, damages part of it, and imports the real
``handlers.predict`` (or ``handlers.monitor``) pointed at the copy, as a cold start does. A
damaged model answers 503 ``model_unavailable`` in the generic envelope (no ``Retry-After``, the
reason in its audit record only) while every other model serves; no damage makes the function
fail to start (the platform's 502); the monitor acknowledges and audits a message for a model
without a reference instead of sending it to the dead-letter queue.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from handlersupport import (
    LambdaContext,
    header,
    import_handler,
    invoke,
    new_key,
    response_body,
    rest_event,
)

from logcapture import LineSink
from mlmoat.local.events import sqs_event

REPO = Path(__file__).resolve().parents[2]
JSON_CT = {"Content-Type": "application/json"}
IRIS_ROW = b'{"features": [5.1, 3.5, 1.4, 0.2]}'
UNAVAILABLE = {"code": "model_unavailable", "message": "This model is temporarily unavailable."}


def _flip_onnx(models: Path, name: str) -> None:
    onnx = models / name / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))


def _models_copy(root: Path, *damage: Callable[[Path], None]) -> Path:
    models = root / f"models-{uuid.uuid4().hex[:6]}"
    shutil.copytree(REPO / "models", models)
    for step in damage:
        step(models)
    return models


def _predict_handler(handler_env: dict[str, str], models: Path) -> Any:
    return import_handler("handlers.predict", {**handler_env, "SECURITY_MODEL_DIR": str(models)})


def _body(model: str) -> bytes:
    manifest = json.loads((REPO / "models" / model / "manifest.json").read_text())
    envelope = manifest["envelope"]
    centre = [(envelope[f]["min"] + envelope[f]["max"]) / 2 for f in manifest["feature_names"]]
    return json.dumps({"features": centre}).encode()


def _post(module: Any, path: str, api_key: str | None, body: bytes = IRIS_ROW) -> dict[str, Any]:
    headers = dict(JSON_CT) if api_key is None else {**JSON_CT, "X-API-Key": api_key}
    return invoke(module, rest_event(path=path, body=body, headers=headers))


def _record(log_sink: LineSink, response: dict[str, Any]) -> dict[str, Any]:
    request_id = header(response, "X-Request-Id")
    (record,) = [r for r in log_sink.audit_records() if r["request_id"] == request_id]
    return record


def _assert_unavailable(response: dict[str, Any], record: dict[str, Any], cause: str) -> None:
    # the generic envelope, nothing about the cause, and no retry hint
    assert response["statusCode"] == 503, response_body(response)
    request_id = header(response, "X-Request-Id")
    assert response_body(response) == {"error": {**UNAVAILABLE, "request_id": request_id}}
    assert header(response, "Retry-After") is None
    assert cause not in json.dumps(response)
    # one audit record: the public reason, the cause in its flags, the Requests metric by reason
    assert (record["decision"], record["reason"], record["status"]) == (
        "deny",
        "model_unavailable",
        503,
    )
    assert any(flag.startswith("detail:") and cause in flag for flag in record["flags"]), record
    assert record["Requests"] == [1.0] and record["rows"] == 0
    assert ["decision", "reason", "service"] in record["_aws"]["CloudWatchMetrics"][0]["Dimensions"]


def _init_lines(log_sink: LineSink, message: str, since: int) -> dict[str, str]:
    return {
        r["model"]: r["reason"] for r in log_sink.records()[since:] if r.get("message") == message
    }


@pytest.fixture(scope="module")
def api_key(admin: Any) -> str:
    return str(new_key(admin, budget=1000, rate_limit="1000/minute")["api_key"])


def test_a_corrupted_model_answers_503_and_every_other_model_serves(
    predict_module: Any,
    handler_env: dict[str, str],
    api_key: str,
    log_sink: LineSink,
    tmp_path: Path,
) -> None:
    # given breast-cancer's ONNX with one flipped bit and breast-cancer-forest's defences.json
    # malformed, the rest intact
    def break_defences(models: Path) -> None:
        (models / "breast-cancer-forest" / "defences.json").write_text("{not json")

    models = _models_copy(tmp_path, lambda m: _flip_onnx(m, "breast-cancer"), break_defences)
    # when the real handler cold-starts on that copy
    since = len(log_sink.records())
    module = _predict_handler(handler_env, models)
    # then it started, and logged each refused model once with its reason
    assert _init_lines(log_sink, "model_unavailable", since) == {
        "breast-cancer": "model_hash_mismatch",
        "breast-cancer-forest": "defences_malformed",
    }
    # and each damaged model answers 503 model_unavailable, with one audit record each
    broken = _post(module, "/models/breast-cancer/predict", api_key, _body("breast-cancer"))
    _assert_unavailable(broken, _record(log_sink, broken), "model_hash_mismatch")
    stale = _post(module, "/models/breast-cancer-forest/predict", api_key, _body("breast-cancer"))
    _assert_unavailable(stale, _record(log_sink, stale), "defences_malformed")
    # while iris serves, by name and as the default model
    for path in ("/models/iris/predict", "/predict"):
        served = _post(module, path, api_key)
        assert served["statusCode"] == 200, response_body(served)
        assert response_body(served)["model"] == "iris"
        record = _record(log_sink, served)
        assert (record["decision"], record["reason"]) == ("allow", "ok")
    # an unknown model stays 404, and an unauthenticated caller learns nothing (401)
    assert _post(module, "/models/no-such-model/predict", api_key)["statusCode"] == 404
    assert _post(module, "/models/breast-cancer/predict", None)["statusCode"] == 401


def test_an_unavailable_default_model_refuses_predict_and_named_models_serve(
    predict_module: Any,
    handler_env: dict[str, str],
    api_key: str,
    log_sink: LineSink,
    tmp_path: Path,
) -> None:
    # given the default model's (iris's) artifact corrupted
    module = _predict_handler(handler_env, _models_copy(tmp_path, lambda m: _flip_onnx(m, "iris")))
    # when /predict is asked, then 503 model_unavailable
    refused = _post(module, "/predict", api_key)
    _assert_unavailable(refused, _record(log_sink, refused), "model_hash_mismatch")
    # while another model keeps serving by name
    served = _post(module, "/models/breast-cancer/predict", api_key, _body("breast-cancer"))
    assert served["statusCode"] == 200, response_body(served)


@pytest.mark.parametrize("case", ["every artifact corrupted", "no model directory"])
def test_with_no_model_at_all_the_function_starts_and_answers_503(
    predict_module: Any,
    handler_env: dict[str, str],
    api_key: str,
    log_sink: LineSink,
    tmp_path: Path,
    case: str,
) -> None:
    # given no model that loads
    if case == "no model directory":
        models, named, cause = tmp_path / "absent", [], "model_dir_missing"
    else:
        names = ["breast-cancer", "breast-cancer-forest", "iris"]
        damage = [functools.partial(_flip_onnx, name=name) for name in names]
        models, named, cause = _models_copy(tmp_path, *damage), names, "model_hash_mismatch"
    # when the handler cold-starts, then it starts (never the platform's 502)
    module = _predict_handler(handler_env, models)
    # and every predict route answers 503 model_unavailable; an unknown name stays 404
    for path in ["/predict", *(f"/models/{name}/predict" for name in named)]:
        response = _post(module, path, api_key)
        _assert_unavailable(response, _record(log_sink, response), cause)
    assert _post(module, "/models/no-such-model/predict", api_key)["statusCode"] == 404


def _sqs_event(messages: list[str]) -> dict[str, Any]:
    return sqs_event(
        [
            {"MessageId": str(uuid.uuid4()), "ReceiptHandle": f"handle-{i}", "Body": body}
            for i, body in enumerate(messages)
        ]
    )


def test_the_monitor_acknowledges_and_audits_a_model_without_a_reference(
    predict_module: Any, handler_env: dict[str, str], log_sink: LineSink, tmp_path: Path
) -> None:
    from security.extraction import QueryMessage
    from security.store import PrincipalStore

    # given breast-cancer shipped without its defences.json (so without a monitor reference)
    models = _models_copy(tmp_path, lambda m: (m / "breast-cancer" / "defences.json").unlink())
    since = len(log_sink.records())
    monitor = import_handler("handlers.monitor", {**handler_env, "SECURITY_MODEL_DIR": str(models)})
    assert _init_lines(log_sink, "monitor_reference_unavailable", since) == {
        "breast-cancer": "defences_missing"
    }
    # when a batch holds one query of that model and one of iris
    principal = f"key#iso{uuid.uuid4().hex[:9]}"
    ids = [f"req-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    now = time.time()
    bodies = [
        QueryMessage(principal, "breast-cancer", ids[0], now, ((1.0,) * 30,), ("benign",), (0.9,)),
        QueryMessage(principal, "iris", ids[1], now, ((5.1, 3.5, 1.4, 0.2),), ("setosa",), (0.97,)),
    ]
    result = monitor.handler(_sqs_event([m.to_json() for m in bodies]), LambdaContext())
    # then no record fails (none is retried into the dead-letter queue)
    assert result == {"batchItemFailures": []}
    # and the unmonitored one has an audit record with its metric; the iris one was applied
    skipped = [
        r
        for r in log_sink.records()[since:]
        if r.get("message") == "audit" and r.get("event") == "unmonitored"
    ]
    assert [(r["model"], r["request_id"]) for r in skipped] == [("breast-cancer", ids[0])]
    (record,) = skipped
    assert record["reason"] == "no_monitor_reference" and record["principal_id"] == principal
    assert "detail:defences_missing" in record["flags"]
    assert record["UnmonitoredQueries"] == [1.0]
    assert ["service"] in record["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    store = PrincipalStore(
        client=boto3.client(
            "dynamodb",
            endpoint_url=handler_env["AWS_ENDPOINT_URL_DYNAMODB"],
            region_name="us-east-1",
        ),
        table_name=handler_env["SECURITY_TABLE_NAME"],
    )
    assert store.load_monitor_state(principal, "iris")[1] == 1  # applied: its state written
    assert store.load_monitor_state(principal, "breast-cancer") == (None, 0)
