"""A pipeline with categorical columns (strings one-hot encoded, numbers scaled), imported with
``mlmoat models import`` from joblib and from skops, checked, and served by the real predict
handler next to iris: it answers as the user's pipeline on its held-out rows, by name and
positionally, takes a categorical feature only as one of its training categories, and a damaged
copy of its graph makes it alone answer 503."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# The import is tooling (scikit-learn, skl2onnx, pandas): the 3.13 run has none of them.
pytest.importorskip("skl2onnx")
pd = pytest.importorskip("pandas")

import joblib  # noqa: E402
import skops.io as sio  # noqa: E402
from handlersupport import (  # noqa: E402
    REPO,
    import_handler,
    new_key,
    post_json,
    response_body,
    serve_models,
)
from sklearn.preprocessing import FunctionTransformer  # noqa: E402

from mixedsupport import CLASSES, COLUMNS, accepted, churn_frame, churn_pipeline  # noqa: E402
from mlmoat import models_import  # noqa: E402
from mlmoat.models_check import main as check_main  # noqa: E402
from mlmoat.models_cli import main as models_main  # noqa: E402


def _import(root: Path, model_dir: Path, name: str, estimator: Path, *extra: str) -> int:
    argv = ["import", name, "--estimator", str(estimator), "--data", str(root / "churn.csv")]
    argv += ["--target", "churned", "--seed", "3", "--model-dir", str(model_dir), *extra]
    return models_main(argv)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # given a mixed-type pipeline trained by the user on a DataFrame, saved with joblib and skops
    root = tmp_path_factory.mktemp("mixed")
    frame = churn_frame()
    frame.to_csv(root / "churn.csv", index=False)
    pipeline = churn_pipeline().fit(frame[COLUMNS], frame["churned"])
    joblib.dump(pipeline, root / "churn.joblib")
    sio.dump(pipeline, root / "churn.skops")
    model_dir = root / "models"
    shutil.copytree(REPO / "models" / "iris", model_dir / "iris")
    # when both are imported (the skops file through skops' safe loader, no pickle)
    assert _import(root, model_dir, "churn", root / "churn.joblib", "--allow-pickle") == 0
    assert _import(root, model_dir, "churn-skops", root / "churn.skops") == 0
    manifest = json.loads((model_dir / "churn" / "manifest.json").read_text())
    categories = {
        manifest["train_split"]["columns"][f]: v for f, v in manifest["categories"].items()
    }
    data = models_import.read_csv(root / "churn.csv", target="churned", categories=categories)
    _, _, x_test, y_test = models_import.split(data, test=None, test_fraction=0.3, seed=3)
    # the held-out rows the API accepts: inside the training envelope widened by its margin
    inside = accepted(x_test, manifest)
    assert inside.sum() >= 85  # of 90
    x_test, y_test = x_test[inside], y_test[inside]
    return {
        "root": root,
        "model_dir": model_dir,
        "pipeline": pipeline,
        "x_test": x_test,
        "y_test": [str(v) for v in y_test],
        "manifest": manifest,
    }


def test_the_manifest_records_each_feature_type_and_the_graph_is_the_same_from_both_files(
    mixed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, model_dir = mixed["manifest"], mixed["model_dir"]
    assert manifest["feature_names"] == ["tenure_months", "spend", "plan", "region"]
    # the allowed categories are the fitted encoder's, as the API takes them
    assert manifest["categories"] == {
        "plan": ["basic", "plus", "pro"],
        "region": ["east", "north", "south", "west"],
    }
    assert manifest["feature_types"] == {
        "tenure_months": "numeric",
        "spend": "numeric",
        "plan": "categorical",
        "region": "categorical",
    }
    assert manifest["envelope"]["plan"] == {"min": 0.0, "max": 2.0}
    assert manifest["envelope"]["tenure_months"]["max"] <= 72
    # one float input, as for a numeric model; joblib and skops give the same bytes
    assert manifest["onnx"]["input"] == "features"
    joblib_onnx = (model_dir / "churn" / "model.onnx").read_bytes()
    assert (model_dir / "churn-skops" / "model.onnx").read_bytes() != b""
    skops_manifest = json.loads((model_dir / "churn-skops" / "manifest.json").read_text())
    assert skops_manifest["onnx"]["sha256"] != manifest["onnx"]["sha256"]  # name in metadata
    # the defences keep each category: squeezing's grid is the index itself, smoothing's noise
    # is zero on the categorical features
    defences = json.loads((model_dir / "churn" / "defences.json").read_text())
    assert defences["squeeze"]["origin"][2:] == [0.0, 0.0]
    assert defences["squeeze"]["step"][2:] == [1.0, 1.0]
    assert defences["smoothing"]["fixed"] == [2, 3]
    assert len(defences["monitor"]["lower"]) == 4  # the monitor has its reference
    # and models check verifies both (hash, defences, parity on the recorded rows)
    capsys.readouterr()
    assert check_main(["--model-dir", str(model_dir)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()}
    assert lines["churn"].startswith("ok  parity on 32 recorded rows")
    assert lines["churn-skops"].startswith("ok  parity on 32 recorded rows")
    # the same inputs give the same bytes
    again = mixed["root"] / "again"
    assert (
        _import(mixed["root"], again, "churn", mixed["root"] / "churn.joblib", "--allow-pickle")
        == 0
    )
    assert (again / "churn" / "model.onnx").read_bytes() == joblib_onnx
    for file in ("manifest.json", "defences.json"):
        assert (again / "churn" / file).read_bytes() == (model_dir / "churn" / file).read_bytes()


def test_a_skops_file_with_an_untrusted_type_is_refused_until_named_then_the_step_is_named(
    mixed: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = churn_frame()
    clip = FunctionTransformer(functools.partial(np.clip, a_min=0.0, a_max=200.0))
    sio.dump(churn_pipeline(clip).fit(frame[COLUMNS], frame["churned"]), tmp_path / "clip.skops")
    capsys.readouterr()
    assert _import(mixed["root"], tmp_path / "m", "clip", tmp_path / "clip.skops") == 2
    err = capsys.readouterr().err
    assert "functools.partial" in err and "numpy.clip" in err and "--trust" in err
    trusted = ("--trust", "functools.partial,numpy.clip")
    assert _import(mixed["root"], tmp_path / "m", "clip", tmp_path / "clip.skops", *trusted) == 2
    refused = capsys.readouterr().err
    assert "skl2onnx cannot convert" in refused and "FunctionTransformer" in refused
    assert not (tmp_path / "m" / "clip").exists()


@pytest.fixture(scope="module")
def served(mixed: dict[str, Any], handler_env: dict[str, str]) -> Any:
    return serve_models(mixed["model_dir"], handler_env)


def _rows(x: np.ndarray, manifest: dict[str, Any]) -> list[list[Any]]:
    """Held-out rows as a caller sends them: the category strings, not their indices."""
    cats = manifest["categories"]
    return [
        [
            cats[f][int(v)] if f in cats else float(v)
            for f, v in zip(manifest["feature_names"], row, strict=True)
        ]
        for row in x
    ]


def test_the_mixed_model_answers_as_the_pipeline_by_name_and_positionally(
    mixed: dict[str, Any], served: Any, admin: Any
) -> None:
    key = new_key(admin, output_policy="probabilities:4", rate_limit="1000/minute")["api_key"]
    manifest, x_test = mixed["manifest"], mixed["x_test"]
    rows = _rows(x_test, manifest)
    names = manifest["feature_names"]
    frame = pd.DataFrame(
        [[float(np.float32(v)) if isinstance(v, float) else v for v in row] for row in rows],
        columns=COLUMNS,
    )
    expected = mixed["pipeline"].predict_proba(frame)
    labels = [str(v) for v in mixed["pipeline"].predict(frame)]
    for model in ("churn", "churn-skops"):
        for shape in ("positional", "by name"):
            answered: list[dict[str, Any]] = []
            for start in range(0, len(rows), 45):
                batch = rows[start : start + 45]
                if shape == "by name":
                    batch = [dict(zip(names, row, strict=True)) for row in batch]
                response = post_json(served, f"/models/{model}/predict", key, {"instances": batch})
                assert response["statusCode"] == 200, response_body(response)
                answered += response_body(response)["predictions"]
            assert len(answered) == len(rows) >= 85
            got = np.asarray([[p["probabilities"][c] for c in CLASSES] for p in answered])
            assert np.abs(got - expected).max() <= 1e-5 + 5e-5  # parity + 4 decimals (key cap)
            assert [p["label"] for p in answered] == labels
    one = dict(zip(names, rows[0], strict=True))
    single = post_json(served, "/models/churn/predict", key, {"features": one})
    assert single["statusCode"] == 200
    assert response_body(single)["predictions"][0]["label"] == labels[0]


@pytest.mark.parametrize(
    ("change", "reason_text"),
    [
        ({"plan": "platinum-secret"}, "not one of the categories"),
        ({"plan": 1}, "must be given as a string"),
        ({"plan": None}, "must be given as a string"),
        ({"spend": "42.0"}, "numeric feature must be a JSON number"),
        ({"region": "x" * 5000}, "longer than this model accepts"),
    ],
)
def test_a_categorical_feature_outside_its_categories_is_a_422_that_echoes_nothing(
    mixed: dict[str, Any], served: Any, admin: Any, change: dict[str, Any], reason_text: str
) -> None:
    key = new_key(admin)["api_key"]
    row = dict(
        zip(
            mixed["manifest"]["feature_names"],
            _rows(mixed["x_test"][:1], mixed["manifest"])[0],
            strict=True,
        )
    )
    response = post_json(served, "/models/churn/predict", key, {"features": {**row, **change}})
    assert response["statusCode"] == 422
    body = response_body(response)
    assert body["error"]["code"] == "invalid_features"
    assert reason_text in body["error"]["message"]
    text = json.dumps(body)
    assert "platinum" not in text and "xxxx" not in text and "42.0" not in text
    assert "basic" not in text and "north" not in text  # nor the categories it takes


def test_a_corrupted_mixed_graph_makes_only_that_model_503_while_iris_answers(
    mixed: dict[str, Any], handler_env: dict[str, str], admin: Any, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(mixed["model_dir"], models)
    onnx_file = models / "churn" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    module = import_handler(
        "handlers.predict",
        {**handler_env, "SECURITY_MODEL_DIR": str(models), "SECURITY_SQUEEZE_POLICY": "off"},
    )
    key = new_key(admin)["api_key"]
    row = _rows(mixed["x_test"][:1], mixed["manifest"])[0]
    broken = post_json(module, "/models/churn/predict", key, {"features": row})
    assert broken["statusCode"] == 503
    assert response_body(broken)["error"]["code"] == "model_unavailable"
    assert (
        post_json(module, "/models/churn-skops/predict", key, {"features": row})["statusCode"]
        == 200
    )
    iris = post_json(module, "/models/iris/predict", key, {"features": [5.1, 3.5, 1.4, 0.2]})
    assert iris["statusCode"] == 200


def test_the_openapi_document_with_the_mixed_model_is_valid_and_types_each_feature(
    mixed: dict[str, Any],
) -> None:
    from openapi_spec_validator import validate

    from mlmoat.openapi import openapi_document

    document = openapi_document(
        model_dir=str(mixed["model_dir"]), default_model="iris", max_rows=100
    )
    validate(document)
    schema = document["components"]["schemas"]["PredictRequest_churn"]
    row, named = schema["oneOf"][0]["properties"]["features"]["oneOf"]
    assert [item["type"] for item in row["prefixItems"]] == ["number", "number", "string", "string"]
    assert named["properties"]["plan"]["type"] == "string"
    text = json.dumps(document)
    assert "basic" not in text and "north" not in text  # the categories are not published


def test_under_squeezing_the_mixed_rows_are_served_and_flagged_rows_counted(
    mixed: dict[str, Any], handler_env: dict[str, str], admin: Any
) -> None:
    # the calibrated grid keeps each category index: squeezed rows are still valid categories
    module = import_handler(
        "handlers.predict",
        {
            **handler_env,
            "SECURITY_MODEL_DIR": str(mixed["model_dir"]),
            "SECURITY_SQUEEZE_POLICY": "flag",
        },
    )
    key = new_key(admin, output_policy="probabilities:4", rate_limit="1000/minute")["api_key"]
    rows = _rows(mixed["x_test"], mixed["manifest"])
    labels: list[str] = []
    for start in range(0, len(rows), 45):
        response = post_json(
            module, "/models/churn/predict", key, {"instances": rows[start : start + 45]}
        )
        assert response["statusCode"] == 200, response_body(response)
        labels += [p["label"] for p in response_body(response)["predictions"]]
    accuracy = float(np.mean(np.asarray(labels) == np.asarray(mixed["y_test"])))
    assert accuracy >= mixed["manifest"]["metrics"]["accuracy"] - 0.02
