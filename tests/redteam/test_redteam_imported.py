"""``mlmoat redteam --models NAME --quick`` on a model the repository does not ship.

The model is trained, saved with skops and imported by the test (``mlmoat models import``); the
red team re-reads its CSV (checked against the hash in the manifest) and splits it as the import
did, then attacks it through the real functions like the built-in models.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlmoat.models_cli import main as models_main
from mlmoat.redteam.cases import load_cases
from mlmoat.redteam.cli import main as redteam_main


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("redteam-imported")
    x, y = make_classification(n_samples=400, n_features=5, n_informative=3, random_state=5)
    x = x.round(5)
    labels = np.array(["low", "high"])[y]
    with (root / "risk.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "c", "d", "e", "risk"])
        for row, label in zip(x, labels, strict=True):
            writer.writerow([f"{v:.5f}" for v in row] + [label])
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, labels)
    sio.dump(model, root / "risk.skops")
    model_dir = root / "models"
    argv = ["import", "risk", "--estimator", str(root / "risk.skops"), "--data"]
    argv += [str(root / "risk.csv"), "--target", "risk", "--model-dir", str(model_dir)]
    assert models_main(argv) == 0
    return model_dir, root / "risk.csv"


def test_the_quick_red_team_reports_on_the_imported_model(
    imported: tuple[Path, Path], tmp_path: Path
) -> None:
    model_dir, data = imported
    out = tmp_path / "report"
    argv = ["--quick", "--models", "risk", "--data", str(data), "--model-dir", str(model_dir)]
    redteam_main([*argv, "--out", str(out), "--adv-model-dir", str(tmp_path / "none")])
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["risk"]
    report = (out / "report.md").read_text()
    assert "| risk | uniform extraction flagged within 100 rows" in report
    assert "### risk" in report  # its robustness table, with intervals
    table = results["models"]["risk"]["robustness"]
    assert {"none", "squeeze flag", "squeeze refuse", "smoothing"} <= set(table)
    assert all(row["rows"] == 30 and len(row["success_ci"]) == 2 for row in table.values())


def test_the_red_team_refuses_other_data_than_the_model_was_imported_from(
    imported: tuple[Path, Path], tmp_path: Path
) -> None:
    model_dir, data = imported
    with pytest.raises(ValueError, match="give it with --data risk=FILE"):
        load_cases(model_dir, ["risk"])
    edited = tmp_path / "risk.csv"
    edited.write_text(data.read_text().replace("high", "low", 1))
    with pytest.raises(ValueError, match="is not the risk.csv that risk was imported from"):
        load_cases(model_dir, ["risk"], {"risk": edited})
    (case,) = load_cases(model_dir, ["risk"], {"risk": data})
    assert case.x_test.shape == (120, 5) and set(case.y_test) == {"low", "high"}
