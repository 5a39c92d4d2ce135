"""Settings.from_env: defaults, validation, messages naming the variable (never its value)."""

from __future__ import annotations

import pytest

from security.policy import OutputPolicy, is_output_policy
from security.settings import RateSpec, Settings, SettingsError

BASE = {"SECURITY_TABLE_NAME": "SecurityTable-dev", "SECURITY_MODEL_DIR": "/opt/models"}


def test_defaults_with_only_the_required_variables() -> None:
    settings = Settings.from_env(BASE)
    assert (settings.table_name, settings.model_dir, settings.default_model) == (
        "SecurityTable-dev",
        "/opt/models",
        "iris",
    )
    assert (settings.max_rows, settings.max_body_bytes, settings.envelope_margin) == (
        100,
        65536,
        0.1,
    )
    assert settings.default_output_policy == "probabilities:2"
    assert settings.default_rate_limit == RateSpec(60, 60)
    assert settings.audit_raw_features is False
    assert settings.jwt_enabled is False


@pytest.mark.parametrize("missing", ["SECURITY_TABLE_NAME", "SECURITY_MODEL_DIR"])
def test_a_missing_required_variable_is_named(missing: str) -> None:
    environ = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(SettingsError, match=missing):
        Settings.from_env(environ)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SECURITY_MAX_ROWS", "0"),
        ("SECURITY_MAX_ROWS", "many"),
        ("SECURITY_MAX_BODY_BYTES", "10"),
        ("SECURITY_MAX_BODY_BYTES", str(7 * 1024 * 1024)),
        ("SECURITY_ENVELOPE_MARGIN", "nan"),
        ("SECURITY_ENVELOPE_MARGIN", "-0.1"),
        ("SECURITY_DEFAULT_OUTPUT", "raw"),
        ("SECURITY_DEFAULT_OUTPUT", "probabilities:9"),
        ("SECURITY_DEFAULT_RATE_LIMIT", "60 per minute"),
        ("SECURITY_AUDIT_RAW_FEATURES", "maybe"),
        ("SECURITY_SQUEEZE_POLICY", "ignore"),
        ("SECURITY_DEFAULT_MODEL", "../etc"),
        ("SECURITY_JWT_ALGORITHMS", "HS256"),
    ],
)
def test_a_malformed_value_is_refused_naming_the_variable_not_the_value(
    name: str, value: str
) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**BASE, name: value})
    assert name in str(info.value)
    if len(value) > 2:  # short values such as "0" can occur in the allowed range's text
        assert value not in str(info.value).replace(name, "")


def test_io_caps_and_forensic_mode_are_read() -> None:
    settings = Settings.from_env(
        {
            **BASE,
            "SECURITY_MAX_ROWS": "10",
            "SECURITY_MAX_BODY_BYTES": "1024",
            "SECURITY_ENVELOPE_MARGIN": "0.25",
            "SECURITY_AUDIT_RAW_FEATURES": "true",
            "SECURITY_DEFAULT_OUTPUT": "probabilities:1:top2:min0.6",
        }
    )
    assert (settings.max_rows, settings.max_body_bytes, settings.envelope_margin) == (
        10,
        1024,
        0.25,
    )
    assert settings.audit_raw_features is True
    assert OutputPolicy.parse(settings.default_output_policy) == OutputPolicy(True, 1, 2, 0.6)


def test_jwt_settings_must_come_together() -> None:
    with pytest.raises(SettingsError, match="must be set together"):
        Settings.from_env({**BASE, "SECURITY_JWT_ISSUER": "https://issuer.example"})
    settings = Settings.from_env(
        {
            **BASE,
            "SECURITY_JWT_ISSUER": "https://issuer.example",
            "SECURITY_JWT_AUDIENCE": "mlmoat",
            "SECURITY_JWT_PUBLIC_KEY_PARAMETER": "/mlmoat/jwt-public-key",
        }
    )
    assert settings.jwt_enabled


@pytest.mark.parametrize(
    "text", ["label", "probabilities:0", "probabilities:6:top10", "probabilities:2:min0.95"]
)
def test_every_settings_policy_parses_as_an_output_policy(text: str) -> None:
    assert is_output_policy(text)
    assert str(OutputPolicy.parse(text)) == text


def test_rate_spec_round_trips() -> None:
    assert RateSpec.parse("100/hour") == RateSpec(100, 3600)
    assert str(RateSpec(5, 1)) == "5/second"
