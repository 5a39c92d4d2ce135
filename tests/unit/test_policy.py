"""The one output-policy order ("reveals no more than") and the token bounds built on it."""

from __future__ import annotations

import pytest

from security.policy import OutputPolicy, narrower_policy
from security.settings import RateSpec
from security.tokens import bound_output_policy, bound_rate


@pytest.mark.parametrize(
    ("narrow", "wide"),
    [
        ("label", "label"),
        ("label", "probabilities:0:top1:min0.9"),
        ("probabilities:1", "probabilities:2"),
        ("probabilities:2:top1", "probabilities:2"),
        ("probabilities:2:top1", "probabilities:2:top2"),
        ("probabilities:2:min0.9", "probabilities:2:min0.5"),
        ("probabilities:2:min0.5", "probabilities:2"),
        ("probabilities:1:top1:min0.8", "probabilities:2:top2:min0.6"),
    ],
)
def test_order_holds_where_every_answer_can_be_derived(narrow: str, wide: str) -> None:
    assert OutputPolicy.parse(narrow).reveals_no_more_than(OutputPolicy.parse(wide))


@pytest.mark.parametrize(
    ("wider", "default"),
    [
        ("probabilities:3", "probabilities:2"),
        ("probabilities:2", "label"),
        # Same decimals, but every class where the default shows one: the old bound let it pass.
        ("probabilities:2", "probabilities:2:top1"),
        ("probabilities:2:top3", "probabilities:2:top2"),
        # No threshold where the default hides probabilities below 0.8.
        ("probabilities:2", "probabilities:2:min0.8"),
        ("probabilities:2:min0.5", "probabilities:2:min0.8"),
        ("probabilities:1:top1", "probabilities:2:top1:min0.6"),
    ],
)
def test_a_claim_that_widens_any_dimension_gets_the_default(wider: str, default: str) -> None:
    assert not OutputPolicy.parse(wider).reveals_no_more_than(OutputPolicy.parse(default))
    assert bound_output_policy(wider, default) == default


def test_a_narrower_or_malformed_claim() -> None:
    assert bound_output_policy("probabilities:1:top1", "probabilities:2:top2") == (
        "probabilities:1:top1"
    )
    assert narrower_policy("probabilities:9", "label") == "label"
    assert narrower_policy(None, "probabilities:2") == "probabilities:2"


@pytest.mark.parametrize(
    ("claimed", "default", "expected"),
    [
        # A day's worth of the default's average in one day allows 86,400 rows in one minute.
        ("86400/day", RateSpec(60, 60), RateSpec(60, 60)),
        ("3600/hour", RateSpec(60, 60), RateSpec(60, 60)),
        ("61/minute", RateSpec(60, 60), RateSpec(60, 60)),
        # A shorter window fits a whole number of times into the default's: 1/second is 60/minute.
        ("1/second", RateSpec(60, 60), RateSpec(1, 1)),
        ("2/second", RateSpec(60, 60), RateSpec(60, 60)),
        ("30/minute", RateSpec(60, 60), RateSpec(30, 60)),
        ("10/minute", RateSpec(600, 3600), RateSpec(10, 60)),
        ("11/minute", RateSpec(600, 3600), RateSpec(600, 3600)),
        ("not a rate", RateSpec(60, 60), RateSpec(60, 60)),
    ],
)
def test_rate_claims_allow_no_more_rows_in_any_default_window(
    claimed: str, default: RateSpec, expected: RateSpec
) -> None:
    assert bound_rate(claimed, default) == expected
