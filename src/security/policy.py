"""Output policies: the one grammar, and the order "reveals no more than".

Grammar (set per key, or from a token's claims; the default is
``settings.default_output_policy``, ``probabilities:2``, the seed's rounding)::

    label                         the label alone
    probabilities:N               every class, probabilities rounded to N decimals (0-6)
    probabilities:N:topK          only the K most probable classes
    probabilities:N[:topK]:minT   below a top probability of T, the label alone
    value:N                       a regressor's value rounded to N significant digits (1-6)
                                  of its training target range (one step for every value)
    buckets:K                     a regressor's value as one of K equal-width buckets (2-100)
                                  over the training target range: the bucket's bounds

Every classifier policy returns the label. Rounding, top-k and the confidence threshold each
remove information an attacker would use for model extraction, inversion or membership inference.

One policy applies to both kinds of model (a key is not tied to one), through its two views:

* on a classifier (``for_classifier``), ``value:N`` and ``buckets:K`` are ``label``: a
  regressor's policy says nothing about probabilities, so a classifier shows the least;
* on a regressor (``for_regressor``), ``probabilities:N[...]`` is ``value:max(N, 1)`` (N
  decimals of a probability become N significant digits) and ``label`` is the coarsest answer,
  ``buckets:1``: the training target range, whatever the row (not writable: only ``label``
  reaches it).

The order: ``a.reveals_no_more_than(b)`` holds when it holds for both views. On classifiers,
every answer under ``a`` can be computed from the answer under ``b``: ``label`` reveals least;
otherwise ``a`` needs no more decimals, no more classes (no top-k means every class) and no lower
confidence threshold (no threshold means 0) than ``b``. On regressors the order is by resolution
across the training target range: ``buckets:1`` reveals least; ``value:N`` no more than
``value:M`` when N <= M, ``buckets:K`` no more than ``buckets:L`` when K <= L; across the two,
``value:N`` (rounded at the range's N-th significant digit, so 10^(N-1) to 10^N - 1 distinct
answers across it) reveals no more than ``buckets:K`` when 10^N - 1 <= K, and ``buckets:K`` no
more than ``value:N`` when K <= 10^(N-1) (``buckets:10`` <= ``value:2``, ``value:1`` <=
``buckets:10``; ``buckets:20`` and ``value:2`` are not comparable, their meet is ``buckets:10``).
The views are one-to-one on distinct policies, so this is a partial order. Settings, the key
admin and the token bounds all use this one order (and ``meet``, its greatest lower bound), so
a claim cannot widen a default in any dimension or on either kind of model.

Pure code: no I/O and no imports from the rest of the layer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_POLICY_RE = re.compile(
    r"^(?:(?P<label>label)|probabilities:(?P<decimals>[0-6])"
    r"(?::top(?P<top>[1-9][0-9]?))?(?::min(?P<min>0\.[0-9]{1,4}))?"
    r"|value:(?P<digits>[1-6])|buckets:(?P<buckets>[2-9]|[1-9][0-9]|100))$"
)
MAX_DIGITS = 6
MAX_BUCKETS = 100


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
    #: A regressor's policy: significant digits (``value:N``) or bucket count (``buckets:K``).
    digits: int | None = None
    buckets: int | None = None

    @classmethod
    def parse(cls, text: str) -> OutputPolicy:
        """Parse ``label`` / ``probabilities:N[:topK][:minT]`` / ``value:N`` / ``buckets:K``.

        Raises:
            OutputPolicyError: the text does not follow the grammar.
        """
        match = _POLICY_RE.match(text.strip())
        if match is None:
            raise OutputPolicyError("not an output policy")
        if match["label"]:
            return cls(probabilities=False)
        if match["digits"]:
            return cls(probabilities=False, digits=int(match["digits"]))
        if match["buckets"]:
            return cls(probabilities=False, buckets=int(match["buckets"]))
        return cls(
            probabilities=True,
            decimals=int(match["decimals"]),
            top_k=int(match["top"]) if match["top"] else None,
            min_confidence=float(match["min"]) if match["min"] else None,
        )

    @property
    def for_regression(self) -> bool:
        """Whether this is a regressor's policy (``value:N`` or ``buckets:K``)."""
        return self.digits is not None or self.buckets is not None

    def for_classifier(self) -> OutputPolicy:
        """What this policy shows of a classifier: a regressor's policy shows the label."""
        return OutputPolicy(probabilities=False) if self.for_regression else self

    def for_regressor(self) -> OutputPolicy:
        """What this policy shows of a regressor: ``value:N`` or ``buckets:K`` (``label`` is
        ``buckets:1``, the training range; ``probabilities:N[...]`` is ``value:max(N, 1)``)."""
        if self.for_regression:
            return self
        if not self.probabilities:
            return OutputPolicy(probabilities=False, buckets=1)
        return OutputPolicy(probabilities=False, digits=max(1, self.decimals))

    def reveals_no_more_than(self, other: OutputPolicy) -> bool:
        """Whether every answer under this policy can be derived from the answer under
        ``other``, on a classifier and on a regressor."""
        return _classifier_le(self.for_classifier(), other.for_classifier()) and _regressor_le(
            self.for_regressor(), other.for_regressor()
        )

    def meet(self, other: OutputPolicy) -> OutputPolicy:
        """The most that reveals no more than either policy (fewer decimals, fewer classes, the
        higher confidence threshold; ``label`` when either is; on regressors fewer digits, the
        common divisor of the bucket counts, ``label`` for a bucket count and a value)."""
        if self.for_regression or other.for_regression:
            # One side shows a classifier its label only, so the meet does too: it is the meet
            # of the regressor views (``label`` for ``buckets:1``).
            return _regressor_meet(self.for_regressor(), other.for_regressor())
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
        if self.digits is not None:
            return f"value:{self.digits}"
        if self.buckets is not None:
            return f"buckets:{self.buckets}"
        if not self.probabilities:
            return "label"
        text = f"probabilities:{self.decimals}"
        if self.top_k is not None:
            text += f":top{self.top_k}"
        if self.min_confidence is not None:
            text += f":min{self.min_confidence:g}"
        return text


def _classifier_le(own: OutputPolicy, other: OutputPolicy) -> bool:
    if not own.probabilities:
        return True
    if not other.probabilities:
        return False
    own_top = math.inf if own.top_k is None else own.top_k
    other_top = math.inf if other.top_k is None else other.top_k
    return (
        own.decimals <= other.decimals
        and own_top <= other_top
        and (own.min_confidence or 0.0) >= (other.min_confidence or 0.0)
    )


def _levels(view: OutputPolicy) -> tuple[int, int]:
    """The fewest and the most answers a regressor view can give across the training range:
    ``buckets:K`` exactly K; ``value:N`` at least 10^(N-1) and fewer than 10^N (its rounding
    step is the N-th significant digit of the range)."""
    if view.buckets is not None:
        return view.buckets, view.buckets
    digits = view.digits or 1
    return 10 ** (digits - 1), 10**digits - 1


def _regressor_le(own: OutputPolicy, other: OutputPolicy) -> bool:
    # Both are regressor views: exactly one of digits and buckets is set.
    if own.buckets == 1 or own == other:
        return True
    if (own.buckets is None) == (other.buckets is None):  # the same family
        return (own.buckets or 0) <= (other.buckets or 0) and (own.digits or 0) <= (
            other.digits or 0
        )
    # Across the families: no more answers at most than the other gives at least.
    return _levels(own)[1] <= _levels(other)[0]


def _regressor_meet(own: OutputPolicy, other: OutputPolicy) -> OutputPolicy:
    if _regressor_le(own, other):
        low = own
    elif _regressor_le(other, own):
        low = other
    else:
        # ``buckets:K`` and ``value:N`` with 10^(N-1) < K < 10^N: the most buckets below both.
        digits = own.digits or other.digits or 1
        low = OutputPolicy(probabilities=False, buckets=10 ** (digits - 1))
    return OutputPolicy(probabilities=False) if low.buckets == 1 else low


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
