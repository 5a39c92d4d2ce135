"""``mlmoat redteam --quick``: the attacks run end to end and the defences meet their targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlmoat.redteam.cli import main

MODELS = ("iris", "breast-cancer", "breast-cancer-forest")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("redteam-quick")
    model_dir = Path(__file__).resolve().parents[2] / "models"
    main(["--quick", "--out", str(out), "--model-dir", str(model_dir), "--seed", "11"])
    for name in (
        "report.md",
        "results.json",
        "extraction_fidelity.png",
        "detection.png",
        "mia_roc.png",
    ):
        assert (out / name).stat().st_size > 0
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


@pytest.mark.parametrize("model", MODELS)
def test_uniform_extraction_is_flagged_within_100_rows(results: dict[str, Any], model: str) -> None:
    for kind in ("uniform", "uniform_batches_of_10"):
        rows = results["models"][model]["detection"][kind]
        assert sum(1 for r in rows if r is not None and r <= 100) >= 9


@pytest.mark.parametrize("model", MODELS)
def test_boundary_probing_is_flagged_within_300_rows(results: dict[str, Any], model: str) -> None:
    rows = results["models"][model]["detection"]["boundary"]
    assert all(r is not None and r <= 300 for r in rows)


@pytest.mark.parametrize("model", MODELS)
def test_benign_keys_are_never_flagged(results: dict[str, Any], model: str) -> None:
    assert results["models"][model]["benign_false_flags"] == [None] * 4


@pytest.mark.parametrize("model", ["iris", "breast-cancer"])
def test_default_policy_keeps_membership_inference_near_chance(
    results: dict[str, Any], model: str
) -> None:
    assert results["models"][model]["membership"]["rounded2"]["auc"] <= 0.55


def test_the_overfit_forest_leaks_membership_through_raw_probabilities(
    results: dict[str, Any],
) -> None:
    membership = results["models"]["breast-cancer-forest"]["membership"]
    assert membership["raw"]["auc"] >= 0.65
    # label-only output removes most of it
    assert membership["label"]["auc"] <= 0.6


@pytest.mark.xfail(
    strict=True,
    reason="missed target: rounding to 2 decimals still shows the "
    "forest's 1.00 confidence on members (see docs/ml-defences.md)",
)
def test_default_policy_on_the_overfit_forest(results: dict[str, Any]) -> None:
    assert results["models"]["breast-cancer-forest"]["membership"]["rounded2"]["auc"] <= 0.55


@pytest.mark.parametrize("model", MODELS)
def test_squeezing_false_detections_at_most_5_percent(results: dict[str, Any], model: str) -> None:
    assert results["models"][model]["hopskipjump"]["false_detections"]["held_out"] <= 0.05


@pytest.mark.parametrize("model", MODELS)
def test_a_label_surrogate_needs_queries_the_report_states(
    results: dict[str, Any], model: str
) -> None:
    extraction = results["models"][model]["extraction"]["results"]
    for key in ("raw/uniform", "label/uniform", "rounded2/boundary"):
        assert set(extraction[key]["queries_for_95"]) == {"label", "probabilities"}
