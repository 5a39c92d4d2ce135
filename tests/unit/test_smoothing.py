"""Input smoothing (security.smoothing): majority over keyed noisy copies, repeatability, the
secret's effect, the radius bound, the defences.json section and the setting that keys it.

The expected answers are recomputed here from the documented construction with numpy alone
(HMAC-SHA-256 of the row's little-endian float64 bytes, the digest as PCG64 state and
increment, standard normal noise times sigma times the feature's range), so a change to the
noise, the vote or the averaging fails these tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from security.defences import Squeezer
from security.errors import ModelIntegrityError
from security.model import ModelRegistry
from security.settings import Settings, SettingsError
from security.smoothing import (
    Smoother,
    SmoothingConfig,
    certified_radius,
    clopper_pearson_lower,
    load_smoothing,
    serve,
)

MODELS = Path(__file__).resolve().parents[2] / "models"
SECRET = b"a fixed test secret, 32 bytes or more"
NAME = "breast-cancer"


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return ModelRegistry.load(MODELS).get(NAME)


@pytest.fixture(scope="module")
def config() -> SmoothingConfig:
    loaded = load_smoothing(MODELS / NAME / "defences.json")
    assert loaded is not None
    return dataclasses.replace(loaded, enabled=True)


def _expected(model, config: SmoothingConfig, rows: np.ndarray, secret: bytes):  # type: ignore[no-untyped-def]
    labels, means = [], []
    width = np.asarray(config.width)
    for row in rows:
        digest = hmac.new(
            secret,
            b"mlmoat-smoothing-noise-v1\x00" + (row.astype("<f8") + 0.0).tobytes(),
            hashlib.sha256,
        ).digest()
        bit_generator = np.random.PCG64(0)
        state = bit_generator.state
        state["state"] = {
            "state": int.from_bytes(digest[:16], "big"),
            "inc": int.from_bytes(digest[16:], "big") | 1,
        }
        bit_generator.state = state
        noise = np.random.Generator(bit_generator).standard_normal((config.n, rows.shape[1]))
        proba = model.predict_proba(row + noise * config.sigma * width)
        votes = np.bincount(proba.argmax(axis=1), minlength=proba.shape[1])
        labels.append(int(votes.argmax()))
        means.append(proba.mean(axis=0))
    return np.asarray(labels), np.asarray(means)


def _rows() -> np.ndarray:
    # Rows across the training envelope (no scikit-learn here: this suite also runs under 3.13
    # against the Lambda build, which has none).
    manifest = json.loads((MODELS / NAME / "manifest.json").read_text())
    low = np.asarray([manifest["envelope"][f]["min"] for f in manifest["feature_names"]])
    high = np.asarray([manifest["envelope"][f]["max"] for f in manifest["feature_names"]])
    return low + np.random.default_rng(16).uniform(0.1, 0.6, (12, low.size)) * (high - low)


def test_a_smoothed_model_answers_with_the_majority_over_its_noisy_copies(model, config) -> None:  # type: ignore[no-untyped-def]
    # given a fixed secret, when the served path answers held-out rows
    rows = _rows()
    served = serve(model, rows, squeezer=None, smoother=Smoother({NAME: config}, secret=SECRET))
    # then the labels and probabilities are those of the copies recomputed with numpy
    labels, means = _expected(model, config, rows, SECRET)
    assert served.labels.tolist() == labels.tolist()
    np.testing.assert_allclose(served.probabilities, means, atol=1e-12)
    assert served.radii is not None and served.radii.shape == (rows.shape[0],)
    assert np.all(served.radii >= 0)


def test_smoothing_composes_with_squeezing_in_one_model_call(model, config) -> None:  # type: ignore[no-untyped-def]
    # given squeezing (flag) and smoothing on, counting the model's calls
    calls: list[int] = []

    class Counting:
        name = NAME

        def predict_proba(self, rows: np.ndarray) -> np.ndarray:
            calls.append(rows.shape[0])
            return model.predict_proba(rows)

    squeezer = Squeezer.from_manifest(MODELS, [(NAME, model.version)], policy="flag")
    rows = _rows()
    served = serve(
        Counting(), rows, squeezer=squeezer, smoother=Smoother({NAME: config}, secret=SECRET)
    )
    # then one call carried raw and squeezed rows' copies, and the squeezed rows are answered
    assert calls == [2 * rows.shape[0] * config.n]
    squeeze = squeezer.config(NAME)
    assert squeeze is not None
    labels, means = _expected(model, config, squeeze.squeeze(rows), SECRET)
    assert served.labels.tolist() == labels.tolist()
    np.testing.assert_allclose(served.probabilities, means, atol=1e-12)


def test_the_same_query_twice_gets_the_same_answer_alone_or_in_a_batch(model, config) -> None:  # type: ignore[no-untyped-def]
    smoother = Smoother({NAME: config}, secret=SECRET)
    rows = _rows()
    first = serve(model, rows, squeezer=None, smoother=smoother)
    second = serve(model, rows, squeezer=None, smoother=smoother)
    alone = serve(model, rows[3:4], squeezer=None, smoother=smoother)
    assert np.array_equal(first.probabilities, second.probabilities)
    assert np.array_equal(first.probabilities[3:4], alone.probabilities)
    assert first.labels[3] == alone.labels[0]


def test_a_different_secret_gives_different_noise(model, config) -> None:  # type: ignore[no-untyped-def]
    rows = _rows()
    one = config.noisy_copies(rows, SECRET)
    other = config.noisy_copies(rows, SECRET + b"!")
    assert one.shape == other.shape == (rows.shape[0] * config.n, rows.shape[1])
    assert not np.allclose(one, other)
    served_one = serve(model, rows, squeezer=None, smoother=Smoother({NAME: config}, secret=SECRET))
    served_other = serve(
        model, rows, squeezer=None, smoother=Smoother({NAME: config}, secret=SECRET + b"!")
    )
    assert not np.array_equal(served_one.probabilities, served_other.probabilities)


def test_a_disabled_section_changes_nothing(model, config) -> None:  # type: ignore[no-untyped-def]
    off = dataclasses.replace(config, enabled=False)
    rows = _rows()
    served = serve(model, rows, squeezer=None, smoother=Smoother({NAME: off}, secret=SECRET))
    assert served.radii is None
    np.testing.assert_array_equal(served.probabilities, model.predict_proba(rows))


def test_clopper_pearson_lower_bound_against_closed_forms() -> None:
    # all successes: P(X = n) = p^n = alpha, so the bound is alpha^(1/n)
    assert clopper_pearson_lower(64, 64, 0.001) == pytest.approx(0.001 ** (1 / 64), abs=1e-12)
    # one success: P(X >= 1) = 1 - (1-p)^n = alpha
    assert clopper_pearson_lower(1, 10, 0.05) == pytest.approx(1 - 0.95 ** (1 / 10), abs=1e-12)
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0
    # and the radius is Cohen's sigma * Phi^-1(bound), 0 when the bound is not above 1/2
    bound = 0.001 ** (1 / 64)
    assert certified_radius(64, 64, 0.25, 0.001) == pytest.approx(
        0.25 * NormalDist().inv_cdf(bound), abs=1e-9
    )
    assert certified_radius(33, 64, 0.25, 0.001) == 0.0


def test_an_old_defences_file_without_the_section_means_smoothing_off(tmp_path: Path) -> None:
    document = json.loads((MODELS / NAME / "defences.json").read_text())
    document.pop("smoothing")
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME / "defences.json").write_text(json.dumps(document))
    assert load_smoothing(tmp_path / NAME / "defences.json") is None
    smoother = Smoother.from_manifest(tmp_path, [(NAME, document["model_version"])], secret=SECRET)
    assert smoother.config(NAME) is None


def test_a_malformed_or_stale_section_is_refused(tmp_path: Path) -> None:
    document = json.loads((MODELS / NAME / "defences.json").read_text())
    (tmp_path / NAME).mkdir()
    path = tmp_path / NAME / "defences.json"
    document["smoothing"]["sigma"] = -1
    path.write_text(json.dumps(document))
    with pytest.raises(ModelIntegrityError):
        load_smoothing(path)
    document["smoothing"]["sigma"] = 0.1
    document["smoothing"]["enabled"] = True
    path.write_text(json.dumps(document))
    with pytest.raises(ModelIntegrityError):
        Smoother.from_manifest(tmp_path, [(NAME, "breast-cancer-000000000000")], secret=SECRET)


def test_the_smoothing_secret_setting_is_validated_and_never_shown() -> None:
    env = {"SECURITY_TABLE_NAME": "t", "SECURITY_MODEL_DIR": "/opt/models"}
    secret = "s" * 40
    settings = Settings.from_env({**env, "SECURITY_SMOOTHING_SECRET": secret})
    assert settings.smoothing_secret == secret.encode()
    assert secret not in repr(settings)
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**env, "SECURITY_SMOOTHING_SECRET": "short-secret-value"})
    assert "SECURITY_SMOOTHING_SECRET" in str(raised.value)
    assert "short-secret-value" not in str(raised.value)
    # unset: a random key of 32 bytes, different per process start (here: per read)
    first, second = Settings.from_env(env), Settings.from_env(env)
    assert len(first.smoothing_secret) == 32 and first.smoothing_secret != second.smoothing_secret


def test_fixed_features_get_no_noise_and_the_section_round_trips() -> None:
    # a categorical feature (a category index) is never moved to another category by the noise
    config = SmoothingConfig("m", "m-1", True, 16, 0.3, 0.001, (1.0, 2.0, 3.0), fixed=(1,))
    rows = np.array([[0.5, 2.0, 1.0], [0.1, 0.0, 2.0]])
    copies = config.noisy_copies(rows, SECRET).reshape(2, 16, 3)
    assert (copies[:, :, 1] == rows[:, None, 1]).all()
    assert (copies[:, :, 0] != rows[:, None, 0]).all() and (
        copies[:, :, 2] != rows[:, None, 2]
    ).all()
    assert SmoothingConfig.from_dict(config.to_dict()) == config
    assert "fixed" not in dataclasses.replace(config, fixed=()).to_dict()  # old files unchanged
    with pytest.raises(ValueError, match="fixed"):
        SmoothingConfig.from_dict({**config.to_dict(), "fixed": [3]})
