"""A regressor pipeline with a categorical column (a house-price model: the neighbourhood one-hot
encoded, the numbers scaled, ridge regression), trained and saved (joblib and skops) by the test,
imported with ``mlmoat models import``, checked with ``mlmoat models check``, served by the real
predict handler next to iris (by name and positionally, an unknown neighbourhood a 422 that echoes
nothing), and attacked by ``mlmoat redteam --models NAME --quick``."""

from __future__ import annotations

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
    new_key,
    post_json,
    response_body,
    serve_models,
)
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.linear_model import Ridge  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402

from mixedsupport import accepted  # noqa: E402
from mlmoat import models_import  # noqa: E402
from mlmoat.models_check import main as check_main  # noqa: E402
from mlmoat.models_cli import main as models_main  # noqa: E402
from mlmoat.redteam.cli import main as redteam_main  # noqa: E402

NEIGHBOURHOODS = ("harbour", "hill", "market", "old-town", "park")
NUMERIC = ["rooms", "area_m2", "age_years"]
COLUMNS = ["rooms", "area_m2", "neighbourhood", "age_years"]


def _houses(n: int = 300, seed: int = 7) -> Any:
    rng = np.random.default_rng(seed)
    rooms = rng.integers(1, 7, size=n).astype(float)
    area = np.round(20 + rooms * 18 + rng.normal(0, 12, size=n), 1)
    where = rng.integers(0, len(NEIGHBOURHOODS), size=n)
    age = np.round(rng.uniform(0, 90, size=n), 0)
    premium = np.asarray([40.0, 95.0, 10.0, 70.0, 55.0])[where]
    price = 50 + 2.1 * area + 8 * rooms - 0.6 * age + premium + rng.normal(0, 15, size=n)
    return pd.DataFrame(
        {
            "rooms": rooms,
            "area_m2": area,
            "neighbourhood": np.asarray(NEIGHBOURHOODS)[where],
            "age_years": age,
            "price_k": np.round(price, 2),
        }
    )


def _pipeline() -> Any:
    encode = ColumnTransformer(
        [
            ("where", OneHotEncoder(handle_unknown="ignore"), ["neighbourhood"]),
            ("numbers", StandardScaler(), NUMERIC),
        ]
    )
    return make_pipeline(encode, Ridge(alpha=1.0))


def _import(root: Path, model_dir: Path, name: str, estimator: Path, *extra: str) -> int:
    argv = ["import", name, "--estimator", str(estimator), "--data", str(root / "houses.csv")]
    argv += ["--target", "price_k", "--seed", "3", "--model-dir", str(model_dir), *extra]
    return models_main(argv)


@pytest.fixture(scope="module")
def houses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # given a house-price pipeline trained by the user on a DataFrame, saved with joblib and skops
    root = tmp_path_factory.mktemp("houses")
    frame = _houses()
    frame.to_csv(root / "houses.csv", index=False)
    pipeline = _pipeline().fit(frame[COLUMNS], frame["price_k"])
    joblib.dump(pipeline, root / "houses.joblib")
    sio.dump(pipeline, root / "houses.skops")
    model_dir = root / "models"
    shutil.copytree(REPO / "models" / "iris", model_dir / "iris")
    # when both are imported (the skops file through skops' safe loader, no pickle)
    assert _import(root, model_dir, "houses", root / "houses.joblib", "--allow-pickle") == 0
    assert _import(root, model_dir, "houses-skops", root / "houses.skops") == 0
    manifest = json.loads((model_dir / "houses" / "manifest.json").read_text())
    categories = {"neighbourhood": tuple(NEIGHBOURHOODS)}
    data = models_import.read_csv(root / "houses.csv", target="price_k", categories=categories)
    _, _, x_test, _ = models_import.split(
        data, test=None, test_fraction=0.3, seed=3, stratify=False
    )
    # the held-out rows the API accepts: inside the envelope widened by its 10 % margin
    inside = accepted(x_test, manifest)
    assert inside.sum() >= 85  # of 90
    return {
        "root": root,
        "model_dir": model_dir,
        "pipeline": pipeline,
        "x_test": x_test[inside],
        "manifest": manifest,
    }


def test_the_manifest_types_each_feature_and_models_check_verifies_the_parity(
    houses: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, model_dir = houses["manifest"], houses["model_dir"]
    assert manifest["kind"] == "regressor" and manifest["classes"] == []
    assert manifest["feature_names"] == COLUMNS
    assert manifest["categories"] == {"neighbourhood": list(NEIGHBOURHOODS)}
    assert manifest["feature_types"] == {
        "rooms": "numeric",
        "area_m2": "numeric",
        "neighbourhood": "categorical",
        "age_years": "numeric",
    }
    assert manifest["envelope"]["neighbourhood"] == {"min": 0.0, "max": 4.0}
    assert manifest["onnx"]["input"] == "features" and manifest["metrics"]["r2"] > 0.8
    # the parity sample carries valid category indices only
    sample = np.asarray(manifest["parity"]["rows"])
    assert len(sample) == 32 and set(sample[:, 2].tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    assert len(set(sample[:, 2].tolist())) >= 3
    # squeezing keeps the category (its grid is the index itself); the monitor has a reference
    defences = json.loads((model_dir / "houses" / "defences.json").read_text())
    assert defences["kind"] == "regressor"
    assert defences["squeeze"]["origin"][2] == 0.0 and defences["squeeze"]["step"][2] == 1.0
    assert len(defences["monitor"]["lower"]) == 4
    capsys.readouterr()
    assert check_main(["--model-dir", str(model_dir)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()}
    assert lines["houses"].startswith("ok  parity on 32 recorded values")
    assert lines["houses-skops"].startswith("ok  parity on 32 recorded values")
    # joblib and skops give the same graph; the same inputs give the same bytes
    onnx = (model_dir / "houses" / "model.onnx").read_bytes()
    assert (model_dir / "houses-skops" / "model.onnx").read_bytes() != b""
    again = houses["root"] / "again"
    root = houses["root"]
    assert _import(root, again, "houses", root / "houses.joblib", "--allow-pickle") == 0
    assert (again / "houses" / "model.onnx").read_bytes() == onnx
    for file in ("manifest.json", "defences.json"):
        assert (again / "houses" / file).read_bytes() == (model_dir / "houses" / file).read_bytes()


@pytest.fixture(scope="module")
def served(houses: dict[str, Any], handler_env: dict[str, str]) -> Any:
    return serve_models(houses["model_dir"], handler_env)


def _rows(x: np.ndarray) -> list[list[Any]]:
    """Held-out rows as a caller sends them: the neighbourhood as its name."""
    return [
        [NEIGHBOURHOODS[int(v)] if j == 2 else float(v) for j, v in enumerate(row)] for row in x
    ]


def test_the_regressor_answers_as_the_pipeline_by_name_and_positionally_next_to_iris(
    houses: dict[str, Any], served: Any, admin: Any
) -> None:
    key = new_key(admin, output_policy="value:4", rate_limit="1000/minute")["api_key"]
    rows = _rows(houses["x_test"])
    frame = pd.DataFrame(
        [[float(np.float32(v)) if isinstance(v, float) else v for v in row] for row in rows],
        columns=COLUMNS,
    )
    expected = np.asarray(houses["pipeline"].predict(frame), dtype=np.float64)
    for model in ("houses", "houses-skops"):
        for shape in ("positional", "by name"):
            answered: list[dict[str, Any]] = []
            for start in range(0, len(rows), 45):
                batch: list[Any] = rows[start : start + 45]
                if shape == "by name":
                    batch = [dict(zip(COLUMNS, row, strict=True)) for row in batch]
                response = post_json(served, f"/models/{model}/predict", key, {"instances": batch})
                assert response["statusCode"] == 200, response_body(response)
                answered += response_body(response)["predictions"]
            assert len(answered) == len(rows) >= 85
            got = np.asarray([p["value"] for p in answered])
            # value:4 (the key cap) rounds to 4 significant digits: at most half a unit of the
            # 4th digit (5e-4 relative), plus the parity tolerance (1e-5 of the largest value)
            bound = 5e-4 * np.abs(expected) + 1e-5 * np.abs(expected).max()
            assert (np.abs(got - expected) <= bound).all()
            assert not np.allclose(got, expected, rtol=1e-9, atol=0)  # it is rounded
    # iris (a classifier) still answers beside it
    iris = post_json(served, "/models/iris/predict", key, {"features": [5.1, 3.5, 1.4, 0.2]})
    assert iris["statusCode"] == 200 and response_body(iris)["predictions"][0]["label"] == "setosa"


@pytest.mark.parametrize(
    ("change", "reason_text"),
    [
        ({"neighbourhood": "secret-suburb"}, "not one of the categories"),
        ({"neighbourhood": 2}, "must be given as a string"),
        ({"area_m2": "85.5"}, "numeric feature must be a JSON number"),
    ],
)
def test_an_unknown_neighbourhood_is_a_422_that_echoes_nothing(
    houses: dict[str, Any], served: Any, admin: Any, change: dict[str, Any], reason_text: str
) -> None:
    key = new_key(admin)["api_key"]
    row = dict(zip(COLUMNS, _rows(houses["x_test"][:1])[0], strict=True))
    response = post_json(served, "/models/houses/predict", key, {"features": {**row, **change}})
    assert response["statusCode"] == 422
    body = response_body(response)
    assert body["error"]["code"] == "invalid_features"
    assert reason_text in body["error"]["message"]
    text = json.dumps(body)
    assert "secret" not in text and "85.5" not in text
    assert not any(n in text for n in NEIGHBOURHOODS)  # nor the categories it takes


def test_the_quick_red_team_draws_valid_neighbourhoods_and_reports_r2(
    houses: dict[str, Any], tmp_path: Path
) -> None:
    from mlmoat.redteam.cases import load_cases
    from mlmoat.redteam.regression import RegressorCase, attacker_rows

    data = {"houses": houses["root"] / "houses.csv"}
    (case,) = load_cases(houses["model_dir"], ["houses"], data)
    assert isinstance(case, RegressorCase) and case.categorical == (2,)
    for kind in ("uniform", "adaptive"):
        drawn = attacker_rows(case, kind, 500, seed=0)[:, 2]
        assert set(drawn.tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}
    out = tmp_path / "report"
    argv = ["--quick", "--models", "houses", "--data", str(houses["root"] / "houses.csv")]
    argv += ["--model-dir", str(houses["model_dir"]), "--out", str(out)]
    assert redteam_main(argv) == 0
    figures = json.loads((out / "results.json").read_text())["regressors"]["houses"]
    adaptive = figures["extraction"]["adaptive value:6"]
    assert adaptive["counts"] == [10, 50, 200, 500] and adaptive["held_out_rows"] == 90
    low, high = adaptive["r2_ci_at_max"]
    assert low <= adaptive["r2"][-1] <= high
    # a linear model with one-hot neighbourhoods: the surrogate (one-hot ridge) recovers it
    assert adaptive["r2"][-1] > 0.95
    assert "| adaptive value:6 |" in (out / "report.md").read_text()
