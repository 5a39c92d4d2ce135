"""``mlmoat redteam --models NAME --quick`` on a mixed-type pipeline (numeric and string columns).

The pipeline is trained on a DataFrame, saved with joblib and imported by the test; the red team
re-reads its CSV (categories as the manifest records them) and attacks it through the real
functions: every stream sends the categorical features as category strings (uniform extraction
draws them uniformly, the adaptive attacker by their held-out frequencies per class), and the
surrogates one-hot encode them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pandas")

import joblib  # noqa: E402

from mixedsupport import COLUMNS, churn_frame, churn_pipeline  # noqa: E402
from mlmoat.models_cli import main as models_main  # noqa: E402
from mlmoat.redteam.cases import load_cases  # noqa: E402
from mlmoat.redteam.cli import main as redteam_main  # noqa: E402
from mlmoat.redteam.traffic import data_rows, uniform_rows  # noqa: E402


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("redteam-mixed")
    frame = churn_frame()
    frame.to_csv(root / "churn.csv", index=False)
    joblib.dump(churn_pipeline().fit(frame[COLUMNS], frame["churned"]), root / "churn.joblib")
    model_dir = root / "models"
    argv = ["import", "churn", "--estimator", str(root / "churn.joblib"), "--allow-pickle"]
    argv += ["--data", str(root / "churn.csv"), "--target", "churned"]
    assert models_main([*argv, "--model-dir", str(model_dir)]) == 0
    return model_dir, root / "churn.csv"


def test_the_attack_streams_draw_only_valid_categories(imported: tuple[Path, Path]) -> None:
    model_dir, data = imported
    (case,) = load_cases(model_dir, ["churn"], {"churn": data})
    assert case.categorical == (2, 3)
    rng = np.random.default_rng(0)
    uniform = uniform_rows(case.domain, 4000, rng)
    adaptive = data_rows(case.x_test, case.y_test, case.domain, 4000, rng)
    for rows in (uniform, adaptive):
        for j, k in ((2, 3), (3, 4)):
            assert set(np.unique(rows[:, j])) == set(map(float, range(k)))
    # uniform draws each category about equally often
    counts = np.bincount(uniform[:, 3].astype(int), minlength=4) / 4000
    assert np.abs(counts - 0.25).max() < 0.03
    # the adaptive attacker follows the held-out frequencies of each class
    for label in ("churn", "stay"):
        members = case.x_test[case.y_test == label]
        expected = np.bincount(members[:, 2].astype(int), minlength=3) / len(members)
        drawn = data_rows(
            members, np.full(len(members), label), case.domain, 6000, np.random.default_rng(1)
        )
        got = np.bincount(drawn[:, 2].astype(int), minlength=3) / 6000
        assert np.abs(got - expected).max() < 0.03
    # what the API is sent: the category strings
    wire = case.wire_rows(uniform[:2])
    assert all(isinstance(row[2], str) and isinstance(row[3], str) for row in wire)


def test_the_quick_red_team_reports_on_the_mixed_model(
    imported: tuple[Path, Path], tmp_path: Path
) -> None:
    model_dir, data = imported
    out = tmp_path / "report"
    argv = ["--quick", "--models", "churn", "--data", str(data), "--model-dir", str(model_dir)]
    redteam_main([*argv, "--out", str(out), "--adv-model-dir", str(tmp_path / "none")])
    results = json.loads((out / "results.json").read_text())
    figures = results["models"]["churn"]
    report = (out / "report.md").read_text()
    assert "| churn | uniform extraction flagged within 100 rows" in report
    # benign callers (real categories) are not flagged: no refusals, no poison messages
    assert figures["benign_false_flags"] == [None, None]
    assert all(rows > 0 for rows in figures["benign_rows_monitored"])
    # and the monitor, which sees every query (rows monitored, no poison messages), flags the
    # attackers: the boundary prober and the uniform one, within the 300 quick rows
    detection = figures["detection"]
    assert any(row is not None for row in detection["boundary"])
    assert any(row is not None for row in detection["uniform"] + detection["uniform_batches_of_10"])
    table = figures["robustness"]
    assert {"none", "squeeze flag", "squeeze refuse", "smoothing"} <= set(table)
    assert all(row["rows"] == 30 and len(row["success_ci"]) == 2 for row in table.values())
    assert len(figures["adaptive"]["worst_fidelity"]) == len(figures["adaptive"]["counts"])
