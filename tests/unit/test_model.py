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
from security.errors import ModelIntegrityError, ModelUnavailableError, NotFoundError
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
# One model's trouble is that model's alone: the registry verifies each directory on its own,
# records a model that fails as unavailable with its reason, and serves every other model.


def _only_unavailable(root: Path, name: str, reason: str) -> ModelRegistry:
    """Load ``root``; assert that ``name`` alone is unavailable, for ``reason``, and the rest
    serve."""
    registry = ModelRegistry.load(root)
    assert set(registry.unavailable) == {name}
    assert registry.unavailable[name].reason == reason
    assert registry.names == tuple(n for n in SERVED if n != name)
    assert name not in registry
    with pytest.raises(ModelUnavailableError) as caught:
        registry.get(name)
    assert caught.value.reason == "model_unavailable"
    assert caught.value.detail is not None and reason in caught.value.detail
    for model in registry:
        assert model.predict_proba(_centre(model)).shape == (1, len(model.classes))
    return registry


def test_flipped_byte_in_onnx_makes_that_model_alone_unavailable(model_copy: Path) -> None:
    # given one byte of the iris artifact flipped
    path = model_copy / "iris" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    # when the registry loads, then iris alone is refused with a hash mismatch
    _only_unavailable(model_copy, "iris", "model_hash_mismatch")


def test_wrong_sha_in_manifest_makes_that_model_alone_unavailable(model_copy: Path) -> None:
    document = _manifest(model_copy, "breast-cancer")
    document["onnx"]["sha256"] = "0" * 64
    _write_manifest(model_copy, "breast-cancer", document)
    _only_unavailable(model_copy, "breast-cancer", "model_hash_mismatch")


def test_missing_onnx_file_makes_that_model_alone_unavailable(model_copy: Path) -> None:
    (model_copy / "breast-cancer-forest" / "model.onnx").unlink()
    _only_unavailable(model_copy, "breast-cancer-forest", "model_file_missing")


def test_missing_manifest_makes_that_model_alone_unavailable(model_copy: Path) -> None:
    (model_copy / "iris" / "manifest.json").unlink()
    registry = _only_unavailable(model_copy, "iris", "manifest_missing")
    assert registry.unavailable["iris"].detail == "iris: no manifest.json"


def test_unreadable_manifest_makes_that_model_alone_unavailable(model_copy: Path) -> None:
    # given a manifest path that cannot be read as a file (a directory in its place)
    (model_copy / "iris" / "manifest.json").unlink()
    (model_copy / "iris" / "manifest.json").mkdir()
    _only_unavailable(model_copy, "iris", "manifest_unreadable")


def test_manifest_that_is_not_json_makes_that_model_alone_unavailable(model_copy: Path) -> None:
    (model_copy / "iris" / "manifest.json").write_text("{not json")
    _only_unavailable(model_copy, "iris", "manifest_malformed")


def test_artifact_that_onnxruntime_cannot_parse_is_unavailable(model_copy: Path) -> None:
    # given garbage bytes whose hash the manifest does match (the check is not only the hash)
    garbage = b"this is not an onnx protobuf" * 8
    (model_copy / "iris" / "model.onnx").write_bytes(garbage)
    document = _manifest(model_copy, "iris")
    document["onnx"]["sha256"] = hashlib.sha256(garbage).hexdigest()
    _write_manifest(model_copy, "iris", document)
    _only_unavailable(model_copy, "iris", "model_unloadable")


def test_manifest_disagreeing_with_graph_is_unavailable(model_copy: Path) -> None:
    # given a manifest that declares a 5th feature the graph does not take
    document = _manifest(model_copy, "iris")
    document["feature_names"].append("extra")
    document["envelope"]["extra"] = {"min": 0.0, "max": 1.0}
    _write_manifest(model_copy, "iris", document)
    _only_unavailable(model_copy, "iris", "model_signature")


def test_every_model_failing_leaves_an_empty_registry_that_still_loads(model_copy: Path) -> None:
    # given every manifest removed
    for name in SERVED:
        (model_copy / name / "manifest.json").unlink()
    # when loaded with the default model expected, then nothing is served and nothing raises
    registry = ModelRegistry.load(model_copy, expected=("iris",))
    assert len(registry) == 0 and registry.names == ()
    assert set(registry.unavailable) == set(SERVED)
    with pytest.raises(ModelUnavailableError):
        registry.get("iris")
    with pytest.raises(NotFoundError):
        registry.get("no-such-model")


@pytest.mark.parametrize(
    ("where", "reason"), [("empty", "no_models"), ("absent", "model_dir_missing")]
)
def test_no_model_directory_makes_the_expected_default_unavailable(
    tmp_path: Path, where: str, reason: str
) -> None:
    root = tmp_path / where
    if where == "empty":
        root.mkdir()
    registry = ModelRegistry.load(root, expected=("iris",))
    assert len(registry) == 0
    assert registry.unavailable["iris"].reason == reason
    with pytest.raises(ModelUnavailableError) as caught:
        registry.get("iris")
    assert caught.value.detail is not None and reason in caught.value.detail


def test_an_expected_model_with_no_directory_is_unavailable_beside_the_others() -> None:
    registry = ModelRegistry.load(MODELS, expected=("wine",))
    assert registry.names == SERVED
    assert registry.unavailable["wine"].reason == "model_missing"


def test_without_moves_a_model_from_served_to_unavailable(registry: ModelRegistry) -> None:
    # given a check outside the registry (its defences file) failing for one model
    failed = {"breast-cancer": ModelIntegrityError("defences_malformed", detail="defences.json")}
    # when the registry drops it, then it alone is unavailable, for that reason
    narrowed = registry.without(failed)
    assert narrowed.names == ("breast-cancer-forest", "iris")
    assert narrowed.unavailable["breast-cancer"].reason == "defences_malformed"
    with pytest.raises(ModelUnavailableError):
        narrowed.get("breast-cancer")
    assert registry.without({}) is registry and "breast-cancer" in registry


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
    _only_unavailable(model_copy, "breast-cancer", "manifest_malformed")


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
