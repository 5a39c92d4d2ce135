"""Output policies and the log redaction choke point."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from security.keys import generate_key
from security.policy import OutputPolicy, OutputPolicyError
from security.sanitize import MASK, apply_output_policy, redact

CLASSES = ["setosa", "versicolor", "virginica"]
PROBS = np.array([[0.012345, 0.654321, 0.333334], [0.9, 0.06, 0.04]])


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("label", OutputPolicy(probabilities=False)),
        ("probabilities:2", OutputPolicy(probabilities=True, decimals=2)),
        ("probabilities:0", OutputPolicy(probabilities=True, decimals=0)),
        ("probabilities:3:top2", OutputPolicy(probabilities=True, decimals=3, top_k=2)),
        (
            "probabilities:2:min0.8",
            OutputPolicy(probabilities=True, decimals=2, min_confidence=0.8),
        ),
        ("probabilities:1:top1:min0.55", OutputPolicy(True, 1, 1, 0.55)),
    ],
)
def test_policies_parse_and_print_back(text: str, policy: OutputPolicy) -> None:
    assert OutputPolicy.parse(text) == policy
    assert str(policy) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "labels",
        "probabilities",
        "probabilities:7",
        "probabilities:2:top0",
        "probabilities:2:min1.5",
        "probabilities:2:min0.5:top2",
        "raw",
        "probabilities:-1",
    ],
)
def test_malformed_policies_are_refused(text: str) -> None:
    with pytest.raises(OutputPolicyError):
        OutputPolicy.parse(text)


def test_label_policy_returns_the_label_alone() -> None:
    out = apply_output_policy(OutputPolicy.parse("label"), CLASSES, PROBS)
    assert out == [{"label": "versicolor"}, {"label": "setosa"}]


def test_probabilities_are_rounded_to_the_policy_decimals() -> None:
    out = apply_output_policy(OutputPolicy.parse("probabilities:2"), CLASSES, PROBS)
    assert out[0] == {
        "label": "versicolor",
        "probabilities": {"versicolor": 0.65, "virginica": 0.33, "setosa": 0.01},
    }


def test_top_k_keeps_only_the_most_probable_classes_in_order() -> None:
    out = apply_output_policy(OutputPolicy.parse("probabilities:3:top2"), CLASSES, PROBS)
    assert list(out[0]["probabilities"].items()) == [("versicolor", 0.654), ("virginica", 0.333)]


def test_below_the_confidence_threshold_the_answer_is_the_label_alone() -> None:
    out = apply_output_policy(OutputPolicy.parse("probabilities:2:min0.8"), CLASSES, PROBS)
    assert out[0] == {"label": "versicolor"}
    assert out[1] == {
        "label": "setosa",
        "probabilities": {"setosa": 0.9, "versicolor": 0.06, "virginica": 0.04},
    }


def test_integer_classes_stay_integer_labels_and_string_keys() -> None:
    out = apply_output_policy(
        OutputPolicy.parse("probabilities:1"), [0, 1], np.array([[0.26, 0.74]])
    )
    assert out == [{"label": 1, "probabilities": {"1": 0.7, "0": 0.3}}]


def test_probabilities_must_match_the_classes() -> None:
    with pytest.raises(ValueError):
        apply_output_policy(OutputPolicy.parse("label"), CLASSES, np.array([[0.5, 0.5]]))


@given(
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=3, max_size=3),
    st.integers(min_value=0, max_value=6),
    st.integers(min_value=1, max_value=3),
)
def test_property_the_label_is_the_raw_argmax_and_values_have_at_most_n_decimals(
    row, decimals, top
) -> None:
    policy = OutputPolicy(probabilities=True, decimals=decimals, top_k=top)
    (out,) = apply_output_policy(policy, CLASSES, np.array([row]))
    assert out["label"] == CLASSES[int(np.argmax(row))]
    assert len(out["probabilities"]) == top
    for value in out["probabilities"].values():
        assert round(value, decimals) == value


# --- redaction ---------------------------------------------------------------------------


def test_our_api_keys_are_masked_wherever_they_appear() -> None:
    _, key = generate_key()
    record = {"message": f"bad key {key} seen", "nested": [{"x": key}], "truncated": key[:20]}
    text = repr(redact(record))
    assert key not in text and key[:20] not in text
    assert key.split("_")[1] not in text  # not even the id+secret part survives in free text


def test_bearer_credentials_and_jwts_are_masked() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    out = redact({"message": f"Authorization: Bearer abc.def-123 and {jwt}"})
    assert "abc.def-123" not in out["message"] and jwt not in out["message"]
    assert out["message"].count(MASK) == 2


@pytest.mark.parametrize(
    "field", ["api_key", "X-API-Key", "authorization", "token", "client_secret", "password"]
)
def test_fields_named_for_secrets_are_masked_whole(field: str) -> None:
    assert redact({field: "anything at all"}) == {field: MASK}


def test_safe_identifiers_pass_through_untouched() -> None:
    record = {
        "key_id": "AbCdEfGh1234",
        "principal_fingerprint": "0a1b2c3d4e5f",
        "credential_type": "api_key",
        "reason": "bad_secret",
        "rows": 3,
        "features": [[1.0, 2.0]],
    }
    assert redact(record) == record
