"""mlmoat train: parity with scikit-learn, determinism, the committed artifacts, DP mode.

scikit-learn is the oracle here: the served ONNX graph must give the same labels and
probabilities within 1e-5 on the held-out split, and ``mlmoat train`` must reproduce the
committed ``models/`` byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
from sklearn.datasets import load_breast_cancer, load_iris  # type: ignore[import-untyped]
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

from mlmoat.train import (
    DEFAULT_MODELS,
    MODEL_SPECS,
    TrainedModel,
    default_data_norm,
    load_split,
    main,
    train_model,
)
from security.model import Manifest, ModelRegistry, ServedModel

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
ARTIFACTS = ("model.onnx", "manifest.json")


@pytest.fixture(scope="module")
def trained() -> dict[str, TrainedModel]:
    return {name: train_model(name) for name in DEFAULT_MODELS}


@pytest.fixture(scope="module")
def served() -> ModelRegistry:
    return ModelRegistry.load(MODELS)


def _served_from(model: TrainedModel) -> ServedModel:
    raw = json.dumps(model.manifest)
    return ServedModel(Manifest.from_json(raw, expected_name=model.name), model.onnx_bytes)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_committed_onnx_matches_scikit_learn_on_held_out(
    trained: dict[str, TrainedModel], served: ModelRegistry, name: str
) -> None:
    # given the estimator trained now and the committed artifact served by security.model
    model, onnx_model = trained[name], served.get(name)
    _, _, x_test, _ = model.split
    # when both predict the held-out split
    expected = model.estimator.predict_proba(x_test)
    proba = onnx_model.predict_proba(x_test)
    # then labels are identical and probabilities agree within 1e-5
    assert onnx_model.labels(proba) == [str(v) for v in model.estimator.predict(x_test)]
    assert np.max(np.abs(proba - expected)) < 1e-5
    assert list(onnx_model.classes) == [str(c) for c in model.estimator.classes_]


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_onnx_label_output_matches_scikit_learn(
    trained: dict[str, TrainedModel], name: str
) -> None:
    model = trained[name]
    x_train, _, x_test, _ = model.split
    session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
    for rows in (x_train, x_test):
        labels, proba = session.run(["label", "probabilities"], {"features": rows.astype("f4")})
        assert list(labels) == list(model.estimator.predict(rows))
        assert proba.dtype == np.float32
        assert np.max(np.abs(proba - model.estimator.predict_proba(rows))) < 1e-5


# ----------------------------------------------------------------------------- determinism


def _train_cli(out: Path, hash_seed: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    subprocess.run(
        [sys.executable, "-m", "mlmoat.cli", "train", "--out", str(out)],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )


def test_train_twice_gives_identical_bytes_equal_to_committed(tmp_path: Path) -> None:
    # given two runs of the real command, in fresh processes with different hash seeds
    first, second = tmp_path / "first", tmp_path / "second"
    _train_cli(first, "1")
    _train_cli(second, "2")
    # then both runs and the committed models/ are byte-identical (a drifting artifact fails)
    for name in DEFAULT_MODELS:
        for artifact in ARTIFACTS:
            a = (first / name / artifact).read_bytes()
            assert a == (second / name / artifact).read_bytes(), f"{name}/{artifact} varies"
            committed = (MODELS / name / artifact).read_bytes()
            assert a == committed, f"models/{name}/{artifact} is stale: rerun mlmoat train"


def test_manifest_is_canonical_json(trained: dict[str, TrainedModel]) -> None:
    text = (MODELS / "iris" / "manifest.json").read_text()
    document = json.loads(text)
    assert text == json.dumps(document, sort_keys=True, indent=2) + "\n"
    assert document == json.loads(json.dumps(trained["iris"].manifest))


def test_manifest_records_what_the_brief_requires(trained: dict[str, TrainedModel]) -> None:
    manifest = trained["iris"].manifest
    assert manifest["classes"] == ["setosa", "versicolor", "virginica"]
    assert manifest["framework"]["opset"] == {"ai.onnx": 9, "ai.onnx.ml": 1}
    assert manifest["framework"]["target_opset"] == {"ai.onnx": 17, "ai.onnx.ml": 3}
    assert manifest["train_split"] == {
        "dataset": "sklearn.datasets.load_iris",
        "seed": MODEL_SPECS["iris"].seed,
        "stratified": True,
        "test_fraction": 0.3,
    }
    assert manifest["metrics"]["n_train"] == 105 and manifest["metrics"]["n_test"] == 45
    assert manifest["dp_epsilon"] is None
    x_train = trained["iris"].split[0]
    envelope = manifest["envelope"]["sepal_width_cm"]
    assert (envelope["min"], envelope["max"]) == (x_train[:, 1].min(), x_train[:, 1].max())


# ----------------------------------------------------------------------------- the split


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_load_split_is_reproducible_and_matches_the_manifest(name: str) -> None:
    x_train, y_train, x_test, y_test = load_split(name)
    again = load_split(name)
    for a, b in zip((x_train, y_train, x_test, y_test), again, strict=True):
        np.testing.assert_array_equal(a, b)
    manifest = json.loads((MODELS / name / "manifest.json").read_text())
    assert len(y_train) == manifest["metrics"]["n_train"]
    assert len(y_test) == manifest["metrics"]["n_test"]
    # stratified: each class's share differs by at most one row's worth between the halves
    for label in manifest["classes"]:
        share_train, share_test = np.mean(y_train == label), np.mean(y_test == label)
        assert abs(share_train - share_test) <= 1.0 / len(y_test) + 1e-9
    # members and non-members partition the data set: every row lands in exactly one of them
    loader = load_iris if name == "iris" else load_breast_cancer
    full = loader().data
    together = np.concatenate([x_train, x_test])
    assert together.shape == full.shape
    order = np.lexsort(together.T)
    np.testing.assert_array_equal(together[order], full[np.lexsort(full.T)])


def test_load_split_of_unknown_model_raises() -> None:
    with pytest.raises(KeyError):
        load_split("no-such-model")


def test_overfit_forest_leaks_membership_through_raw_probabilities(
    trained: dict[str, TrainedModel], served: ModelRegistry
) -> None:
    # given the deliberately overfit forest, served as ONNX
    model = served.get("breast-cancer-forest")
    x_train, y_train, x_test, y_test = trained["breast-cancer-forest"].split
    classes = list(model.classes)

    def true_class_confidence(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
        proba = model.predict_proba(rows)
        return proba[np.arange(len(labels)), [classes.index(v) for v in labels]]

    # when a membership attacker scores rows by their raw true-class probability
    scores = np.concatenate(
        [true_class_confidence(x_train, y_train), true_class_confidence(x_test, y_test)]
    )
    members = np.concatenate([np.ones(len(y_train)), np.zeros(len(y_test))])
    # then the AUC is clearly above chance (measured 0.75), while the logistic model is near it
    assert roc_auc_score(members, scores) > 0.7
    assert float(np.min(true_class_confidence(x_train, y_train))) == 1.0


# ----------------------------------------------------------------------------- DP mode


@pytest.mark.parametrize("name", ["iris", "breast-cancer"])
def test_dp_mode_records_epsilon_and_accuracy_cost(name: str) -> None:
    # given private training at epsilon 1
    model = train_model(name, dp_epsilon=1.0)
    manifest = model.manifest
    # then the manifest names the private model and records epsilon, the norm bound and cost
    assert model.name == manifest["name"] == f"{name}-dp"
    assert manifest["dp_epsilon"] == 1.0
    n_features = len(manifest["feature_names"])
    assert manifest["dp_data_norm"] == default_data_norm(n_features)
    metrics = manifest["metrics"]
    assert metrics["non_private_accuracy"] == trained_accuracy(name)
    assert metrics["dp_accuracy_cost"] == pytest.approx(
        metrics["non_private_accuracy"] - metrics["accuracy"], abs=1e-9
    )
    assert metrics["dp_accuracy_cost"] > 0
    # and the exported private model still matches its own estimator
    x_test = model.split[2]
    proba = _served_from(model).predict_proba(x_test)
    assert np.max(np.abs(proba - model.estimator.predict_proba(x_test))) < 1e-5


def trained_accuracy(name: str) -> float:
    manifest = json.loads((MODELS / name / "manifest.json").read_text())
    accuracy: float = manifest["metrics"]["accuracy"]
    return accuracy


def test_dp_accuracy_recovers_as_epsilon_grows() -> None:
    # measured on breast cancer: 0.70 at epsilon 0.5, 0.94 at epsilon 10 (non-private 0.98)
    low = train_model("breast-cancer", dp_epsilon=0.5).manifest["metrics"]["accuracy"]
    high = train_model("breast-cancer", dp_epsilon=10.0).manifest["metrics"]["accuracy"]
    assert high > low + 0.1


def test_dp_mode_is_deterministic() -> None:
    first = train_model("breast-cancer", dp_epsilon=2.0)
    second = train_model("breast-cancer", dp_epsilon=2.0)
    assert first.onnx_bytes == second.onnx_bytes
    assert first.manifest == second.manifest


def test_cli_dp_writes_private_models_beside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dp-epsilon", "1.5", "--model", "iris", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "iris-dp" and summary["dp_epsilon"] == 1.5
    registry = ModelRegistry.load(tmp_path)
    assert registry.names == ("iris-dp",)
    assert registry.get("iris-dp").manifest.dp_epsilon == 1.5


def test_cli_refuses_dp_for_the_forest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--dp-epsilon", "1", "--model", "breast-cancer-forest", "--out", str(tmp_path)])
    assert code == 2
    assert "no differentially private variant" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_refuses_non_positive_epsilon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dp-epsilon", "0", "--model", "iris", "--out", str(tmp_path)]) == 2
    assert "epsilon" in capsys.readouterr().err
