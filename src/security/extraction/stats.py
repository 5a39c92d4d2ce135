"""The detectors' statistics: Shapiro-Wilk's W and the binomial tail's critical counts.

numpy and the standard library only (no scipy at run time); both are cached per sample size.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np
import numpy.typing as npt


@lru_cache(maxsize=64)
def _shapiro_coefficients(n: int) -> tuple[float, ...]:
    """Royston's (1992) approximation of the Shapiro-Wilk coefficients for sample size n."""
    normal = NormalDist()
    m = [normal.inv_cdf((i - 0.375) / (n + 0.25)) for i in range(1, n + 1)]
    mm = sum(v * v for v in m)
    u = 1.0 / math.sqrt(n)
    c = [v / math.sqrt(mm) for v in m]
    a_n = (
        c[-1] + 0.221157 * u - 0.147981 * u**2 - 2.071190 * u**3 + 4.434685 * u**4 - 2.706056 * u**5
    )
    if n > 5:
        a_n1 = (
            c[-2]
            + 0.042981 * u
            - 0.293762 * u**2
            - 1.752461 * u**3
            + 5.682633 * u**4
            - 3.582633 * u**5
        )
        phi = (mm - 2 * m[-1] ** 2 - 2 * m[-2] ** 2) / (1 - 2 * a_n**2 - 2 * a_n1**2)
        a = [v / math.sqrt(phi) for v in m]
        a[-1], a[-2], a[0], a[1] = a_n, a_n1, -a_n, -a_n1
    else:
        phi = (mm - 2 * m[-1] ** 2) / (1 - 2 * a_n**2)
        a = [v / math.sqrt(phi) for v in m]
        a[-1], a[0] = a_n, -a_n
    return tuple(a)


def shapiro_w(sample: npt.ArrayLike) -> float:
    """Shapiro-Wilk's W statistic (Royston's approximation; numpy only, no scipy at run time).

    Raises:
        ValueError: fewer than three values.
    """
    values = np.sort(np.asarray(sample, dtype=np.float64).ravel())
    n = values.size
    if n < 3:
        raise ValueError("Shapiro-Wilk needs at least three values")
    spread = float(((values - values.mean()) ** 2).sum())
    if spread <= 0.0:
        return 1.0 if n == 3 else 0.0
    if n == 3:
        a = np.array([-math.sqrt(0.5), 0.0, math.sqrt(0.5)])
    else:
        a = np.asarray(_shapiro_coefficients(n))
    return float(min(1.0, float(a @ values) ** 2 / spread))


@lru_cache(maxsize=4096)
def critical_count(n: int, p0: float, alpha: float) -> int:
    """The smallest k with P(Binomial(n, p0) >= k) < alpha (n + 1 when none is)."""
    log_p, log_q = math.log(p0), math.log1p(-p0)
    tail = 0.0
    for k in range(n, -1, -1):
        log_term = (
            math.lgamma(n + 1)
            - math.lgamma(k + 1)
            - math.lgamma(n - k + 1)
            + k * log_p
            + (n - k) * log_q
        )
        tail += math.exp(log_term)
        if tail >= alpha:
            return k + 1
    return n + 1
