"""A model the repository does not ship, imported with ``mlmoat models import``, served by the
real predict handler next to iris, answering as the user's estimator on its held-out rows."""

from __future__ import annotations

import csv
import shutil
from typing import Any

import numpy as np
import pytest

# The import is tooling (scikit-learn, skl2onnx): the 3.13 run against the Lambda build has none.
pytest.importorskip("skl2onnx")

import joblib  # noqa: E402
from handlersupport import REPO, new_key, post_json, response_body, serve_models  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from mlmoat import models_import  # noqa: E402
from mlmoat.models_cli import main as models_main  # noqa: E402


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # given a random forest trained and saved with joblib by the user, and its CSV
    root = tmp_path_factory.mktemp("imported")
    x, y = make_classification(n_samples=400, n_features=5, n_informative=3, random_state=8)
    x = x.round(5)
    labels = np.array(["no", "yes"])[y]
    with (root / "churn.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Tenure", "Spend", "Calls", "Late pays", "Region code", "churned"])
        for row, label in zip(x, labels, strict=True):
            writer.writerow([f"{v:.5f}" for v in row] + [label])
    forest = make_pipeline(
        StandardScaler(), RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0)
    )
    joblib.dump(forest.fit(x, labels), root / "churn.joblib")
    # imported next to iris into a model directory of its own
    model_dir = root / "models"
    shutil.copytree(REPO / "models" / "iris", model_dir / "iris")
    status = models_main(
        [
            "import",
            "churn",
            "--estimator",
            str(root / "churn.joblib"),
            "--allow-pickle",
            "--data",
            str(root / "churn.csv"),
            "--target",
            "churned",
            "--seed",
            "4",
            "--model-dir",
            str(model_dir),
        ]
    )
    assert status == 0
    data = models_import.read_csv(root / "churn.csv", target="churned")
    _, _, x_test, _ = models_import.split(data, test=None, test_fraction=0.3, seed=4)
    return {
        "model_dir": model_dir,
        "x_test": x_test,
        "estimator": joblib.load(root / "churn.joblib"),
    }


@pytest.fixture(scope="module")
def served(imported: dict[str, Any], handler_env: dict[str, str]) -> Any:
    return serve_models(imported["model_dir"], handler_env)


def test_the_imported_model_answers_as_the_estimator_on_its_held_out_rows(
    imported: dict[str, Any], served: Any, admin: Any
) -> None:
    key = new_key(admin, output_policy="probabilities:4", rate_limit="1000/minute")["api_key"]
    x_test = imported["x_test"]
    estimator = imported["estimator"]
    answered: list[dict[str, Any]] = []
    for start in range(0, len(x_test), 50):
        batch = x_test[start : start + 50]
        response = post_json(served, "/models/churn/predict", key, {"instances": batch.tolist()})
        assert response["statusCode"] == 200, response_body(response)
        body = response_body(response)
        assert body["model"] == "churn"
        answered += body["predictions"]
    assert len(answered) == len(x_test) == 120
    rows32 = x_test.astype(np.float32).astype(np.float64)
    expected = estimator.predict_proba(rows32)
    got = np.asarray([[p["probabilities"][c] for c in ("no", "yes")] for p in answered])
    assert np.abs(got - expected).max() <= 1e-5 + 5e-5  # parity tolerance + 4-decimal rounding
    assert [p["label"] for p in answered] == [str(v) for v in estimator.predict(rows32)]


def test_iris_still_answers_beside_it_and_the_imported_schema_is_enforced(
    served: Any, admin: Any
) -> None:
    key = new_key(admin)["api_key"]
    iris = post_json(served, "/models/iris/predict", key, {"features": [5.1, 3.5, 1.4, 0.2]})
    assert iris["statusCode"] == 200
    # the imported model takes its own 5 features, no more
    wrong = post_json(served, "/models/churn/predict", key, {"features": [0.1, 0.2, 0.3, 0.4]})
    assert wrong["statusCode"] == 422
    assert response_body(wrong)["error"]["code"] == "invalid_features"
