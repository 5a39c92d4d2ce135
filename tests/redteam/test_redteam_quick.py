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
def test_every_flag_reached_the_key_item(results: dict[str, Any], model: str) -> None:
    written = results["models"][model]["flags_written"]
    assert written["flagged"] >= 27 and written["on_key"] == written["flagged"]


@pytest.mark.parametrize("model", MODELS)
def test_boundary_probing_is_flagged_within_300_rows(results: dict[str, Any], model: str) -> None:
    rows = results["models"][model]["detection"]["boundary"]
    assert all(r is not None and r <= 300 for r in rows)


@pytest.mark.parametrize("model", MODELS)
def test_benign_keys_are_never_flagged(results: dict[str, Any], model: str) -> None:
    assert results["models"][model]["benign_false_flags"] == [None] * 4


@pytest.mark.parametrize("model", MODELS)
def test_default_configuration_keeps_membership_inference_near_chance(
    results: dict[str, Any], model: str
) -> None:
    # default: probabilities:2 with squeezing on (flag)
    assert results["models"][model]["membership"]["rounded2"]["auc"] <= 0.55


def test_the_overfit_forest_leaks_membership_without_defences(results: dict[str, Any]) -> None:
    membership = results["models"]["breast-cancer-forest"]["membership"]
    assert membership["raw"]["auc"] >= 0.65
    # rounding alone does not remove it; squeezing (the default) does
    assert membership["rounded2_nosqueeze"]["auc"] >= 0.65


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
