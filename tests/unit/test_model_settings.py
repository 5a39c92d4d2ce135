"""Per-model settings: the file's grammar, and how a model's output policy narrows a caller's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from security.errors import ModelIntegrityError
from security.model_settings import ModelSettings, load_settings, parse_settings, read_settings
from security.policy import OutputPolicy


def _doc(**fields: object) -> dict[str, object]:
    return {"schema_version": 1, "model": "iris", **fields}


def test_a_full_document_parses_and_round_trips() -> None:
    settings = parse_settings(
        _doc(output_policy="label", squeeze_policy="refuse", envelope_margin=0, max_rows=5),
        name="iris",
    )
    assert settings == ModelSettings("label", "refuse", 0.0, 5)
    assert parse_settings(settings.to_dict("iris"), name="iris") == settings
    assert ModelSettings().to_dict("iris") == {"schema_version": 1, "model": "iris"}


@pytest.mark.parametrize(
    "document",
    [
        _doc(output_policy="everything"),
        _doc(squeeze_policy="block"),
        _doc(envelope_margin=1.5),
        _doc(envelope_margin=True),
        _doc(max_rows=0),
        _doc(max_rows=2.5),
        _doc(colour="red"),
        {"schema_version": 1, "model": "other"},
        {"model": "iris"},
        ["not", "an", "object"],
    ],
)
def test_a_malformed_document_is_refused_naming_no_value(document: object) -> None:
    with pytest.raises(ModelIntegrityError) as refused:
        parse_settings(document, name="iris")
    assert refused.value.reason == "settings_malformed"
    assert "red" not in str(refused.value.detail) and "block" not in str(refused.value.detail)


@pytest.mark.parametrize(
    ("caller", "model", "served"),
    [
        ("probabilities:4", "label", "label"),
        ("label", "probabilities:2", "label"),
        ("probabilities:4", "probabilities:2", "probabilities:2"),
        ("probabilities:4:top1", "probabilities:2", "probabilities:2:top1"),
        ("probabilities:2:min0.5", "probabilities:3:top2:min0.9", "probabilities:2:top2:min0.9"),
    ],
)
def test_a_models_output_policy_narrows_every_caller(caller: str, model: str, served: str) -> None:
    narrowed = ModelSettings(output_policy=model).narrowed(OutputPolicy.parse(caller))
    assert str(narrowed) == served
    # it reveals no more than either
    assert narrowed.reveals_no_more_than(OutputPolicy.parse(caller))
    assert narrowed.reveals_no_more_than(OutputPolicy.parse(model))
    # and without a model policy the caller's stands
    assert ModelSettings().narrowed(OutputPolicy.parse(caller)) == OutputPolicy.parse(caller)


def test_files_are_read_per_model_and_a_bad_one_fails_its_model_alone(tmp_path: Path) -> None:
    for name in ("good", "bad", "plain"):
        (tmp_path / name).mkdir()
    (tmp_path / "good" / "settings.json").write_text(
        json.dumps({"schema_version": 1, "model": "good", "max_rows": 3})
    )
    (tmp_path / "bad" / "settings.json").write_text("{not json")
    failures: dict[str, ModelIntegrityError] = {}
    loaded = load_settings(tmp_path, ["good", "bad", "plain"], failures=failures)
    assert loaded == {"good": ModelSettings(max_rows=3), "plain": ModelSettings()}
    assert set(failures) == {"bad"} and failures["bad"].reason == "settings_malformed"
    assert read_settings(tmp_path / "plain") == ModelSettings()
