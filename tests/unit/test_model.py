"""security.model: manifests, integrity checks and predictions on the committed artifacts.

No scikit-learn here: the served path must work with numpy and onnxruntime alone. Parity with
scikit-learn is checked in tests/training/.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from interpreter import PYTHON
from security.errors import ModelIntegrityError, NotFoundError
from security.model import Manifest, ModelRegistry, ServedModel

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
SERVED = ("breast-cancer", "breast-cancer-forest", "iris")


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load(MODELS)


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """A private copy of the committed models that a test may corrupt."""
    target = tmp_path / "models"
    shutil.copytree(MODELS, target)
    return target


def _manifest(root: Path, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((root / name / "manifest.json").read_text())
    return document


def _write_manifest(root: Path, name: str, document: dict[str, Any]) -> None:
    (root / name / "manifest.json").write_text(json.dumps(document))


def _centre(model: ServedModel) -> np.ndarray:
    return (model.manifest.envelope_min + model.manifest.envelope_max) / 2


# ----------------------------------------------------------------------------- loading


def test_load_serves_every_committed_model(registry: ModelRegistry) -> None:
    # given the committed models/ directory, when it is loaded, then every model is served
    assert registry.names == SERVED
    assert len(registry) == 3
    assert "iris" in registry and "nope" not in registry


def test_manifest_fields_are_parsed(registry: ModelRegistry) -> None:
    iris = registry.get("iris")
    assert iris.n_features == 4
    assert iris.classes == ("setosa", "versicolor", "virginica")
    assert iris.manifest.feature_names[0] == "sepal_length_cm"
    sha = hashlib.sha256((MODELS / "iris" / "model.onnx").read_bytes()).hexdigest()
    assert iris.version == f"iris-{sha[:12]}"
    assert iris.manifest.onnx_sha256 == sha
    assert iris.manifest.dp_epsilon is None
    assert iris.manifest.train_split["test_fraction"] == 0.3
    assert "schema_version" not in iris.manifest.extra
    assert 0.9 <= iris.manifest.metrics["accuracy"] <= 1.0
    bounds = iris.manifest.envelope["petal_length_cm"]
    assert bounds["min"] < bounds["max"]
    assert iris.manifest.envelope_min[2] == bounds["min"]
    assert registry.get("breast-cancer").n_features == 30
    assert registry.get("breast-cancer").classes == ("benign", "malignant")


def test_envelope_arrays_are_read_only(registry: ModelRegistry) -> None:
    envelope_min = registry.get("iris").manifest.envelope_min
    with pytest.raises(ValueError):
        envelope_min[0] = -1.0


def test_sessions_use_one_intra_op_thread(registry: ModelRegistry) -> None:
    options = registry.get("iris")._session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1


def test_unknown_model_raises_not_found(registry: ModelRegistry) -> None:
    with pytest.raises(NotFoundError) as caught:
        registry.get("no-such-model")
    assert caught.value.reason == "unknown_model"


# ----------------------------------------------------------------------------- integrity


def test_flipped_byte_in_onnx_refuses_to_load(model_copy: Path) -> None:
    # given one byte of the iris artifact flipped
    path = model_copy / "iris" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    # when the registry loads, then it refuses with a hash mismatch
    with pytest.raises(ModelIntegrityError) as caught:
        ModelRegistry.load(model_copy)
    assert caught.value.reason == "model_hash_mismatch"


def test_wrong_sha_in_manifest_refuses_to_load(model_copy: Path) -> None:
    document = _manifest(model_copy, "breast-cancer")
    document["onnx"]["sha256"] = "0" * 64
    _write_manifest(model_copy, "breast-cancer", document)
    with pytest.raises(ModelIntegrityError) as caught:
        ModelRegistry.load(model_copy)
    assert caught.value.reason == "model_hash_mismatch"


def test_missing_onnx_file_refuses_to_load(model_copy: Path) -> None:
    (model_copy / "breast-cancer-forest" / "model.onnx").unlink()
    with pytest.raises(ModelIntegrityError) as caught:
        ModelRegistry.load(model_copy)
    assert caught.value.reason == "model_file_missing"


def test_missing_manifest_refuses_to_load(model_copy: Path) -> None:
    (model_copy / "iris" / "manifest.json").unlink()
    with pytest.raises(ModelIntegrityError) as caught:
        ModelRegistry.load(model_copy)
    assert caught.value.reason == "manifest_missing"


def test_manifest_that_is_not_json_refuses_to_load(model_copy: Path) -> None:
    (model_copy / "iris" / "manifest.json").write_text("{not json")
    with pytest.raises(ModelIntegrityError) as caught:
        ModelRegistry.load(model_copy)
    assert caught.value.reason == "manifest_malformed"


def test_empty_model_dir_refuses_to_load(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError) as caught:
        ModelRegistry.load(tmp_path)
    assert caught.value.reason == "no_models"


def test_missing_model_dir_refuses_to_load(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError) as caught:
        ModelRegistry.load(tmp_path / "absent")
    assert caught.value.reason == "model_dir_missing"


def test_artifact_that_onnxruntime_cannot_parse_refuses_to_load(model_copy: Path) -> None:
    # given garbage bytes whose hash the manifest does match (the check is not only the hash)
    garbage = b"this is not an onnx protobuf" * 8
    (model_copy / "iris" / "model.onnx").write_bytes(garbage)
    document = _manifest(model_copy, "iris")
    document["onnx"]["sha256"] = hashlib.sha256(garbage).hexdigest()
    _write_manifest(model_copy, "iris", document)
    with pytest.raises(ModelIntegrityError) as caught:
        ModelRegistry.load(model_copy)
    assert caught.value.reason == "model_unloadable"


def test_manifest_disagreeing_with_graph_refuses_to_load(model_copy: Path) -> None:
    # given a manifest that declares a 5th feature the graph does not take
    document = _manifest(model_copy, "iris")
    document["feature_names"].append("extra")
    document["envelope"]["extra"] = {"min": 0.0, "max": 1.0}
    _write_manifest(model_copy, "iris", document)
    with pytest.raises(ModelIntegrityError) as caught:
        ModelRegistry.load(model_copy)
    assert caught.value.reason == "model_signature"


def _valid_document() -> dict[str, Any]:
    return _manifest(MODELS, "iris")


@pytest.mark.parametrize(
    ("mutate", "case"),
    [
        (lambda d: d.pop("classes"), "missing classes"),
        (lambda d: d.__setitem__("classes", ["only-one"]), "one class"),
        (lambda d: d.__setitem__("feature_names", ["a", "a", "b", "c"]), "duplicate features"),
        (lambda d: d["envelope"].pop("sepal_length_cm"), "envelope misses a feature"),
        (lambda d: d["envelope"]["sepal_length_cm"].__setitem__("min", 99.0), "min > max"),
        (lambda d: d["envelope"]["sepal_length_cm"].__setitem__("max", True), "boolean bound"),
        (lambda d: d["onnx"].__setitem__("file", "../breast-cancer/model.onnx"), "path escape"),
        (lambda d: d["onnx"].__setitem__("sha256", "ABC"), "bad sha"),
        (lambda d: d.__setitem__("version", "other-123"), "version of another model"),
        (lambda d: d.__setitem__("metrics", {"accuracy": "high"}), "non-numeric metric"),
        (lambda d: d["onnx"].__setitem__("input_dtype", "float64"), "wrong input dtype"),
        (lambda d: d.__setitem__("dp_epsilon", "1"), "epsilon as text"),
        (lambda d: d.__setitem__("schema_version", 2), "unknown schema version"),
        (lambda d: d.pop("train_split"), "missing split"),
    ],
)
def test_malformed_manifest_is_refused(mutate: Any, case: str) -> None:
    document = _valid_document()
    mutate(document)
    with pytest.raises(ModelIntegrityError) as caught:
        Manifest.from_dict(document, expected_name="iris")
    assert caught.value.reason == "manifest_malformed", case


def test_manifest_in_the_wrong_directory_is_refused(model_copy: Path) -> None:
    # given iris's manifest copied into the breast-cancer directory
    shutil.copy(model_copy / "iris" / "manifest.json", model_copy / "breast-cancer")
    with pytest.raises(ModelIntegrityError) as caught:
        ModelRegistry.load(model_copy)
    assert caught.value.reason == "manifest_malformed"


def test_nan_constant_in_manifest_is_refused() -> None:
    text = (MODELS / "iris" / "manifest.json").read_text()
    text = text.replace('"dp_epsilon": null', '"dp_epsilon": NaN')
    with pytest.raises(ModelIntegrityError):
        Manifest.from_json(text, expected_name="iris")


def test_unknown_sections_are_kept_read_only() -> None:
    document = _valid_document()
    document["defences"] = {"squeeze": {"levels": 16}}
    manifest = Manifest.from_dict(document, expected_name="iris")
    assert manifest.extra["defences"] == {"squeeze": {"levels": 16}}
    with pytest.raises(TypeError):
        manifest.extra["other"] = 1  # type: ignore[index]


# ----------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("name", SERVED)
def test_single_row_gives_one_probability_row(registry: ModelRegistry, name: str) -> None:
    model = registry.get(name)
    proba = model.predict_proba(_centre(model))
    assert proba.shape == (1, len(model.classes))
    assert proba.dtype == np.float64
    assert np.all(proba >= 0)
    assert abs(float(proba.sum()) - 1.0) < 1e-12


@pytest.mark.parametrize("name", SERVED)
def test_batch_rows_each_sum_to_one(registry: ModelRegistry, name: str) -> None:
    model = registry.get(name)
    rng = np.random.default_rng(7)
    low, high = model.manifest.envelope_min, model.manifest.envelope_max
    rows = rng.uniform(low, high, size=(64, model.n_features))
    proba = model.predict_proba(rows)
    assert proba.shape == (64, len(model.classes))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    # a batch answers each row as that row alone would be answered
    np.testing.assert_allclose(model.predict_proba(rows[5]), proba[5:6], atol=1e-7)


def test_list_input_is_accepted(registry: ModelRegistry) -> None:
    iris = registry.get("iris")
    proba = iris.predict_proba([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    assert iris.labels(proba) == ["setosa", "virginica"]


@pytest.mark.parametrize("shape", [(3,), (2, 5), (0, 4), (1, 2, 4)])
def test_wrong_shape_is_a_value_error(registry: ModelRegistry, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        registry.get("iris").predict_proba(np.zeros(shape))


def test_models_are_separate(registry: ModelRegistry) -> None:
    # a 4-feature row is refused by the 30-feature model: schemas are per model
    with pytest.raises(ValueError):
        registry.get("breast-cancer").predict_proba(np.array([5.1, 3.5, 1.4, 0.2]))


def test_serving_never_imports_scikit_learn() -> None:
    code = (
        "import sys\n"
        "from security.model import ModelRegistry\n"
        f"r = ModelRegistry.load({str(MODELS)!r})\n"
        "r.get('iris').predict_proba([[5.1, 3.5, 1.4, 0.2]])\n"
        "heavy = ('sklearn', 'scipy', 'skl2onnx')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
