"""Per-model settings through the real predict handler: one model's settings bind that model only.

The committed ``models/`` tree is copied and iris gets ``settings.json`` (label-only output, a
zero envelope margin, at most 2 rows per request); breast-cancer, beside it, keeps the
deployment's values. The same key (``probabilities:2``, every model) calls both.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from handlersupport import import_handler, invoke, new_key, response_body, rest_event

REPO = Path(__file__).resolve().parents[2]
JSON_CT = {"Content-Type": "application/json"}
IRIS = [5.1, 3.5, 1.4, 0.2]


def _settings(models: Path, name: str, **fields: object) -> None:
    document = {"schema_version": 1, "model": name, **fields}
    (models / name / "settings.json").write_text(json.dumps(document))


@pytest.fixture(scope="module")
def served(handler_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    models = tmp_path_factory.mktemp("settings") / "models"
    shutil.copytree(REPO / "models", models)
    _settings(models, "iris", output_policy="label", envelope_margin=0.0, max_rows=2)
    _settings(models, "breast-cancer", squeeze_policy="refuse")
    (models / "breast-cancer-forest" / "settings.json").write_text('{"schema_version": 1}')
    return import_handler("handlers.predict", {**handler_env, "SECURITY_MODEL_DIR": str(models)})


def _cancer_rows() -> list[list[float]]:
    event = json.loads(
        (REPO / "events" / "rest" / "models-breast-cancer-ok-batch.json").read_text()
    )
    rows: list[list[float]] = json.loads(base64.b64decode(event["body"]))["instances"][:1]
    return rows


def _post(module: Any, model: str, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    event = rest_event(
        path=f"/models/{model}/predict",
        body=json.dumps(body).encode(),
        headers={**JSON_CT, "X-API-Key": key},
    )
    response = invoke(module, event)
    return response["statusCode"], response_body(response)


def test_a_label_only_model_narrows_every_callers_output(served: Any, admin: Any) -> None:
    key = new_key(admin, output_policy="probabilities:2")["api_key"]
    status, body = _post(served, "iris", key, {"features": IRIS})
    assert status == 200
    assert body["predictions"] == [{"label": "setosa"}]
    # the same key still sees probabilities on a model without its own policy
    rows = _cancer_rows()
    status, body = _post(served, "breast-cancer", key, {"instances": rows})
    assert status == 200 and "probabilities" in body["predictions"][0]


def test_the_models_row_cap_and_margin_are_its_own(
    served: Any, admin: Any, predict_module: Any
) -> None:
    key = new_key(admin)["api_key"]
    # iris takes at most 2 rows here (the deployment allows 100)
    assert _post(served, "iris", key, {"instances": [IRIS, IRIS]})[0] == 200
    status, body = _post(served, "iris", key, {"instances": [IRIS, IRIS, IRIS]})
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    # with no margin, a sepal length 0.1 over the training maximum (7.9) is outside the envelope;
    # the deployment's margin (10% of the range) accepts it on the unmodified model
    over = [8.0, 3.0, 6.0, 2.0]
    status, body = _post(served, "iris", key, {"features": over})
    assert status == 422 and body["error"]["code"] == "invalid_features"
    assert _post(predict_module, "iris", key, {"features": over})[0] == 200


def test_a_malformed_settings_file_makes_its_model_unavailable_alone(
    served: Any, admin: Any
) -> None:
    key = new_key(admin)["api_key"]
    rows = _cancer_rows()
    status, body = _post(served, "breast-cancer-forest", key, {"instances": rows})
    assert status == 503 and body["error"]["code"] == "model_unavailable"
    assert _post(served, "breast-cancer", key, {"instances": rows})[0] == 200


def _flagged_cancer_row() -> list[float]:
    # A held-out-like row that squeezing flags on breast-cancer: searched deterministically
    # between two rows of different classes, through the shipped model and calibration.
    from security.defences import load_defences
    from security.model import ModelRegistry

    model = ModelRegistry.load(REPO / "models").get("breast-cancer")
    config = load_defences(REPO / "models" / "breast-cancer" / "defences.json").squeeze
    assert config is not None
    from mlmoat.train import load_split

    _, _, x_test, _ = load_split("breast-cancer")
    labels = model.predict_proba(x_test).argmax(axis=1)
    a, b = x_test[labels == 0][0], x_test[labels == 1][0]
    for t in np.linspace(0, 1, 401):
        row = a + t * (b - a)
        both = model.predict_proba(np.vstack([row, config.squeeze(row.reshape(1, -1))]))
        if np.abs(both[0] - both[1]).sum() > config.threshold:
            return [float(v) for v in row]
    raise AssertionError("no flagged row on the segment")


def test_a_models_own_squeeze_policy_applies_to_it_alone(
    served: Any, admin: Any, predict_module: Any
) -> None:
    pytest.importorskip("sklearn")  # the held-out rows (tooling; not in the 3.13 build run)
    key = new_key(admin)["api_key"]
    row = _flagged_cancer_row()
    # breast-cancer is set to refuse here: the flagged row is refused
    status, body = _post(served, "breast-cancer", key, {"features": row})
    assert status == 422 and body["error"]["code"] == "input_refused"
    # under the deployment's policy (flag) the same row is answered
    assert _post(predict_module, "breast-cancer", key, {"features": row})[0] == 200
