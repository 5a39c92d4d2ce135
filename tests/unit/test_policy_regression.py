"""The regressor policies (value:N, buckets:K) in the one grammar and order, and how a policy
of one kind of model applies to the other."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from security.policy import OutputPolicy, is_output_policy, narrower_policy
from security.regression import apply_value_policy, round_value

POLICIES = [
    "label",
    "probabilities:0",
    "probabilities:2",
    "probabilities:4:top1:min0.5",
    "probabilities:6",
    "value:1",
    "value:2",
    "value:3",
    "value:6",
    "buckets:2",
    "buckets:10",
    "buckets:20",
    "buckets:100",
]


@pytest.mark.parametrize("text", ["value:0", "value:7", "buckets:1", "buckets:101", "value:2:top1"])
def test_malformed_regressor_policies_are_refused(text: str) -> None:
    assert not is_output_policy(text)


def test_the_order_is_a_partial_order_and_meet_its_greatest_lower_bound() -> None:
    parsed = [OutputPolicy.parse(p) for p in POLICIES]

    def le(a: OutputPolicy, b: OutputPolicy) -> bool:
        return a.reveals_no_more_than(b)

    for a, b, c in itertools.product(parsed, repeat=3):
        assert le(a, a)
        if le(a, b) and le(b, a):
            assert a == b
        if le(a, b) and le(b, c):
            assert le(a, c)
        meet = a.meet(b)
        assert le(meet, a) and le(meet, b)
        if le(c, a) and le(c, b):
            assert le(c, meet)


@pytest.mark.parametrize(
    ("narrow", "wide"),
    [
        ("label", "value:1"),
        ("value:2", "value:3"),
        ("buckets:10", "buckets:20"),
        ("buckets:10", "value:2"),
        ("value:1", "buckets:10"),
        ("value:2", "probabilities:2"),
        ("buckets:100", "probabilities:4"),
    ],
)
def test_narrower_regressor_claims_pass(narrow: str, wide: str) -> None:
    assert OutputPolicy.parse(narrow).reveals_no_more_than(OutputPolicy.parse(wide))
    assert narrower_policy(narrow, wide) == narrow


@pytest.mark.parametrize(
    ("wider", "default"),
    [
        ("value:3", "value:2"),
        ("buckets:20", "value:2"),
        ("buckets:20", "buckets:10"),
        ("value:2", "buckets:10"),
        ("value:3", "probabilities:2"),
        ("value:1", "label"),
        ("buckets:2", "label"),
        # a classifier policy on a regressor is value:N: a claim cannot widen a value default
        ("probabilities:3", "value:2"),
        ("probabilities:0", "buckets:2"),
    ],
)
def test_a_claim_never_widens_the_default_on_either_kind(wider: str, default: str) -> None:
    assert narrower_policy(wider, default) == default


def test_each_policy_on_the_other_kind_of_model() -> None:
    # a regressor's policy shows a classifier its label; a classifier's shows a regressor values
    assert str(OutputPolicy.parse("value:3").for_classifier()) == "label"
    assert str(OutputPolicy.parse("buckets:10").for_classifier()) == "label"
    assert str(OutputPolicy.parse("probabilities:3:top1").for_regressor()) == "value:3"
    assert str(OutputPolicy.parse("probabilities:0").for_regressor()) == "value:1"
    assert OutputPolicy.parse("label").for_regressor().buckets == 1
    assert str(OutputPolicy.parse("buckets:20").meet(OutputPolicy.parse("value:2"))) == "buckets:10"
    assert str(OutputPolicy.parse("probabilities:2").meet(OutputPolicy.parse("buckets:10"))) == (
        "buckets:10"
    )


def test_value_and_bucket_answers() -> None:
    values = np.asarray([152.345, 25.0, 400.0, -3.0])
    assert apply_value_policy(OutputPolicy.parse("value:2"), values, (25.0, 346.0)) == [
        {"value": 150.0},
        {"value": 20.0},  # half to even, as Python rounds
        {"value": 400.0},
        {"value": 0.0},
    ]
    buckets = apply_value_policy(OutputPolicy.parse("buckets:4"), values, (25.0, 346.0))
    assert buckets[0] == {"bucket": {"low": 105.25, "high": 185.5}}
    assert buckets[1] == {"bucket": {"low": 25.0, "high": 105.25}}
    # beyond the range: the extreme buckets
    assert buckets[2] == {"bucket": {"low": 265.75, "high": 346.0}}
    assert buckets[3] == buckets[1]
    label = apply_value_policy(OutputPolicy.parse("label"), values[:1], (25.0, 346.0))
    assert label == [{"bucket": {"low": 25.0, "high": 346.0}}]
    assert round_value(152.345, 6, 321.0) == 152.345
    assert round_value(0.123456, 3, 0.5) == 0.123
