"""The squeezing-refusal leak measurement (``mlmoat redteam leak``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlmoat.redteam import squeeze_leak
from mlmoat.redteam.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_auc_is_half_for_an_independent_bit_and_one_for_the_low_margin_rows_themselves() -> None:
    low = np.array([True, True, False, False] * 50)
    assert squeeze_leak.binary_auc(low, low) == 1.0
    independent = np.array([True, False] * 100)  # refused on every other row, margin or not
    assert squeeze_leak.binary_auc(independent, low) == 0.5
    assert squeeze_leak.binary_auc(~low, low) == 0.0


def test_mutual_information_is_one_bit_for_equal_fair_bits_and_zero_for_independent() -> None:
    a = np.array([True, False] * 100)
    assert squeeze_leak.mutual_information(a, a) == pytest.approx(1.0)
    b = np.array([True, True, False, False] * 50)
    assert squeeze_leak.mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)


def test_wilson_interval_matches_the_closed_form() -> None:
    low, high = squeeze_leak.wilson(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    assert squeeze_leak.wilson(0, 10)[0] == 0.0
    assert round(squeeze_leak.wilson(0, 10)[1], 4) == 0.2775


def test_margins_are_top_one_minus_top_two() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.4, 0.45, 0.15]])
    assert squeeze_leak.margins(probabilities) == pytest.approx([0.5, 0.05])


def test_the_refusal_bit_is_what_refuse_answers_for_each_row_asked_alone() -> None:
    from mlmoat.redteam.cases import load_cases
    from security.defences import Squeezer
    from security.errors import AdversarialInputError
    from security.model import ModelRegistry

    models = REPO / "models"
    served = ModelRegistry.load(str(models)).get("iris")
    (case,) = load_cases(models, ["iris"])
    flag = Squeezer.from_manifest(models, [("iris", served.version)], policy="flag")
    refuse = Squeezer.from_manifest(models, [("iris", served.version)], policy="refuse")
    rows = np.random.default_rng(3).uniform(case.lower, case.upper, size=(200, 4))
    mask = flag.check(served, rows).flagged_mask
    refused = []
    for row in rows:
        try:
            refuse.check(served, row.reshape(1, -1))
            refused.append(False)
        except AdversarialInputError:
            refused.append(True)
    assert mask.any() and list(mask) == refused
    figures = squeeze_leak.measure(models, "iris", uniform_rows=200, seed=3)
    assert figures["rows"] == case.x_test.shape[0] + 200
    assert figures["overall"]["refused"] == (
        figures["low_margin"]["refused"] + figures["other"]["refused"]
    )


def test_the_quick_leak_report_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["leak", "--quick", "--out", str(tmp_path), "--model-dir", str(REPO / "models")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Squeezing refusals as a boundary oracle" in out
    results = json.loads((tmp_path / "squeeze_leak.json").read_text())
    assert [r["model"] for r in results] == ["iris", "breast-cancer-forest"]
    assert all(0.0 <= r["auc_low_margin"] <= 1.0 for r in results)
