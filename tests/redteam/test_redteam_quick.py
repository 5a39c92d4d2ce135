"""``mlmoat redteam --quick``: the attacks run end to end and the defences meet their targets.

One quick run per test session (iris and the overfit forest, seed 11) through the real handlers
on one embedded moto server; every test reads its results. The default run measures the same
targets with more seeded runs, keys, rows and models (docs/ml-defences.md, "Measured").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlmoat.redteam.cli import QUICK_MODELS, main
from mlmoat.redteam.run import QUICK, targets

MODELS = QUICK_MODELS
FILES = ("report.md", "results.json", "extraction_fidelity.png", "detection.png", "mia_roc.png")


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("redteam-quick")
    repo = Path(__file__).resolve().parents[2]
    status = main(
        [
            "--quick",
            "--out",
            str(out),
            "--model-dir",
            str(repo / "models"),
            "--adv-model-dir",
            str(repo / "models-adv"),
            "--seed",
            "11",
        ]
    )
    return out, status


@pytest.fixture(scope="session")
def results(quick_run: tuple[Path, int]) -> dict[str, Any]:
    out, _ = quick_run
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


def test_the_quick_run_writes_the_report_with_every_target(
    quick_run: tuple[Path, int], results: dict[str, Any]
) -> None:
    # given the quick run, when it finishes, then the report states each target per model and
    # the exit status says whether any was missed (the tests below assert the targets one by one)
    out, status = quick_run
    assert sorted(results["models"]) == sorted(MODELS)
    for name in FILES:
        assert (out / name).stat().st_size > 0
    rows = targets(results)
    assert status == (1 if any(row["met"] is False for row in rows) else 0)
    report = (out / "report.md").read_text()
    for row in rows:
        assert f"| {row['model']} | {row['target']} | {row['measured']} |" in report
    # six targets per model, and the robustness target on the breast-cancer model (the forest)
    assert len(rows) == 6 * len(MODELS) + 1


def test_the_quick_report_has_the_robustness_table_with_intervals(
    quick_run: tuple[Path, int], results: dict[str, Any]
) -> None:
    # given the quick run, then every model has a robustness row per quick configuration, with
    # the adversarially trained variant, and the report prints each with its Wilson interval
    out, _ = quick_run
    report = (out / "report.md").read_text()
    assert "## Robustness to HopSkipJump (seed 11)" in report
    for model in MODELS:
        table = results["models"][model]["robustness"]
        assert QUICK.robustness is not None and set(table) == set(QUICK.robustness)
        assert table["adversarial training"]["model"] == f"{model}-adv"
        assert table["smoothing"]["sigma"] is not None and table["smoothing"]["n"] >= 16
        for name, row in table.items():
            assert row["rows"] == QUICK.hsj_rows
            low, high = row["success_ci"]
            assert low <= row["success_rate"] <= high
            assert row["successes"] == round(row["success_rate"] * row["rows"])
            line = (
                f"| {name}"
                + (f" (sigma {row['sigma']}, n {row['n']})" if row["sigma"] else "")
                + f" | {row['model']} | {row['successes']}/{row['rows']} = "
                f"{row['success_rate']:.3f} | [{low:.3f}, {high:.3f}] |"
            )
            assert line in report, line
        # squeezing's refusals are the accuracy cost of refuse: never above the flag policy's
        assert table["squeeze refuse"]["accuracy"] <= table["squeeze flag"]["accuracy"]


@pytest.mark.parametrize("model", MODELS)
def test_uniform_extraction_is_flagged_within_100_rows(results: dict[str, Any], model: str) -> None:
    for kind in ("uniform", "uniform_batches_of_10"):
        rows = results["models"][model]["detection"][kind]
        assert len(rows) == QUICK.detection_seeds
        # the target is >= 9 of 10 runs; of 3 runs that is every run
        assert sum(1 for r in rows if r is not None and r <= 100) >= 0.9 * len(rows)


@pytest.mark.parametrize("model", MODELS)
def test_every_flag_reached_the_key_item(results: dict[str, Any], model: str) -> None:
    detection = results["models"][model]["detection"]
    detected = sum(1 for rows in detection.values() for r in rows if r is not None)
    written = results["models"][model]["flags_written"]
    assert written["flagged"] == detected == 3 * QUICK.detection_seeds
    assert written["on_key"] == written["flagged"]


@pytest.mark.parametrize("model", MODELS)
def test_boundary_probing_is_flagged_within_300_rows(results: dict[str, Any], model: str) -> None:
    rows = results["models"][model]["detection"]["boundary"]
    assert len(rows) == QUICK.detection_seeds
    assert all(r is not None and r <= 300 for r in rows)


@pytest.mark.parametrize("model", MODELS)
def test_benign_keys_are_never_flagged(results: dict[str, Any], model: str) -> None:
    out = results["models"][model]
    assert out["benign_false_flags"] == [None] * QUICK.benign_keys
    # "never flagged" means something only if the monitor saw the stream: at least 4 of the 5
    # windows of 200 rows per key (the predict path drops a queue message, by design, when the
    # local queue does not answer within the sink's 0.5 s read timeout on a loaded machine)
    monitored = out["benign_rows_monitored"]
    assert len(monitored) == QUICK.benign_keys
    assert all(0.8 * QUICK.benign_rows <= rows <= QUICK.benign_rows for rows in monitored)


@pytest.mark.parametrize("model", MODELS)
def test_default_configuration_keeps_membership_inference_near_chance(
    results: dict[str, Any], model: str
) -> None:
    # default: probabilities:2 with squeezing on (flag)
    assert results["models"][model]["membership"]["rounded2"]["auc"] <= 0.55


def test_the_overfit_forest_leaks_membership_unless_squeezed_or_label_only(
    results: dict[str, Any],
) -> None:
    membership = results["models"]["breast-cancer-forest"]["membership"]
    assert membership["raw"]["auc"] >= 0.65
    # rounding alone does not remove it; squeezing (the default) does
    assert membership["rounded2_nosqueeze"]["auc"] >= 0.65
    # the operator's setting for this model (label-only keys) removes it without squeezing
    assert membership["label_nosqueeze"]["auc"] <= 0.55


@pytest.mark.parametrize("model", MODELS)
def test_squeezing_false_detections_at_most_5_percent(results: dict[str, Any], model: str) -> None:
    assert results["models"][model]["hopskipjump"]["false_detections"]["held_out"] <= 0.05


def test_refusing_keeps_the_forests_clean_accuracy_within_two_points(
    results: dict[str, Any],
) -> None:
    # The forest's squeezing threshold is calibrated so that refusing costs at most 2 points of
    # clean accuracy (tests/redteam/test_refuse_calibration.py checks the calibration itself);
    # here the red team's own measurement through the functions agrees. Whether refusing also
    # halves HopSkipJump's success is not decided on 30 rows (3/30 against 2/30 on one machine,
    # 0/30 on another: the attack's path turns on the last bits of the forest's floats): the
    # full run judges it on 200 rows (docs/ml-defences.md, "Robustness table").
    table = results["models"]["breast-cancer-forest"]["robustness"]
    assert table["none"]["rows"] == table["squeeze refuse"]["rows"] == QUICK.hsj_rows
    assert table["squeeze refuse"]["accuracy"] >= table["none"]["accuracy"] - 0.02
    # and refusing does refuse: fewer clean rows are answered (right) than undefended
    assert table["squeeze refuse"]["accuracy"] < table["none"]["accuracy"]


@pytest.mark.parametrize("model", MODELS)
def test_the_report_gives_the_adaptive_attackers_clone_fidelity_and_flag_rows(
    quick_run: tuple[Path, int], results: dict[str, Any], model: str
) -> None:
    adaptive = results["models"][model]["adaptive"]
    assert len(adaptive["flagged_at"]) == QUICK.detection_seeds
    assert adaptive["counts"][-1] == 200 and len(adaptive["worst_fidelity"]) == 6
    # in-distribution queries clone these tabular models: 95% agreement within 200 rows
    assert adaptive["worst_fidelity"][-1] >= 0.95
    out, _ = quick_run
    assert "### Adaptive extraction" in (out / "report.md").read_text()


def test_iris_is_extracted_whatever_the_output_policy(results: dict[str, Any]) -> None:
    # 4 features, 3 separable classes: a label surrogate agrees on 95% within 200 uniform queries
    extraction = results["models"]["iris"]["extraction"]["results"]
    for key in ("raw/uniform", "label/uniform"):
        reached = extraction[key]["queries_for_95"]["label"]
        assert reached is not None and reached <= 200


def test_uniform_queries_do_not_extract_the_forest(results: dict[str, Any]) -> None:
    # uniform rows in the 30-feature envelope are all answered with one class
    extraction = results["models"]["breast-cancer-forest"]["extraction"]["results"]
    for key in ("raw/uniform", "label/uniform"):
        assert extraction[key]["queries_for_95"] == {"label": None, "probabilities": None}


def test_the_functions_ran_from_the_lambda_build_and_logged_whole_audit_records(
    quick_run: tuple[Path, int], results: dict[str, Any]
) -> None:
    # given the quick run, whose functions ran from the Lambda build under CPython 3.13, one
    # process each, all writing the one audit log: then every line is a whole JSON record, the
    # predict function logged its requests, and the monitor one flag record per flag written
    out, _ = quick_run
    records = [json.loads(line) for line in (out / "audit.log").read_text().splitlines()]
    predicts = [r for r in records if r.get("event") == "request"]
    flags = [r for r in records if r.get("event") == "extraction_flag"]
    assert len(predicts) > 100
    assert {r["route"] for r in predicts} == {"/models/{model}/predict"}
    written = sum(m["flags_written"]["flagged"] for m in results["models"].values())
    assert len(flags) == written > 0
