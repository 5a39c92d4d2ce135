"""API key format: generate, parse, hash and compare. Pure code, no I/O.

A key reads ``mlmoat_<key_id>_<secret><checksum>``:

* ``mlmoat_`` -- a fixed prefix, so secret scanners (and our log redaction) can find leaked keys;
* ``key_id`` -- 12 base62 characters (~71 random bits), public: it names the key in DynamoDB
  (``key#<key_id>``), in logs, in the admin API;
* ``secret`` -- 43 base62 characters drawn with ``secrets`` (62**43 > 2**256, so >= 256 bits);
* ``checksum`` -- CRC32 of everything before it, 6 base62 characters. It is no defence (anyone can
  compute a CRC) but lets a scanner tell a real key from random text and lets us refuse a
  mistyped or truncated key without any DynamoDB call.

Only ``hash_secret(key_id, secret)`` is stored. A fast keyed hash (HMAC-SHA-256) is the right tool
here, not a password hash (bcrypt/scrypt/argon2): those slow down guessing of *low-entropy* human
passwords, while a 256-bit uniformly random secret cannot be brute-forced whatever the hash speed,
and a slow hash would cost every request CPU time on the hot path. HMAC is keyed with the key id
so the same secret under two ids hashes differently and a hash copied onto another record is
useless. Comparison is constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

KEY_PREFIX = "mlmoat_"
KEY_ID_LENGTH = 12
SECRET_LENGTH = 43
CHECKSUM_LENGTH = 6
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KEY_ID_RE = re.compile(rf"^[0-9A-Za-z]{{{KEY_ID_LENGTH}}}$")
_KEY_RE = re.compile(
    rf"^{KEY_PREFIX}(?P<key_id>[0-9A-Za-z]{{{KEY_ID_LENGTH}}})_"
    rf"(?P<secret>[0-9A-Za-z]{{{SECRET_LENGTH}}})(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_LENGTH}}})$"
)
KEY_LENGTH = len(KEY_PREFIX) + KEY_ID_LENGTH + 1 + SECRET_LENGTH + CHECKSUM_LENGTH
_HASH_DOMAIN = b"mlmoat-key-v1:"
_FINGERPRINT_DOMAIN = b"mlmoat-fingerprint-v1:"


class MalformedKeyError(ValueError):
    """The text is not an mlmoat API key (wrong prefix, length, alphabet or checksum)."""


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """The parts of a well-formed API key; ``secret`` must never be logged."""

    key_id: str
    secret: str

    def __repr__(self) -> str:
        return f"ParsedKey(key_id={self.key_id!r}, secret=<redacted>)"


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(BASE62[digit])
    return "".join(reversed(chars))


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def checksum(body: str) -> str:
    """The 6-character base62 CRC32 of ``body`` (everything in a key before the checksum)."""
    return _base62(zlib.crc32(body.encode("ascii")) & 0xFFFFFFFF, CHECKSUM_LENGTH)


def new_key_id() -> str:
    """A fresh random key id (12 base62 characters)."""
    return _random_base62(KEY_ID_LENGTH)


def is_key_id(text: str) -> bool:
    """Whether ``text`` is a syntactically valid key id."""
    return _KEY_ID_RE.match(text) is not None


def new_secret() -> str:
    """A fresh secret: 43 base62 characters from ``secrets`` (>= 256 bits)."""
    return _random_base62(SECRET_LENGTH)


def format_key(key_id: str, secret: str) -> str:
    """Assemble the presented key from its id and secret, appending the checksum.

    Raises:
        MalformedKeyError: ``key_id`` or ``secret`` is not of the expected length and alphabet.
    """
    body = f"{KEY_PREFIX}{key_id}_{secret}"
    key = body + checksum(body)
    if _KEY_RE.match(key) is None:
        raise MalformedKeyError("key id or secret has the wrong shape")
    return key


def generate_key(key_id: str | None = None) -> tuple[ParsedKey, str]:
    """A new key (a fresh id unless one is given, as on rotation) and its presented text."""
    parsed = ParsedKey(key_id=key_id or new_key_id(), secret=new_secret())
    return parsed, format_key(parsed.key_id, parsed.secret)


def parse_key(text: str) -> ParsedKey:
    """Split a presented key into id and secret, checking prefix, length, alphabet and checksum.

    Raises:
        MalformedKeyError: the text is not a well-formed mlmoat key.
    """
    if len(text) != KEY_LENGTH:
        raise MalformedKeyError("wrong length")
    match = _KEY_RE.match(text)
    if match is None:
        raise MalformedKeyError("wrong prefix or alphabet")
    body = text[:-CHECKSUM_LENGTH]
    if not hmac.compare_digest(checksum(body), match["checksum"]):
        raise MalformedKeyError("bad checksum")
    return ParsedKey(key_id=match["key_id"], secret=match["secret"])


def hash_secret(key_id: str, secret: str) -> str:
    """HMAC-SHA-256 of the secret keyed by the key id, hex: the only form of a secret we store."""
    mac = hmac.new(_HASH_DOMAIN + key_id.encode("ascii"), secret.encode("ascii"), hashlib.sha256)
    return mac.hexdigest()


def secret_matches(stored_hash: str | None, presented_hash: str) -> bool:
    """Constant-time comparison of a stored secret hash with a presented one."""
    if not stored_hash:
        return False
    return hmac.compare_digest(stored_hash.encode("ascii"), presented_hash.encode("ascii"))


def fingerprint(text: str) -> str:
    """A short non-reversible fingerprint of a credential for logs (12 hex characters)."""
    return hashlib.sha256(_FINGERPRINT_DOMAIN + text.encode("utf-8")).hexdigest()[:12]
