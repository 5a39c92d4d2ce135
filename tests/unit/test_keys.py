"""API key format, checksum, hashing and comparison (security.keys: pure, no I/O)."""

from __future__ import annotations

import math
import re

import pytest

from security.keys import (
    BASE62,
    KEY_LENGTH,
    KEY_PREFIX,
    SECRET_LENGTH,
    MalformedKeyError,
    ParsedKey,
    checksum,
    fingerprint,
    format_key,
    generate_key,
    hash_secret,
    parse_key,
    secret_matches,
)


def test_generated_key_has_prefix_id_secret_and_checksum_and_round_trips() -> None:
    parsed, text = generate_key()
    assert text.startswith(KEY_PREFIX) and len(text) == KEY_LENGTH
    assert re.fullmatch(r"mlmoat_[0-9A-Za-z]{12}_[0-9A-Za-z]{49}", text)
    assert parse_key(text) == parsed


def test_secret_carries_at_least_256_bits() -> None:
    assert SECRET_LENGTH * math.log2(len(BASE62)) >= 256
    secrets_seen = {generate_key()[0].secret for _ in range(200)}
    assert len(secrets_seen) == 200


def test_rotation_keeps_the_key_id_and_changes_the_secret() -> None:
    first, _ = generate_key()
    second, text = generate_key(first.key_id)
    assert second.key_id == first.key_id and second.secret != first.secret
    assert parse_key(text).key_id == first.key_id


@pytest.mark.parametrize(
    "mutate",
    [
        lambda k: k[:-1] + ("0" if k[-1] != "0" else "1"),  # checksum digit changed
        lambda k: k[:20] + ("a" if k[20] != "a" else "b") + k[21:],  # secret changed, checksum kept
        lambda k: "mlmoax_" + k[7:],  # prefix
        lambda k: k[:-1],  # too short
        lambda k: k + "0",  # too long
        lambda k: k[:30] + "-" + k[31:],  # alphabet
        lambda k: k.replace("_", "-"),
        lambda k: "",
    ],
)
def test_malformed_keys_are_refused(mutate: object) -> None:
    _, text = generate_key()
    with pytest.raises(MalformedKeyError):
        parse_key(mutate(text))  # type: ignore[operator]


def test_checksum_is_crc32_in_six_base62_characters() -> None:
    value = checksum("mlmoat_AAAAAAAAAAAA_" + "b" * 43)
    assert len(value) == 6 and all(c in BASE62 for c in value)
    assert checksum("x") != checksum("y")


def test_format_key_refuses_wrong_shapes() -> None:
    with pytest.raises(MalformedKeyError):
        format_key("short", "s" * 43)


def test_hash_is_keyed_by_key_id_and_comparison_matches_only_the_same_secret() -> None:
    parsed, _ = generate_key()
    stored = hash_secret(parsed.key_id, parsed.secret)
    assert re.fullmatch(r"[0-9a-f]{64}", stored)
    assert parsed.secret not in stored
    assert secret_matches(stored, hash_secret(parsed.key_id, parsed.secret))
    other_last = "y" if parsed.secret.endswith("x") else "x"  # always a different secret
    assert not secret_matches(stored, hash_secret(parsed.key_id, parsed.secret[:-1] + other_last))
    assert not secret_matches(stored, hash_secret("B" * 12, parsed.secret))
    assert not secret_matches(None, stored) and not secret_matches("", stored)


def test_parsed_key_repr_and_fingerprint_never_show_the_secret() -> None:
    parsed, text = generate_key()
    assert parsed.secret not in repr(parsed)
    fp = fingerprint(text)
    assert re.fullmatch(r"[0-9a-f]{12}", fp) and fp not in text
    assert fingerprint(text) == fp and fingerprint(text + "x") != fp
    assert isinstance(parsed, ParsedKey)
