"""Output policies applied after prediction, and the redaction choke point for logs.

The policy grammar and its order live in ``security.policy``; ``apply_output_policy`` turns raw
probabilities into what a policy lets a caller see.

``redact`` is the single choke point every audit and log field goes through: it masks our API
keys (``mlmoat_`` prefix), ``Bearer`` credentials, JWT-shaped strings, and the whole value of any
field whose name says it holds a secret.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from security.keys import KEY_PREFIX
from security.policy import OutputPolicy

MASK = "***"
_SECRET_PATTERNS = (
    # Our API keys, also truncated ones: the prefix followed by anything key-shaped.
    re.escape(KEY_PREFIX) + r"[0-9A-Za-z_]{4,}",
    r"(?i:\bbearer\s+[^\s\"',;]+)",
    r"\beyJ[0-9A-Za-z_-]{2,}\.[0-9A-Za-z_-]{2,}\.[0-9A-Za-z_-]*",
)
# One alternation, one scan per string: where matches would overlap (a key or a JWT after
# "Bearer"), the leftmost, the bearer credential, is masked whole, as applying them in turn did.
_SECRET_RE = re.compile("|".join(_SECRET_PATTERNS))
_SECRET_FIELD_RE = re.compile(
    r"(?i)(api[-_]?key|authorization|token|secret|password|credential|cookie)"
)
# Audit fields that are known-safe identifiers even though their names match the pattern above.
_SAFE_FIELDS = frozenset({"principal_fingerprint", "credential_type"})


def _label(value: Any) -> str | int:
    # Class labels come from the manifest: ints stay ints, everything else is shown as text.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | np.integer):
        return int(value)
    return str(value)


def apply_output_policy(
    policy: OutputPolicy,
    classes: Sequence[Any],
    probabilities: np.ndarray,
    labels: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Turn raw class probabilities (rows x classes) into the predictions a caller may see.

    The label is the arg-max of the raw probabilities, so rounding cannot change it, unless
    ``labels`` gives each row's class index (input smoothing serves its majority vote, which
    can differ from the arg-max of the averaged probabilities near a boundary).
    """
    if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
        raise ValueError("probabilities do not match the model's classes")
    predictions: list[dict[str, Any]] = []
    for index, row in enumerate(probabilities):
        best = int(np.argmax(row)) if labels is None else int(labels[index])
        prediction: dict[str, Any] = {"label": _label(classes[best])}
        confident = policy.min_confidence is None or float(row[best]) >= policy.min_confidence
        if policy.probabilities and confident:
            order = sorted(range(len(classes)), key=lambda i: (-float(row[i]), i))
            if policy.top_k is not None:
                order = order[: policy.top_k]
            prediction["probabilities"] = {
                str(_label(classes[i])): round(float(row[i]), policy.decimals) for i in order
            }
        predictions.append(prediction)
    return predictions


def redact_text(text: str) -> str:
    """Mask anything in ``text`` that looks like key material."""
    return _SECRET_RE.sub(MASK, text)


@functools.lru_cache(maxsize=1024)
def _is_secret_field(name: str) -> bool:
    # Field names of log records are few and repeat on every line: match each name once.
    return name not in _SAFE_FIELDS and _SECRET_FIELD_RE.search(name) is not None


_PLAIN = frozenset({int, float, bool, type(None)})


def redact(value: Any, *, field: str | None = None) -> Any:
    """The log redaction choke point: mask key material anywhere inside ``value``.

    Strings are scanned for key shapes; a mapping entry whose name says it holds a secret
    (``api_key``, ``authorization``, ``token``, ...) is masked whole, whatever its value.
    Numbers, booleans and None carry no key material and are returned as they are.
    """
    if field is not None and _is_secret_field(field):
        return MASK if value not in (None, "") else value
    return _redact(value)


def _redact(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return _SECRET_RE.sub(MASK, value)
    if kind in _PLAIN:
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if _is_secret_field(name):
                out[name] = MASK if item not in (None, "") else item
            else:
                out[name] = _redact(item)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(item) for item in value]
    if isinstance(value, str):  # a str subclass (a str enum member, ...)
        return _SECRET_RE.sub(MASK, value)
    if isinstance(value, bool | int | float):
        return value
    # Anything else (an exception object in a stack trace, a Decimal, ...) would be rendered
    # with str() by the JSON serialiser: render it here, where it can still be redacted.
    return _SECRET_RE.sub(MASK, str(value))
