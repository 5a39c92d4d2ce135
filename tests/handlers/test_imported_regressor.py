"""A regressor the repository does not ship, end to end: trained and saved (joblib and skops) by
the test, imported with ``mlmoat models import``, checked with ``mlmoat models check``, served by
the real predict handler next to iris, isolated when its ONNX file is damaged, and attacked by
``mlmoat redteam --models NAME --quick``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# The import is tooling (scikit-learn, skl2onnx): the 3.13 run against the Lambda build has none.
pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")

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
from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.ensemble import GradientBoostingRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from mlmoat import models_import  # noqa: E402
from mlmoat.models_check import main as check_main  # noqa: E402
from mlmoat.models_cli import main as models_main  # noqa: E402
from mlmoat.redteam.cli import main as redteam_main  # noqa: E402

SEED = "3"


def _import(root: Path, model_dir: Path, estimator: str, *extra: str) -> int:
    argv = ["import", "progress", "--estimator", str(root / estimator), "--data"]
    argv += [str(root / "diabetes.csv"), "--target", "progression", "--seed", SEED]
    return models_main([*argv, "--model-dir", str(model_dir), *extra])


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # given a gradient-boosting pipeline trained on the import's own training split and saved
    # by the user with joblib and with skops, and its CSV
    root = tmp_path_factory.mktemp("regressor")
    data = load_diabetes()
    with (root / "diabetes.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*data.feature_names, "progression"])
        for row, target in zip(data.data, data.target, strict=True):
            writer.writerow([f"{v:.6f}" for v in row] + [f"{target:g}"])
    table = models_import.read_csv(root / "diabetes.csv", target="progression")
    x_train, y_train, x_test, _ = models_import.split(
        table, test=None, test_fraction=0.3, seed=int(SEED), stratify=False
    )
    # (trees need no scaling; in a StandardScaler pipeline float32 scaling moved a row across
    # a split: test_a_graph_that_disagrees_is_refused)
    model = GradientBoostingRegressor(n_estimators=60, max_depth=3, random_state=0)
    model.fit(x_train, y_train.astype(float))
    joblib.dump(model, root / "progress.joblib")
    sio.dump(model, root / "progress.skops")
    model_dir = root / "models"
    shutil.copytree(REPO / "models" / "iris", model_dir / "iris")
    assert _import(root, model_dir, "progress.joblib", "--allow-pickle") == 0
    return {"root": root, "model_dir": model_dir, "x_test": x_test, "model": model}


def test_the_import_writes_a_regressor_manifest_with_deterministic_bytes(
    imported: dict[str, Any], tmp_path: Path
) -> None:
    root, model_dir = imported["root"], imported["model_dir"]
    manifest = json.loads((model_dir / "progress" / "manifest.json").read_text())
    assert manifest["kind"] == "regressor" and manifest["classes"] == []
    assert manifest["target"]["min"] < manifest["target"]["max"]
    assert manifest["metrics"]["n_test"] == 133 and 0.3 < manifest["metrics"]["r2"] < 1
    assert manifest["train_split"]["stratified"] is False
    assert len(manifest["parity"]["values"]) == 32
    # the same inputs give the same bytes; the skops file (its types named) the same graph
    again = tmp_path / "again"
    assert _import(root, again, "progress.joblib", "--allow-pickle") == 0
    for name in ("model.onnx", "manifest.json", "defences.json"):
        assert (again / "progress" / name).read_bytes() == (
            model_dir / "progress" / name
        ).read_bytes()
    trust = "sklearn._loss.loss.LeastSquares,sklearn.tree._tree.Tree"
    skops_dir = tmp_path / "skops"
    assert _import(root, skops_dir, "progress.skops", "--trust", trust) == 0
    onnx = (skops_dir / "progress" / "model.onnx").read_bytes()
    assert onnx == (model_dir / "progress" / "model.onnx").read_bytes()
    assert check_main(["--model-dir", str(model_dir)]) == 0


def test_a_multi_output_regressor_is_refused(
    imported: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sklearn.linear_model import Ridge

    x = imported["x_test"]
    joblib.dump(Ridge().fit(x, np.c_[x[:, 0], x[:, 1]]), tmp_path / "two.joblib")
    shutil.copy(imported["root"] / "diabetes.csv", tmp_path / "diabetes.csv")
    assert _import(tmp_path, tmp_path / "models", "two.joblib", "--allow-pickle") == 2
    assert "predicts 2 outputs per row" in capsys.readouterr().err
    assert not (tmp_path / "models" / "progress").exists()


def test_a_graph_that_disagrees_is_refused_naming_the_rows(
    imported: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # float32 standardisation before float32 tree thresholds moves a held-out row across a split
    table = models_import.read_csv(imported["root"] / "diabetes.csv", target="progression")
    x_train, y_train, _, _ = models_import.split(
        table, test=None, test_fraction=0.3, seed=int(SEED), stratify=False
    )
    model = make_pipeline(
        StandardScaler(), GradientBoostingRegressor(n_estimators=60, max_depth=3, random_state=0)
    ).fit(x_train, y_train.astype(float))
    joblib.dump(model, tmp_path / "scaled.joblib")
    shutil.copy(imported["root"] / "diabetes.csv", tmp_path / "diabetes.csv")
    assert _import(tmp_path, tmp_path / "models", "scaled.joblib", "--allow-pickle") == 2
    err = capsys.readouterr().err
    assert "disagrees with the estimator on" in err and "relative difference" in err
    assert "\n  row " in err and not (tmp_path / "models").exists()


@pytest.fixture(scope="module")
def served(imported: dict[str, Any], handler_env: dict[str, str]) -> Any:
    return serve_models(imported["model_dir"], handler_env)


def test_the_regressor_answers_as_the_estimator_on_its_held_out_rows(
    imported: dict[str, Any], served: Any, admin: Any
) -> None:
    key = new_key(admin, output_policy="value:4", rate_limit="1000/minute")["api_key"]
    # the held-out rows inside the training envelope (validation refuses the few beyond it)
    manifest = json.loads((imported["model_dir"] / "progress" / "manifest.json").read_text())
    lower = np.asarray([manifest["envelope"][f]["min"] for f in manifest["feature_names"]])
    upper = np.asarray([manifest["envelope"][f]["max"] for f in manifest["feature_names"]])
    inside = ((imported["x_test"] >= lower) & (imported["x_test"] <= upper)).all(axis=1)
    x_test = imported["x_test"][inside]
    assert len(x_test) >= 120
    answered: list[dict[str, Any]] = []
    for start in range(0, len(x_test), 50):
        batch = x_test[start : start + 50]
        response = post_json(served, "/models/progress/predict", key, {"instances": batch.tolist()})
        assert response["statusCode"] == 200, response_body(response)
        assert response_body(response)["model"] == "progress"
        answered += response_body(response)["predictions"]
    assert len(answered) == len(x_test)
    expected = imported["model"].predict(x_test.astype(np.float32).astype(np.float64))
    got = np.asarray([p["value"] for p in answered])
    # value:4 on a target range of 321 (25-346) rounds to a step of 0.1: half of it, plus the
    # parity tolerance (1e-5 relative), bounds the difference
    assert np.abs(got - expected).max() <= 0.05 + 1e-5 * np.abs(expected).max()
    assert np.allclose(got * 10, np.round(got * 10))


def test_bucket_and_label_keys_and_iris_beside_it(
    imported: dict[str, Any], served: Any, admin: Any
) -> None:
    row = imported["x_test"][1].tolist()
    value = float(imported["model"].predict(np.asarray([row], dtype=np.float32))[0])
    buckets = new_key(admin, output_policy="buckets:4")["api_key"]
    answer = response_body(
        post_json(served, "/models/progress/predict", buckets, {"features": row})
    )
    low, high = (
        answer["predictions"][0]["bucket"]["low"],
        answer["predictions"][0]["bucket"]["high"],
    )
    assert low <= value <= high and high - low == pytest.approx(321 / 4, abs=1e-3)
    # a label key gets the coarsest answer: the training range, whatever the row
    label = new_key(admin, output_policy="label")["api_key"]
    answer = response_body(post_json(served, "/models/progress/predict", label, {"features": row}))
    assert answer["predictions"] == [{"bucket": {"low": 25.0, "high": 346.0}}]
    # iris (a classifier) answers a value key with its label alone
    iris = post_json(served, "/models/iris/predict", buckets, {"features": [5.1, 3.5, 1.4, 0.2]})
    assert iris["statusCode"] == 200
    assert response_body(iris)["predictions"] == [{"label": "setosa"}]


def test_a_corrupted_regressor_answers_503_while_iris_answers_200(
    imported: dict[str, Any], handler_env: dict[str, str], admin: Any, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(imported["model_dir"], models)
    onnx = models / "progress" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    module = import_handler("handlers.predict", {**handler_env, "SECURITY_MODEL_DIR": str(models)})
    key = new_key(admin)["api_key"]
    row = imported["x_test"][0].tolist()
    broken = post_json(module, "/models/progress/predict", key, {"features": row})
    assert broken["statusCode"] == 503
    assert response_body(broken)["error"]["code"] == "model_unavailable"
    iris = post_json(module, "/models/iris/predict", key, {"features": [5.1, 3.5, 1.4, 0.2]})
    assert iris["statusCode"] == 200
    assert check_main(["--model-dir", str(models)]) == 1


def test_squeezing_on_serves_and_the_quick_red_team_reports_r2(
    imported: dict[str, Any], handler_env: dict[str, str], admin: Any, tmp_path: Path
) -> None:
    module = import_handler(
        "handlers.predict",
        {
            **handler_env,
            "SECURITY_MODEL_DIR": str(imported["model_dir"]),
            "SECURITY_SQUEEZE_POLICY": "refuse",
        },
    )
    key = new_key(admin, output_policy="value:3")["api_key"]
    rows = imported["x_test"][:40].tolist()
    response = post_json(module, "/models/progress/predict", key, {"instances": rows[:1]})
    assert response["statusCode"] == 200, response_body(response)
    out = tmp_path / "report"
    argv = ["--quick", "--models", "progress", "--data", str(imported["root"] / "diabetes.csv")]
    argv += ["--model-dir", str(imported["model_dir"]), "--out", str(out)]
    assert redteam_main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    figures = results["regressors"]["progress"]
    adaptive = figures["extraction"]["adaptive value:6"]
    assert adaptive["counts"] == [10, 50, 200, 500] and adaptive["held_out_rows"] == 133
    low, high = adaptive["r2_ci_at_max"]
    assert low <= adaptive["r2"][-1] <= high
    assert figures["membership_inference"]["members"] == 133
    assert figures["hopskipjump"].startswith("not applicable")
    report = (out / "report.md").read_text()
    assert "| adaptive value:6 |" in report and "R^2" in report


def test_the_monitor_applies_a_regressors_queries(
    imported: dict[str, Any], handler_env: dict[str, str], log_sink: Any
) -> None:
    import time
    import uuid

    import boto3
    from handlersupport import LambdaContext

    from security.extraction import QueryMessage
    from security.store import PrincipalStore

    # given the monitor with the imported regressor's reference loaded at init
    since = len(log_sink.records())
    monitor = import_handler(
        "handlers.monitor", {**handler_env, "SECURITY_MODEL_DIR": str(imported["model_dir"])}
    )
    unavailable = [
        r for r in log_sink.records()[since:] if r.get("message") == "monitor_reference_unavailable"
    ]
    assert unavailable == []
    # when a regressor's query arrives as the predict function sends it: rows, no labels
    principal = f"key#reg{uuid.uuid4().hex[:9]}"
    rows = tuple(tuple(float(v) for v in row) for row in imported["x_test"][:3])
    message = QueryMessage(principal, "progress", f"req-{uuid.uuid4().hex[:8]}", time.time(), rows)
    record = {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "handle-0",
        "body": message.to_json(),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "0"},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ExtractionQueue",
        "awsRegion": "us-east-1",
    }
    result = monitor.handler({"Records": [record]}, LambdaContext())
    # then it is applied (no failure, no "unmonitored" record) and the principal's state counts it
    assert result == {"batchItemFailures": []}
    assert not [r for r in log_sink.records()[since:] if r.get("event") == "unmonitored"]
    store = PrincipalStore(
        client=boto3.client(
            "dynamodb",
            endpoint_url=handler_env["AWS_ENDPOINT_URL_DYNAMODB"],
            region_name="us-east-1",
        ),
        table_name=handler_env["SECURITY_TABLE_NAME"],
    )
    assert store.load_monitor_state(principal, "progress")[1] == 1


def test_recommend_budget_measures_r2_for_a_regressor(
    imported: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["recommend-budget", "progress", "--max-fidelity", "0.8", "--seeds", "1"]
    argv += ["--data", str(imported["root"] / "diabetes.csv")]
    assert models_main([*argv, "--model-dir", str(imported["model_dir"])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "regressor" and result["output_policy"] == "value:2"
    assert result["fidelity"].startswith("R^2")
    counts = (5, 10, 20, 50, 100, 200, 500, 1000)
    curve = [result["curve"][str(c)] for c in counts]
    assert all(r <= 1 for r in curve) and max(curve) > 0.5  # the clone does learn
    # the budget is the largest count whose clone (and every smaller one's) stays below 0.8
    expected = None
    for count, fidelity in zip(counts, curve, strict=True):
        if fidelity >= 0.8:
            break
        expected = count
    assert result["budget"] == expected
    bad = ["recommend-budget", "progress", "--max-fidelity", "0.8", "--policy", "value:9"]
    bad += ["--data", str(imported["root"] / "diabetes.csv")]
    assert models_main([*bad, "--model-dir", str(imported["model_dir"])]) == 2
