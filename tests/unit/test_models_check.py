"""``mlmoat models check``: every model directory verified, one line each, non-zero on a failure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlmoat import cli
from mlmoat.models_check import NO_PARITY, check_models
from security.model import ServedModel

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(MODELS, target)
    return target


def _run(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, str]]:
    code = cli.main(["models", "check", "--model-dir", str(model_dir)])
    lines = capsys.readouterr().out.splitlines()
    return code, {line.split()[0]: line for line in lines}


def _edit(path: Path, change: Any) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_the_shipped_models_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = _run(MODELS, capsys)
    assert code == 0
    assert sorted(lines) == ["breast-cancer", "breast-cancer-forest", "iris"]
    # the shipped manifests record no parity sample: said, and not a failure
    assert all(line.split()[1] == "ok" and NO_PARITY in line for line in lines.values())


def test_a_broken_directory_fails_and_names_each_model_and_reason(
    model_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given one bit of iris's ONNX flipped, breast-cancer without defences.json and
    # breast-cancer-forest with a monitor reference that does not parse
    onnx = model_copy / "iris" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    (model_copy / "breast-cancer" / "defences.json").unlink()
    _edit(
        model_copy / "breast-cancer-forest" / "defences.json",
        lambda d: d["monitor"].__setitem__("prototypes", "not rows"),
    )
    # when checked, then the command fails and each line says what failed
    code, lines = _run(model_copy, capsys)
    assert code == 1
    assert "FAILED  model_hash_mismatch" in lines["iris"]
    assert "FAILED  defences_missing" in lines["breast-cancer"]
    assert "FAILED  defences_malformed" in lines["breast-cancer-forest"]


def test_a_calibration_for_another_version_fails(model_copy: Path) -> None:
    def stale(document: dict[str, Any]) -> None:
        document["model_version"] = document["squeeze"]["model_version"] = "iris-000000000000"

    _edit(model_copy / "iris" / "defences.json", stale)
    passed, why = check_models(model_copy)["iris"]
    assert not passed and why.startswith("defences_version_mismatch")


def _record_parity(model_dir: Path, name: str, shift: float = 0.0) -> None:
    # a held-out sample as the manifest would record it: rows and the probabilities served
    model = ServedModel.from_directory(model_dir / name)
    rng = np.random.default_rng(3)
    low, high = model.manifest.envelope_min, model.manifest.envelope_max
    rows = rng.uniform(low, high, size=(8, model.n_features))
    proba = model.predict_proba(rows)
    proba[:, 0] += shift

    def add(document: dict[str, Any]) -> None:
        document["parity"] = {"rows": rows.tolist(), "probabilities": proba.tolist()}

    _edit(model_dir / name / "manifest.json", add)


def test_a_recorded_held_out_sample_is_checked(model_copy: Path) -> None:
    _record_parity(model_copy, "iris")
    passed, what = check_models(model_copy)["iris"]
    assert passed and what == "parity on 8 recorded rows within 1e-05"


def test_a_graph_that_does_not_reproduce_its_recorded_sample_fails(
    model_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_parity(model_copy, "iris", shift=0.01)
    code, lines = _run(model_copy, capsys)
    assert code == 1 and "FAILED  parity_mismatch" in lines["iris"]
    assert lines["breast-cancer"].split()[1] == "ok"


def test_no_model_directory_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "check", "--model-dir", str(tmp_path / "absent")]) == 1
    assert "model_dir_missing" in capsys.readouterr().err
    assert cli.main(["models", "check", "--model-dir", str(tmp_path)]) == 1
    assert "no_models" in capsys.readouterr().err


def test_make_build_runs_the_check_before_sam_build() -> None:
    # the recipe of the build's stamp: the check is its first command, before `sam build`
    makefile = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(makefile) if line.startswith(".aws-sam/build/.stamp:"))
    recipe = []
    for line in makefile[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    assert recipe[0] == "$(BIN)/mlmoat models check --model-dir models"
    assert recipe[1].startswith("$(SAM) build")


def test_a_monitor_calibrated_on_an_earlier_state_layout_is_reported(model_copy: Path) -> None:
    # given a monitor section from before state layout 3 (no state_layout)
    def earlier(document: dict[str, Any]) -> None:
        del document["monitor"]["state_layout"]

    _edit(model_copy / "iris" / "defences.json", earlier)
    passed, what = check_models(model_copy)["iris"]
    # then the model still passes (it serves; PRADA alone is off) and the check says so
    assert passed and "state layout 2: PRADA disabled" in what, what
    assert "mlmoat redteam calibrate --models iris" in what
    assert "PRADA" not in check_models(model_copy)["breast-cancer"][1]


def test_an_imported_models_stale_monitor_names_its_data(model_copy: Path) -> None:
    def imported(document: dict[str, Any]) -> None:
        document["train_split"] = {**document.get("train_split", {}), "dataset": "csv"}

    _edit(model_copy / "iris" / "manifest.json", imported)
    _edit(model_copy / "iris" / "defences.json", lambda d: d["monitor"].pop("state_layout"))
    passed, what = check_models(model_copy)["iris"]
    assert passed and "--models iris --data iris=FILE` (FILE: the CSV" in what, what
