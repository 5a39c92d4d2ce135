"""``mlmoat models import``: a user's fitted classifier and CSV become a served model directory.

Every model here is trained and saved by the test itself (joblib and skops), on a CSV it writes
with column names no identifier rule would accept, so nothing of the shipped ``models/`` is used.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import make_classification
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from mlmoat import models_import
from mlmoat.models_cli import main
from security.model import ModelRegistry

COLUMNS = ["Age (years)", "Income $", "score-1", "score 2", "3rd", "x"]
LABELS = np.array(["gold", "silver", "bronze"])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # given a CSV of 6 numeric features and a string target, and two fitted classifiers
    root = tmp_path_factory.mktemp("byom")
    x, y = make_classification(
        n_samples=480, n_features=6, n_informative=4, n_classes=3, random_state=3
    )
    x = x.round(6)
    with (root / "customers.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*COLUMNS, "segment"])
        for row, label in zip(x, LABELS[y], strict=True):
            writer.writerow([f"{v:.6f}" for v in row] + [label])
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, LABELS[y])
    sio.dump(pipeline, root / "pipeline.skops")
    joblib.dump(pipeline, root / "pipeline.joblib")
    boosted = GradientBoostingClassifier(n_estimators=20, random_state=0).fit(x, LABELS[y])
    joblib.dump(boosted, root / "boosted.joblib")
    return root


def _import(workdir: Path, out: Path, name: str, *extra: str) -> int:
    return main(
        [
            "import",
            name,
            *extra,
            "--data",
            str(workdir / "customers.csv"),
            "--target",
            "segment",
            "--model-dir",
            str(out),
        ]
    )


def test_a_skops_pipeline_becomes_a_served_model_that_answers_as_the_estimator(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # when the skops file is imported
    assert (
        _import(workdir, tmp_path, "customers", "--estimator", str(workdir / "pipeline.skops")) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    # then the three files are there, the columns are safe feature names (mapping printed)
    directory = tmp_path / "customers"
    assert sorted(p.name for p in directory.iterdir()) == [
        "defences.json",
        "manifest.json",
        "model.onnx",
    ]
    assert summary["features"] == [
        ["age_years", "Age (years)"],
        ["income", "Income $"],
        ["score_1", "score-1"],
        ["score_2", "score 2"],
        ["f_3rd", "3rd"],
        ["x", "x"],
    ]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["feature_names"] == [name for name, _ in summary["features"]]
    assert manifest["classes"] == ["bronze", "gold", "silver"]
    assert manifest["metrics"]["n_test"] == summary["parity_rows"] == 144
    # the import says which budget keeps an adaptive clone below 90% agreement
    assert summary["recommended_budget"]["max_fidelity"] == 0.9
    assert summary["budget_note"]
    # the data is named by file and hash, never copied
    assert manifest["train_split"]["sha256"] and "rows" not in manifest["train_split"]
    defences = json.loads((directory / "defences.json").read_text())
    assert defences["model_version"] == manifest["version"]
    assert set(defences) >= {"squeeze", "smoothing", "monitor"}
    # and the registry serves it with the estimator's probabilities on its parity sample
    served = ModelRegistry.load(tmp_path).get("customers")
    estimator = sio.load(workdir / "pipeline.skops")
    rows = np.asarray(manifest["parity"]["rows"])
    assert np.abs(served.predict_proba(rows) - estimator.predict_proba(rows)).max() <= 1e-5
    # and mlmoat models check verifies the artifact against that sample
    capsys.readouterr()
    assert main(["check", "--model-dir", str(tmp_path)]) == 0
    assert "parity on 32 recorded rows within 1e-05" in capsys.readouterr().out
    # a graph whose bytes changed fails the check (and would be refused at init)
    onnx_file = directory / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-8] + b"\x00" * 8)
    assert main(["check", "--model-dir", str(tmp_path)]) == 1


def test_the_same_inputs_give_the_same_bytes(workdir: Path, tmp_path: Path) -> None:
    for out in ("a", "b"):
        assert (
            _import(workdir, tmp_path / out, "same", "--estimator", str(workdir / "pipeline.skops"))
            == 0
        )
    for name in ("model.onnx", "manifest.json", "defences.json"):
        assert (tmp_path / "a" / "same" / name).read_bytes() == (
            tmp_path / "b" / "same" / name
        ).read_bytes(), name


def test_a_pickle_loads_only_when_allowed(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a pickle runs code when loaded: refused without the flag, nothing written
    assert (
        _import(workdir, tmp_path, "boosted", "--estimator", str(workdir / "boosted.joblib")) == 2
    )
    assert "--allow-pickle" in capsys.readouterr().err
    assert not (tmp_path / "boosted").exists()
    # with it, the ensemble imports and parity holds on every held-out row
    status = _import(
        workdir,
        tmp_path,
        "boosted",
        "--estimator",
        str(workdir / "boosted.joblib"),
        "--allow-pickle",
    )
    assert status == 0
    assert json.loads(capsys.readouterr().out)["estimator"] == "GradientBoostingClassifier"
    assert "boosted" in ModelRegistry.load(tmp_path)


def test_a_skops_file_with_untrusted_types_is_refused_until_they_are_named(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a pipeline whose first step calls functools.partial(numpy.clip)
    x = np.random.default_rng(0).normal(size=(120, 6))
    y = LABELS[(x[:, 0] > 0).astype(int)]
    clip = FunctionTransformer(functools.partial(np.clip, a_min=-3, a_max=3))
    sio.dump(make_pipeline(clip, LogisticRegression()).fit(x, y), tmp_path / "clip.skops")
    # then skops' untrusted types are listed and refused
    assert _import(workdir, tmp_path, "clip", "--estimator", str(tmp_path / "clip.skops")) == 2
    err = capsys.readouterr().err
    assert "functools.partial" in err and "numpy.clip" in err and "--trust" in err
    # and once trusted, skl2onnx's refusal names the step it cannot convert; nothing written
    trusted = ("--trust", "functools.partial,numpy.clip")
    status = _import(
        workdir, tmp_path, "clip", "--estimator", str(tmp_path / "clip.skops"), *trusted
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "skl2onnx cannot convert Pipeline(FunctionTransformer, LogisticRegression)" in err
    assert "FunctionTransformer" in err.split(": ", 2)[-1]  # the step, not only the pipeline
    assert not (tmp_path / "clip").exists()


def test_a_graph_that_disagrees_with_the_estimator_is_refused_with_its_rows(
    workdir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a converter that exports another model (the estimator fitted on shuffled labels)
    real = models_import.convert
    data = models_import.read_csv(workdir / "customers.csv", target="segment")
    shuffled = np.random.default_rng(1).permutation(data.y)
    other = make_pipeline(StandardScaler(), LogisticRegression()).fit(data.x, shuffled)

    def wrong(name: str, estimator: Any, n_features: int, n_classes: int, text: str) -> bytes:
        return real(name, other, n_features, n_classes, text)

    monkeypatch.setattr(models_import, "convert", wrong)
    # then the import is refused, saying which rows and by how much, and writes nothing
    assert _import(workdir, tmp_path, "drift", "--estimator", str(workdir / "pipeline.skops")) == 2
    err = capsys.readouterr().err
    assert "disagrees with the estimator on" in err and "max probability difference" in err
    assert "row " in err
    assert not (tmp_path / "drift").exists()
    assert [p for p in tmp_path.iterdir()] == []


def test_an_onnx_file_imports_with_its_own_classes(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _import(workdir, tmp_path, "first", "--estimator", str(workdir / "pipeline.skops")) == 0
    capsys.readouterr()
    onnx_file = tmp_path / "first" / "model.onnx"
    assert _import(workdir, tmp_path, "second", "--onnx", str(onnx_file)) == 0
    manifest = json.loads((tmp_path / "second" / "manifest.json").read_text())
    assert manifest["classes"] == ["bronze", "gold", "silver"]
    assert manifest["imported"] == {"format": "onnx", "source": "model.onnx"}
    assert manifest["parity"]["reference"] == "onnx"
    assert {"first", "second"} <= set(ModelRegistry.load(tmp_path).names)


def test_list_show_remove(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _import(workdir, tmp_path, "listed", "--estimator", str(workdir / "pipeline.skops")) == 0
    capsys.readouterr()
    assert main(["list", "--model-dir", str(tmp_path)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["model"] == "listed" and json.loads(line)["defences"] is True
    assert main(["show", "listed", "--model-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["manifest"]["name"] == "listed"
    # removing needs --yes; then the directory is gone
    assert main(["remove", "listed", "--model-dir", str(tmp_path)]) == 2
    assert (tmp_path / "listed").is_dir()
    assert main(["remove", "listed", "--model-dir", str(tmp_path), "--yes"]) == 0
    assert not (tmp_path / "listed").exists()
    assert main(["show", "listed", "--model-dir", str(tmp_path)]) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target", "nope"], "no column 'nope'"),
        (["--features", "Age (years),missing"], "not found"),
    ],
)
def test_bad_columns_are_refused_by_name(
    workdir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    argv = ["import", "bad", "--estimator", str(workdir / "pipeline.skops")]
    argv += ["--data", str(workdir / "customers.csv"), "--model-dir", str(tmp_path)]
    argv += extra if extra[0] == "--target" else ["--target", "segment", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_models_own_settings_are_set_at_import_and_changed_with_set(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given an import that sets the model's own output policy and row cap
    extra = ("--output-policy", "label", "--max-rows", "10")
    status = _import(
        workdir, tmp_path, "own", "--estimator", str(workdir / "pipeline.skops"), *extra
    )
    assert status == 0
    settings = tmp_path / "own" / "settings.json"
    assert json.loads(settings.read_text()) == {
        "schema_version": 1,
        "model": "own",
        "output_policy": "label",
        "max_rows": 10,
    }
    capsys.readouterr()
    # when the squeeze policy is set and the row cap unset
    argv = ["set", "own", "--model-dir", str(tmp_path), "--squeeze-policy", "refuse"]
    assert main([*argv, "--unset", "max_rows"]) == 0
    capsys.readouterr()
    assert json.loads(settings.read_text()) == {
        "schema_version": 1,
        "model": "own",
        "output_policy": "label",
        "squeeze_policy": "refuse",
    }
    # then show and check report them; an invalid value is refused and nothing changes
    assert main(["show", "own", "--model-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["squeeze_policy"] == "refuse"
    assert main(["check", "--model-dir", str(tmp_path)]) == 0
    assert "settings: output_policy=label, squeeze_policy=refuse" in capsys.readouterr().out
    assert main(["set", "own", "--model-dir", str(tmp_path), "--output-policy", "all"]) == 2
    assert "output_policy is not an output policy" in capsys.readouterr().err
    assert json.loads(settings.read_text())["output_policy"] == "label"
    # unsetting everything removes the file: the deployment's values apply again
    unset = ["--unset", "output_policy", "--unset", "squeeze_policy"]
    assert main(["set", "own", "--model-dir", str(tmp_path), *unset]) == 0
    assert not settings.exists()


def test_an_imported_estimator_can_be_adversarially_trained(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given the logistic pipeline: PGD through its gradients, 3 rounds, re-fitted on a clone
    status = _import(
        workdir,
        tmp_path,
        "hardened",
        "--estimator",
        str(workdir / "pipeline.skops"),
        "--adversarial",
    )
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = json.loads((tmp_path / "hardened" / "manifest.json").read_text())
    training = manifest["adversarial_training"]
    assert training == summary["adversarial_training"]
    assert training["attack"].startswith("ART ProjectedGradientDescent")
    assert training["epsilon"] == 0.05 and training["rounds"] == 3
    assert training["adversarial_rows"] == 3 * manifest["metrics"]["n_train"]
    metrics = manifest["metrics"]
    assert metrics["adversarial_accuracy_cost"] == pytest.approx(
        metrics["undefended_accuracy"] - metrics["accuracy"], abs=1e-9
    )
    assert "Adversarially trained" in manifest["description"]
    # and the served graph is the re-fitted estimator's (parity held at import), not the original
    plain = _import(workdir, tmp_path, "plain", "--estimator", str(workdir / "pipeline.skops"))
    assert plain == 0
    hardened_onnx = (tmp_path / "hardened" / "model.onnx").read_bytes()
    assert hardened_onnx != (tmp_path / "plain" / "model.onnx").read_bytes()


def test_a_model_without_gradients_or_sample_weight_is_hardened_with_hopskipjump(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    x, y = make_classification(
        n_samples=60, n_features=3, n_informative=2, n_redundant=0, random_state=1
    )
    with (tmp_path / "small.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "c", "y"])
        for row, label in zip(x.round(5), y, strict=True):
            writer.writerow([*(f"{v:.5f}" for v in row), f"k{label}"])
    knn = KNeighborsClassifier(n_neighbors=5).fit(x.round(5), np.array(["k0", "k1"])[y])
    joblib.dump(knn, tmp_path / "knn.joblib")
    argv = ["import", "knn", "--estimator", str(tmp_path / "knn.joblib"), "--allow-pickle"]
    argv += ["--data", str(tmp_path / "small.csv"), "--target", "y", "--adversarial"]
    assert main([*argv, "--model-dir", str(tmp_path / "models")]) == 0
    training = json.loads(capsys.readouterr().out)["adversarial_training"]
    assert training["attack"].startswith("ART HopSkipJump")
    # KNeighborsClassifier.fit takes no sample_weight: the augmented rows count fully
    assert training["adversarial_row_weight"] == 1.0
    assert training["rounds"] == 2 and training["adversarial_rows"] == 2 * 42
