"""Property tests (Hypothesis) for the two parsers every request goes through first.

* ``keys.parse_key``: the API key parser runs on attacker-chosen text before any DynamoDB call.
* ``validation.parse_prediction_request``: the body parser runs on attacker-chosen bytes.

``tests/unit/test_validation.py`` (the I/O engineer's) already holds the body parser's core
properties (rows round-trip, any JSON document, short arbitrary bytes); this module adds the key
parser, bodies up to the byte cap with the hostile examples that found a real bug (a 309-digit
integer escaped as ``OverflowError``, a 500), integers around the double limit, the row cap and
arbitrary content types.

The properties: on any input each parser either returns a value that satisfies its contract or
raises its own documented error (``MalformedKeyError`` / an ``InvalidPayloadError`` subclass),
never anything else (anything else would be a 500 through the handler), and the public text of a
refusal is one of the documented rules (whose public text is fixed, so it cannot echo input).
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from security import keys
from security.errors import InvalidPayloadError, PayloadTooLargeError
from security.keys import MalformedKeyError, ParsedKey
from security.validation import RULE_MESSAGES, FeatureSchema, parse_prediction_request

# make fuzz raises this (MLMOAT_FUZZ_PROPERTY_EXAMPLES); make test keeps the default.
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("MLMOAT_FUZZ_PROPERTY_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Iris-like envelope, stated here so the test does not depend on a trained artifact.
SCHEMA = FeatureSchema.from_manifest(
    "iris",
    ["sepal_length", "sepal_width", "petal_length", "petal_width"],
    [
        {"min": 4.3, "max": 7.9},
        {"min": 2.0, "max": 4.4},
        {"min": 1.0, "max": 6.9},
        {"min": 0.1, "max": 2.5},
    ],
    margin=0.1,
)
MAX_ROWS = 8
MAX_BODY = 4096
JSON = "application/json"

key_ids = st.text(alphabet=keys.BASE62, min_size=keys.KEY_ID_LENGTH, max_size=keys.KEY_ID_LENGTH)
secrets_ = st.text(alphabet=keys.BASE62, min_size=keys.SECRET_LENGTH, max_size=keys.SECRET_LENGTH)


def _parse(body: bytes, content_type: str | None = JSON):
    return parse_prediction_request(
        body, content_type, SCHEMA, max_body_bytes=MAX_BODY, max_rows=MAX_ROWS
    )


# ------------------------------------------------------------------------------ key parser
@PROPERTY_SETTINGS
@given(key_id=key_ids, secret=secrets_)
def test_a_formatted_key_parses_back_to_its_parts(key_id: str, secret: str) -> None:
    # given a key assembled from any valid id and secret / when parsed / then the parts return
    presented = keys.format_key(key_id, secret)
    assert keys.parse_key(presented) == ParsedKey(key_id=key_id, secret=secret)
    assert len(presented) == keys.KEY_LENGTH


@PROPERTY_SETTINGS
@given(key_id=key_ids, secret=secrets_, data=st.data())
def test_any_single_character_change_to_a_key_is_refused_without_io(
    key_id: str, secret: str, data: st.DataObject
) -> None:
    # given a valid key with one character replaced by another printable character
    presented = keys.format_key(key_id, secret)
    index = data.draw(st.integers(min_value=0, max_value=len(presented) - 1))
    replacement = data.draw(st.characters(min_codepoint=32, max_codepoint=0x2FFF))
    if replacement == presented[index]:
        return
    mutated = presented[:index] + replacement + presented[index + 1 :]
    # when it is parsed / then it is refused as malformed (CRC32 catches every 1-char change)
    with pytest.raises(MalformedKeyError):
        keys.parse_key(mutated)


@PROPERTY_SETTINGS
@given(text=st.one_of(st.text(), st.text(alphabet=keys.BASE62 + "_mlot", min_size=60, max_size=70)))
@example(text="")
@example(text="mlmoat_" + "A" * 12 + "_" + "B" * 43 + "C" * 6)
@example(text="mlmoat_" + "A" * 12 + "_" + "B" * 43 + "\u0663" * 6)  # non-ASCII digits
def test_arbitrary_text_is_either_a_valid_key_or_malformed(text: str) -> None:
    # given any text / when parsed / then a MalformedKeyError or a key that re-formats to itself
    try:
        parsed = keys.parse_key(text)
    except MalformedKeyError as exc:
        # the message is one of the parser's fixed texts, never the input
        assert str(exc) in ("wrong length", "wrong prefix or alphabet", "bad checksum")
        return
    assert keys.format_key(parsed.key_id, parsed.secret) == text
    assert keys.is_key_id(parsed.key_id)


@PROPERTY_SETTINGS
@given(key_id=key_ids, secret=secrets_)
def test_a_parsed_key_never_shows_its_secret_in_repr(key_id: str, secret: str) -> None:
    parsed = keys.parse_key(keys.format_key(key_id, secret))
    assert secret not in repr(parsed)


# ----------------------------------------------------------------------------- body parser
def _in_envelope(index: int) -> st.SearchStrategy[float]:
    bound = SCHEMA.bounds[index]
    return st.floats(min_value=bound.low, max_value=bound.high, allow_nan=False)


valid_rows = st.tuples(*(_in_envelope(i) for i in range(SCHEMA.n_features))).map(list)


def _assert_refusal_is_clean(exc: InvalidPayloadError) -> None:
    # The client sees only RULE_MESSAGES[reason]: fixed text per rule, so it cannot echo input.
    assert exc.reason in RULE_MESSAGES, exc.reason


@PROPERTY_SETTINGS
@given(raw=st.binary(max_size=MAX_BODY + 64))
@example(raw=b'{"features": [' + b"9" * 309 + b", 3, 1.5, 0.2]}")  # an int that overflows a double
@example(raw=b'{"features": [-' + b"9" * 309 + b", 3, 1.5, 0.2]}")
@example(raw=b'{"features": [1e400, 3, 1.5, 0.2]}')
@example(raw=b'{"features": [NaN, 3, 1.5, 0.2]}')
@example(raw=b'{"features": [5, 3, 1.5, 0.2], "features": [5, 3, 1.5, 0.2]}')
@example(raw=b"[" * 100000)
@example(raw=b'{"features": ["\\"]]]]]]]]", 3, 1.5, 0.2]}')
@example(raw=b"\xff\xfe{}")
def test_any_bytes_are_parsed_or_refused_with_a_documented_rule(raw: bytes) -> None:
    # given any body bytes / when parsed / then only a documented refusal, never another error
    try:
        _parse(raw)
    except InvalidPayloadError as exc:
        _assert_refusal_is_clean(exc)


@PROPERTY_SETTINGS
@given(digits=st.integers(min_value=300, max_value=400), sign=st.sampled_from(["", "-"]))
def test_huge_integers_are_refused_as_non_finite(digits: int, sign: str) -> None:
    # given a feature written as an integer too large for a double (or just below the limit)
    raw = b'{"features": [' + (sign + "9" * digits).encode() + b", 3, 1.5, 0.2]}"
    # when parsed / then it is refused as a non-finite number or as outside the envelope
    with pytest.raises(InvalidPayloadError) as caught:
        _parse(raw)
    assert caught.value.reason in ("non_finite_number", "outside_envelope")


@PROPERTY_SETTINGS
@given(extra_rows=st.integers(min_value=1, max_value=20), row=valid_rows)
def test_batches_over_the_row_cap_are_refused_as_too_large(
    extra_rows: int, row: list[float]
) -> None:
    body = json.dumps({"instances": [row] * (MAX_ROWS + extra_rows)}).encode()
    expected = "body_too_large" if len(body) > MAX_BODY else "too_many_rows"
    with pytest.raises(PayloadTooLargeError) as caught:
        _parse(body)
    assert caught.value.reason == expected


@PROPERTY_SETTINGS
@given(
    content_type=st.one_of(
        st.none(),
        st.text(max_size=40),
        st.sampled_from(
            ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"]
        ),
    ),
    row=valid_rows,
)
def test_only_json_content_types_are_accepted(content_type: str | None, row: list[float]) -> None:
    body = json.dumps({"features": row}).encode()
    try:
        parsed = _parse(body, content_type)
    except InvalidPayloadError as exc:
        assert exc.reason == "unsupported_media_type"
        return
    assert content_type is not None
    assert content_type.strip().lower().startswith("application/json")
    assert parsed.n_rows == 1
