"""Output policies: the one grammar, and the order "reveals no more than".

Grammar (set per key, or from a token's claims; the default is
``settings.default_output_policy``, ``probabilities:2``, the seed's rounding)::

    label                         the label alone
    probabilities:N               every class, probabilities rounded to N decimals (0-6)
    probabilities:N:topK          only the K most probable classes
    probabilities:N[:topK]:minT   below a top probability of T, the label alone

Every policy returns the label. Rounding, top-k and the confidence threshold each remove
information an attacker would use for model extraction, inversion or membership inference.

The order: ``a.reveals_no_more_than(b)`` holds when every answer under ``a`` can be computed
from the answer under ``b``: ``label`` reveals least; otherwise ``a`` needs no more decimals,
no more classes (no top-k means every class) and no lower confidence threshold (no threshold
means 0) than ``b``. Settings, the key admin and the token bounds all use this one order, so a
claim cannot widen a default in any of the four dimensions.

Pure code: no I/O and no imports from the rest of the layer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_POLICY_RE = re.compile(
    r"^(?:(?P<label>label)|probabilities:(?P<decimals>[0-6])"
    r"(?::top(?P<top>[1-9][0-9]?))?(?::min(?P<min>0\.[0-9]{1,4}))?)$"
)


class OutputPolicyError(ValueError):
    """The text is not a well-formed output policy."""


def is_output_policy(text: str) -> bool:
    """Whether ``text`` is a well-formed output policy."""
    return _POLICY_RE.match(text) is not None


@dataclass(frozen=True, slots=True)
class OutputPolicy:
    """How much of a prediction a caller may see."""

    probabilities: bool
    decimals: int = 2
    top_k: int | None = None
    min_confidence: float | None = None

    @classmethod
    def parse(cls, text: str) -> OutputPolicy:
        """Parse ``label`` / ``probabilities:N[:topK][:minT]``.

        Raises:
            OutputPolicyError: the text does not follow the grammar.
        """
        match = _POLICY_RE.match(text.strip())
        if match is None:
            raise OutputPolicyError("not an output policy")
        if match["label"]:
            return cls(probabilities=False)
        return cls(
            probabilities=True,
            decimals=int(match["decimals"]),
            top_k=int(match["top"]) if match["top"] else None,
            min_confidence=float(match["min"]) if match["min"] else None,
        )

    def reveals_no_more_than(self, other: OutputPolicy) -> bool:
        """Whether every answer under this policy can be derived from the answer under ``other``."""
        if not self.probabilities:
            return True
        if not other.probabilities:
            return False
        own_top = math.inf if self.top_k is None else self.top_k
        other_top = math.inf if other.top_k is None else other.top_k
        return (
            self.decimals <= other.decimals
            and own_top <= other_top
            and (self.min_confidence or 0.0) >= (other.min_confidence or 0.0)
        )

    def meet(self, other: OutputPolicy) -> OutputPolicy:
        """The most that reveals no more than either policy (fewer decimals, fewer classes, the
        higher confidence threshold; ``label`` when either is)."""
        if not (self.probabilities and other.probabilities):
            return OutputPolicy(probabilities=False)
        tops = [t for t in (self.top_k, other.top_k) if t is not None]
        mins = [m for m in (self.min_confidence, other.min_confidence) if m is not None]
        return OutputPolicy(
            probabilities=True,
            decimals=min(self.decimals, other.decimals),
            top_k=min(tops) if tops else None,
            min_confidence=max(mins) if mins else None,
        )

    def __str__(self) -> str:
        if not self.probabilities:
            return "label"
        text = f"probabilities:{self.decimals}"
        if self.top_k is not None:
            text += f":top{self.top_k}"
        if self.min_confidence is not None:
            text += f":min{self.min_confidence:g}"
        return text


def narrower_policy(claimed: str | None, default: str) -> str:
    """``claimed`` if it is well formed and reveals no more than ``default``, else ``default``."""
    if claimed is None or not is_output_policy(claimed):
        return default
    if OutputPolicy.parse(claimed).reveals_no_more_than(OutputPolicy.parse(default)):
        return claimed
    return default


def rate_within(count: int, window: int, cap_count: int, cap_window: int) -> bool:
    """Whether ``count`` rows per ``window`` seconds allows no more rows than the cap in any
    window of the cap's length, and no longer window.

    Windows are aligned to the epoch, so a shorter window that divides the cap's fits a whole
    number of times into every cap window. A longer window, or one that does not divide the
    cap's, could allow a burst the cap never would (86400/day under 60/minute: 86,400 rows in
    one minute).
    """
    return (
        window <= cap_window
        and cap_window % window == 0
        and count * (cap_window // window) <= cap_count
    )


def rate_capped(count: int, window: int, cap_count: int, cap_window: int) -> bool:
    """Whether a key's ``count``/``window`` stays within a cap in every aligned cap window.

    A window no longer than the cap's must satisfy ``rate_within``; a longer one must be a
    multiple of the cap's (each aligned cap window then lies inside one key window) and allow
    no more rows than the cap in all of it (100000/hour under 100000/minute, not 10^7/hour).
    """
    if window <= cap_window:
        return rate_within(count, window, cap_count, cap_window)
    return window % cap_window == 0 and count <= cap_count
