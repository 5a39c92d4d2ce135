"""mlmoat train --adversarial: the manifest records the training, the artifact matches its
estimator, the committed ``models-adv/`` are reproduced, and the plain models are untouched.

The forest's adversarial training (HopSkipJump on every training row, ~2 minutes) is exercised
by ``make redteam``'s artifacts in ``models-adv/``; here the two logistic recipes (seconds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlmoat.train import main, train_model
from security.model import ModelRegistry

REPO = Path(__file__).resolve().parents[2]
MODELS_ADV = REPO / "models-adv"


def test_cli_adversarial_writes_a_manifest_recording_the_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given the real command on the logistic breast-cancer recipe
    assert main(["--adversarial", "--model", "breast-cancer", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    # then it wrote <name>-adv, loadable by the serving code, with the recipe in its manifest
    assert summary["model"] == "breast-cancer-adv"
    registry = ModelRegistry.load(tmp_path)
    assert registry.names == ("breast-cancer-adv",)
    manifest = json.loads((tmp_path / "breast-cancer-adv" / "manifest.json").read_text())
    training = manifest["adversarial_training"]
    assert training["attack"].startswith("ART ProjectedGradientDescent")
    assert training["epsilon"] == 0.05 and training["rounds"] == 3 and training["norm"] == "inf"
    assert training["adversarial_rows"] == 3 * manifest["metrics"]["n_train"]
    # and its clean accuracy beside the undefended recipe's (the committed model's)
    metrics = manifest["metrics"]
    plain = json.loads((REPO / "models" / "breast-cancer" / "manifest.json").read_text())
    assert metrics["undefended_accuracy"] == plain["metrics"]["accuracy"]
    assert metrics["adversarial_accuracy_cost"] == pytest.approx(
        metrics["undefended_accuracy"] - metrics["accuracy"], abs=1e-9
    )
    assert metrics["adversarial_accuracy_cost"] <= 0.02


@pytest.mark.parametrize("name", ["iris", "breast-cancer"])
def test_adversarial_model_matches_its_estimator_and_the_committed_artifact(name: str) -> None:
    # given adversarial training run now
    model = train_model(name, adversarial=True)
    # then the ONNX export agrees with scikit-learn on the held-out rows (the parity check)
    registry = ModelRegistry.load(MODELS_ADV)
    served = registry.get(f"{name}-adv")
    x_test = model.split[2]
    proba = served.predict_proba(x_test)
    assert served.labels(proba) == [str(v) for v in model.estimator.predict(x_test)]
    assert np.max(np.abs(proba - model.estimator.predict_proba(x_test))) < 1e-5
    # and the committed artifact is exactly what the command produces (deterministic)
    committed = MODELS_ADV / f"{name}-adv"
    assert (committed / "model.onnx").read_bytes() == model.onnx_bytes
    assert json.loads((committed / "manifest.json").read_text()) == model.manifest


def test_adversarial_training_changes_the_model() -> None:
    plain, hardened = train_model("breast-cancer"), train_model("breast-cancer", adversarial=True)
    assert plain.onnx_bytes != hardened.onnx_bytes
    assert "adversarial_training" not in plain.manifest


def test_cli_refuses_adversarial_with_dp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--adversarial", "--dp-epsilon", "1", "--model", "iris", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "separate recipes" in capsys.readouterr().err
