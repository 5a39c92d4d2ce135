"""Query streams: benign traffic and the attackers' query strategies, all seeded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Benign callers send held-out rows with measurement noise of this fraction of each feature's
# training standard deviation.
BENIGN_NOISE = 0.1


@dataclass(frozen=True, slots=True)
class Domain:
    """What the attacker and the benign callers know of one model's input space."""

    lower: np.ndarray
    upper: np.ndarray
    train_std: np.ndarray
    margin: float = 0.1
    # Categorical features (their values are category indices lower..upper, i.e. 0..k-1): every
    # stream draws valid indices for them, as the API accepts only the training categories.
    categorical: tuple[int, ...] = ()

    @property
    def width(self) -> np.ndarray:
        """Envelope width per feature (1 where the feature is constant)."""
        width = self.upper - self.lower
        return np.where(width > 0, width, 1.0)

    def clip(self, rows: np.ndarray) -> np.ndarray:
        """Clip rows into what validation accepts: the envelope plus its margin."""
        low = self.lower - self.margin * self.width
        high = self.upper + self.margin * self.width
        clipped: np.ndarray = np.clip(rows, low, high)
        return self.snap(clipped)

    def snap(self, rows: np.ndarray) -> np.ndarray:
        """Rows with each categorical feature rounded to a valid category index."""
        if not self.categorical:
            return rows
        cat = list(self.categorical)
        snapped = np.array(rows, dtype=np.float64, copy=True)
        snapped[..., cat] = np.clip(np.rint(snapped[..., cat]), self.lower[cat], self.upper[cat])
        return snapped


def benign_rows(
    base: np.ndarray, domain: Domain, count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` benign rows: base rows drawn with replacement plus realistic noise."""
    picks = base[rng.integers(0, base.shape[0], size=count)]
    noise = rng.normal(0.0, 1.0, size=picks.shape) * (BENIGN_NOISE * domain.train_std)
    noise[:, list(domain.categorical)] = 0.0  # benign callers send real categories
    clipped: np.ndarray = domain.clip(picks + noise)
    return clipped


def uniform_rows(domain: Domain, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` rows uniform in the training envelope (the classic extraction probe); each
    categorical feature's category drawn uniformly from its allowed set."""
    unit = rng.random((count, domain.lower.size))
    rows: np.ndarray = domain.lower + unit * (domain.upper - domain.lower)
    for j in domain.categorical:
        rows[:, j] = (
            np.floor(unit[:, j] * (domain.upper[j] - domain.lower[j] + 1)) + domain.lower[j]
        )
    return rows


Oracle = Callable[[np.ndarray], np.ndarray]


def boundary_probe(
    seeds: np.ndarray,
    oracle: Oracle,
    domain: Domain,
    count: int,
    rng: np.random.Generator,
    *,
    search_steps: int = 6,
    jitter: float = 0.02,
    per_boundary: int = 4,
    pairs: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """An attacker with a few natural seed rows probing the decision boundaries between them.

    It labels the seeds, then, ``pairs`` segments at a time (one request per step), bisects the
    segment between two seeds of different labels for ``search_steps`` steps and samples
    ``per_boundary`` points jittered around each boundary point found. ``oracle`` maps rows to
    label indices (one request per call). Returns exactly ``count`` queried rows and their
    labels, in query order.
    """
    rows: list[np.ndarray] = []
    labels: list[int] = []

    def ask(batch: np.ndarray) -> np.ndarray:
        batch = domain.snap(batch[: count - len(rows)])
        if batch.shape[0] == 0:
            return np.zeros(0, dtype=int)
        answer = oracle(batch)
        rows.extend(batch)
        labels.extend(int(v) for v in answer)
        return answer

    seed_labels = ask(seeds)
    seeds = seeds[: seed_labels.size]
    distinct = np.unique(seed_labels)
    while len(rows) < count:
        if distinct.size < 2:
            ask(uniform_rows(domain, min(10, count - len(rows)), rng))
            continue
        starts, ends, first_labels = [], [], []
        for _ in range(pairs):
            first, second = rng.choice(distinct, size=2, replace=False)
            starts.append(seeds[rng.choice(np.flatnonzero(seed_labels == first))])
            ends.append(seeds[rng.choice(np.flatnonzero(seed_labels == second))])
            first_labels.append(first)
        a, b, label_a = np.array(starts), np.array(ends), np.array(first_labels)
        for _ in range(search_steps):
            mid = (a + b) / 2
            answer = ask(mid)
            if answer.size < mid.shape[0]:
                break
            same = answer == label_a
            a = np.where(same[:, None], mid, a)
            b = np.where(same[:, None], b, mid)
        centres = np.repeat((a + b) / 2, per_boundary, axis=0)
        spread = rng.normal(0.0, jitter, size=centres.shape) * domain.width
        ask(domain.clip(centres + spread))
    return np.asarray(rows[:count]), np.asarray(labels[:count])


def data_rows(
    x: np.ndarray, y: np.ndarray, domain: Domain, count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` rows from the data's own distribution: a Gaussian per class fitted to ``x``.

    The adaptive extraction attacker's queries: it holds rows like the model's (here the
    held-out rows) and samples near them, class by class in their proportions, inside what
    validation accepts. Each class's covariance is shrunk towards its diagonal (a class with
    fewer rows than features has a singular covariance). A categorical feature is drawn from
    its categories' frequencies among the class's rows.
    """
    labels = np.asarray([str(v) for v in y])
    classes, counts = np.unique(labels, return_counts=True)
    picks = rng.choice(classes.size, size=count, p=counts / counts.sum())
    rows = np.empty((count, x.shape[1]))
    for index, name in enumerate(classes):
        members = x[labels == name]
        chosen = picks == index
        if not chosen.any():
            continue
        mean = members.mean(axis=0)
        cov = np.cov(members, rowvar=False) if members.shape[0] > 1 else np.zeros((x.shape[1],) * 2)
        cov = np.atleast_2d(cov)
        cov = 0.5 * cov + 0.5 * np.diag(np.diag(cov)) + 1e-9 * np.eye(x.shape[1])
        rows[chosen] = rng.multivariate_normal(mean, cov, size=int(chosen.sum()), method="eigh")
        for j in domain.categorical:
            values, freq = np.unique(members[:, j], return_counts=True)
            rows[chosen, j] = rng.choice(values, size=int(chosen.sum()), p=freq / freq.sum())
    clipped: np.ndarray = domain.clip(rows)
    return clipped
