"""Feature squeezing and disagreement detection (security.defences)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from security.defences import SqueezeConfig, Squeezer, load_defences
from security.errors import AdversarialInputError, ModelIntegrityError


class StepModel:
    """A two-class model whose answer flips sharply at x0 = 0.52 (a boundary inside a grid cell)."""

    name = "step"

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-200.0 * (np.asarray(rows)[:, 0] - 0.52)))
        return np.column_stack([1 - p, p])


def _config(threshold: float = 0.5) -> SqueezeConfig:
    return SqueezeConfig.from_envelope(
        model="step",
        model_version="step-1",
        lower=[0.0, 0.0],
        upper=[1.0, 1.0],
        levels=10,
        threshold=threshold,
    )


def test_squeeze_snaps_each_feature_to_the_envelope_grid() -> None:
    # given a 10-level grid over [0, 1]
    config = _config()
    # when rows are squeezed
    squeezed = config.squeeze(np.array([[0.53, 0.04], [0.96, 0.151]]))
    # then every value lands on the nearest multiple of 0.1
    assert np.allclose(squeezed, [[0.5, 0.0], [1.0, 0.2]])


def test_a_perturbation_across_the_boundary_is_flagged_and_undone() -> None:
    # given a clean row at 0.50 (class 0) and its adversarial twin at 0.54 (class 1, same cell)
    squeezer = Squeezer({"step": _config()}, policy="flag")
    rows = np.array([[0.50, 0.5], [0.54, 0.5]])
    # when checked
    result = squeezer.check(StepModel(), rows)
    # then the twin is flagged, and the served (squeezed) answer for it is the clean class
    assert result.flagged_mask.tolist() == [False, True]
    assert result.scores[1] > 1.0
    assert result.probabilities.argmax(axis=1).tolist() == [0, 0]


def test_refuse_policy_raises_on_a_flagged_row() -> None:
    squeezer = Squeezer({"step": _config()}, policy="refuse")
    with pytest.raises(AdversarialInputError) as info:
        squeezer.check(StepModel(), np.array([[0.30, 0.5], [0.54, 0.5]]))
    assert info.value.reason == "adversarial_input"


def test_off_policy_predicts_the_raw_rows_and_scores_nothing() -> None:
    squeezer = Squeezer({}, policy="off")
    result = squeezer.check(StepModel(), np.array([[0.54, 0.5]]))
    assert result.flagged == 0
    assert result.squeezed_rows.tolist() == [[0.54, 0.5]]
    assert result.probabilities.argmax(axis=1).tolist() == [1]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="squeeze policy"):
        Squeezer({}, policy="maybe")


def _write(model_dir: Path, name: str, version: str) -> None:
    (model_dir / name).mkdir(parents=True)
    config = SqueezeConfig.from_envelope(
        model=name, model_version=version, lower=[0.0], upper=[1.0], levels=4, threshold=0.3
    )
    (model_dir / name / "defences.json").write_text(
        json.dumps({"squeeze": config.to_dict(), "monitor": {}, "calibration": {}})
    )


def test_from_manifest_loads_the_calibration_of_the_served_version(tmp_path: Path) -> None:
    _write(tmp_path, "m1", "m1-aaaa")
    squeezer = Squeezer.from_manifest(tmp_path, [("m1", "m1-aaaa")], policy="flag")
    config = squeezer.config("m1")
    assert config is not None and config.threshold == 0.3 and config.step == (0.25,)


def test_from_manifest_refuses_a_calibration_for_another_version(tmp_path: Path) -> None:
    _write(tmp_path, "m2", "m2-old")
    with pytest.raises(ModelIntegrityError) as info:
        Squeezer.from_manifest(tmp_path, [("m2", "m2-new")], policy="flag")
    assert info.value.reason == "defences_version_mismatch"


def test_from_manifest_refuses_a_missing_file_unless_off(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError):
        Squeezer.from_manifest(tmp_path, [("m3", "m3-1")], policy="refuse")
    assert Squeezer.from_manifest(tmp_path, [("m3", "m3-1")], policy="off").config("m3") is None


def test_with_failures_a_bad_file_drops_that_model_alone(tmp_path: Path) -> None:
    # given three models: one calibrated, one with a malformed file, one with none at all
    _write(tmp_path, "good", "good-1")
    _write(tmp_path, "broken", "broken-1")
    (tmp_path / "broken" / "defences.json").write_text("{not json")
    (tmp_path / "bare").mkdir()
    served = [("good", "good-1"), ("broken", "broken-1"), ("bare", "bare-1")]
    # when loaded with a failures record under a policy that needs a calibration
    failures: dict[str, ModelIntegrityError] = {}
    squeezer = Squeezer.from_manifest(tmp_path, served, policy="flag", failures=failures)
    # then each failing model is recorded with its reason and the calibrated one is loaded
    assert {name: error.reason for name, error in failures.items()} == {
        "broken": "defences_malformed",
        "bare": "defences_missing",
    }
    assert squeezer.config("good") is not None and squeezer.config("broken") is None


def test_malformed_defences_file_is_an_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / "defences.json"
    path.write_text(json.dumps({"squeeze": {"origin": [0.0], "step": [0.0]}}))
    with pytest.raises(ModelIntegrityError):
        load_defences(path)


@pytest.mark.parametrize("name", ["iris", "breast-cancer", "breast-cancer-forest"])
def test_shipped_calibration_matches_the_shipped_model(name: str) -> None:
    # given the committed artifacts, when the squeezer loads them, then versions agree
    model_dir = Path(__file__).resolve().parents[2] / "models"
    manifest = json.loads((model_dir / name / "manifest.json").read_text())
    squeezer = Squeezer.from_manifest(model_dir, [(name, manifest["version"])], policy="flag")
    config = squeezer.config(name)
    assert config is not None and config.n_features == len(manifest["feature_names"])
