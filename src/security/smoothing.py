"""Input smoothing at serving time: randomised smoothing (Cohen et al., 2019) with keyed noise.

A model with smoothing on answers each request row from ``n`` noisy copies of it: Gaussian noise
of scale ``sigma`` is added in the envelope's normalised space (each feature divided by its
training range, so one ``sigma`` means the same share of every feature's range), the copies of
every row go to the model in one batched call, and the row is answered with the majority label
over its copies and the copies' averaged probabilities, which then pass the caller's output
policy like any other answer.

The noise is not fresh randomness: each row's copies are drawn from a PCG64 generator whose state
is HMAC-SHA-256 of the row's canonical bytes under a per-deployment secret
(``Settings.smoothing_secret``). Repeating a query therefore returns the same answer, so an
attacker cannot average the noise away by asking again, and without the secret the noise cannot
be predicted. A row that differs in any bit gets unrelated noise.

Each served row's certified L2 radius (in normalised units) goes to the audit record, never to
the client: ``sigma * Phi^-1(p_lower)``, where ``p_lower`` is the one-sided Clopper-Pearson lower
confidence bound (level ``1 - alpha``) on the majority label's probability under the noise, from
its vote count among the ``n`` copies. It is 0 when ``p_lower <= 1/2`` (no certificate). The same
copies select the label and bound its probability, so the figure is the simple, slightly
optimistic variant of Cohen's CERTIFY (which draws a separate selection sample): an audit figure
for spotting rows served close to a decision boundary, not a proof to hand to a third party.
Everything here is standard library and numpy (the Lambda deps layer carries no SciPy).

The settings live in the ``smoothing`` section of ``models/<name>/defences.json``, calibrated per
model by ``mlmoat redteam calibrate``; a file without that section (older calibrations) means
smoothing off, and a section for another model version is refused at cold start.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from security.defences import DEFENCES_FILE, ProbabilisticModel, Squeezer
from security.errors import ModelIntegrityError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Domain separation: these HMACs key noise and nothing else derived from the same secret.
_NOISE_DOMAIN = b"mlmoat-smoothing-noise-v1\x00"
_STANDARD_NORMAL = NormalDist()
_MAX_COPIES = 1024


@dataclass(frozen=True, slots=True)
class SmoothingConfig:
    """One model's smoothing: on or off, copies per row, noise scale and the envelope it uses.

    ``width`` is each feature's training range: the normalised space is ``x / width`` (up to an
    offset noise does not see), in which the noise has scale ``sigma``; ``alpha`` is the radius
    bound's error level. ``fixed`` lists the features noise never touches: a model's
    categorical features (category indices, ``security.features``), so smoothing never invents
    a category; the certified radius is then one in the numeric features' subspace.
    """

    model: str
    model_version: str
    enabled: bool
    n: int
    sigma: float
    alpha: float
    width: tuple[float, ...]
    fixed: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SmoothingConfig:
        """Parse the ``smoothing`` section of ``defences.json``.

        Raises:
            ValueError: a field is missing or out of range.
        """
        try:
            config = cls(
                model=str(data["model"]),
                model_version=str(data["model_version"]),
                enabled=bool(data["enabled"]),
                n=int(data["n"]),
                sigma=float(data["sigma"]),
                alpha=float(data["alpha"]),
                width=tuple(float(v) for v in data["width"]),
                fixed=tuple(int(v) for v in data.get("fixed", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed smoothing section: {exc}") from exc
        if not 1 <= config.n <= _MAX_COPIES:
            raise ValueError(f"smoothing n must be between 1 and {_MAX_COPIES}")
        if not (math.isfinite(config.sigma) and config.sigma > 0):
            raise ValueError("smoothing sigma must be finite and positive")
        if not 0.0 < config.alpha < 0.5:
            raise ValueError("smoothing alpha must be in (0, 0.5)")
        if not config.width or not all(math.isfinite(v) and v > 0 for v in config.width):
            raise ValueError("width must be non-empty, every entry finite and positive")
        if any(not 0 <= j < len(config.width) for j in config.fixed):
            raise ValueError("fixed must list feature indices")
        return config

    def to_dict(self) -> dict[str, Any]:
        """The ``smoothing`` section of ``defences.json``."""
        return {
            "model": self.model,
            "model_version": self.model_version,
            "enabled": self.enabled,
            "n": self.n,
            "sigma": self.sigma,
            "alpha": self.alpha,
            "width": list(self.width),
            **({"fixed": list(self.fixed)} if self.fixed else {}),
        }

    def noisy_copies(self, rows: npt.NDArray[Any], secret: bytes) -> FloatArray:
        """The ``n`` keyed noisy copies of each row, shape ``(rows * n, features)``, row-major."""
        values = np.atleast_2d(np.asarray(rows, dtype=np.float64))
        width = np.asarray(self.width, dtype=np.float64)
        if self.fixed:
            width = width.copy()
            width[list(self.fixed)] = 0.0
        noise = row_noise(values, secret, self.n) * self.sigma
        copies: FloatArray = values[:, None, :] + noise * width
        return copies.reshape(-1, values.shape[1])


def row_seed(row: npt.NDArray[np.float64], secret: bytes) -> bytes:
    """HMAC-SHA-256 of one row's canonical bytes (little-endian float64, ``-0.0`` as ``0.0``)."""
    canonical = (np.asarray(row, dtype="<f8") + 0.0).tobytes()
    return hmac.new(secret, _NOISE_DOMAIN + canonical, hashlib.sha256).digest()


def row_noise(rows: FloatArray, secret: bytes, n: int) -> FloatArray:
    """Standard normal noise, shape ``(rows, n, features)``, each row's from its own keyed PCG64.

    The generator's 128-bit state is the digest's first half and its increment the second half
    (made odd, as PCG requires); reseeding one generator through its state is ~3x faster than
    constructing one per row, which matters when an attacker's query holds hundreds of rows.
    """
    count, features = rows.shape
    out = np.empty((count, n, features), dtype=np.float64)
    bit_generator = np.random.PCG64(0)
    generator = np.random.Generator(bit_generator)
    state = bit_generator.state
    for i in range(count):
        digest = row_seed(rows[i], secret)
        state["state"] = {
            "state": int.from_bytes(digest[:16], "big"),
            "inc": int.from_bytes(digest[16:], "big") | 1,
        }
        state["has_uint32"], state["uinteger"] = 0, 0
        bit_generator.state = state
        out[i] = generator.standard_normal((n, features))
    return out


@functools.lru_cache(maxsize=4096)
def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """The one-sided ``1 - alpha`` Clopper-Pearson lower bound on a binomial proportion.

    The bound ``p`` solves ``P(X >= successes | trials, p) = alpha``; the tail is monotone in
    ``p``, so 60 bisection steps give it to double precision with the standard library only.
    """
    if not 0 <= successes <= trials or trials < 1:
        raise ValueError("need 0 <= successes <= trials and trials >= 1")
    if successes == 0:
        return 0.0
    low, high = 0.0, successes / trials
    for _ in range(60):
        middle = (low + high) / 2
        if _upper_tail(successes, trials, middle) > alpha:
            high = middle
        else:
            low = middle
    return low


def _upper_tail(successes: int, trials: int, p: float) -> float:
    # P(X >= successes) for X ~ Binomial(trials, p), summed in log space (no overflow at n=1024).
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n = math.lgamma(trials + 1)
    total = 0.0
    for k in range(successes, trials + 1):
        log_term = log_n - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
        total += math.exp(log_term + k * log_p + (trials - k) * log_q)
    return min(1.0, total)


def certified_radius(top_votes: int, n: int, sigma: float, alpha: float) -> float:
    """Cohen's L2 radius ``sigma * Phi^-1(p_lower)``; 0 when the bound does not exceed 1/2."""
    p_lower = clopper_pearson_lower(top_votes, n, alpha)
    if p_lower <= 0.5:
        return 0.0
    return sigma * _STANDARD_NORMAL.inv_cdf(p_lower)


class SmoothedModel:
    """One request's view of a model with smoothing on: ``predict_proba`` answers from copies.

    It is made per request and keeps the vote counts of its last call, so the caller can take
    the majority labels and the radii of the rows it serves after the squeezer (which predicts
    raw and squeezed rows in one call) has used it.
    """

    def __init__(self, model: ProbabilisticModel, config: SmoothingConfig, secret: bytes) -> None:
        """Wrap ``model`` with ``config``'s smoothing keyed by ``secret``."""
        self._model = model
        self._config = config
        self._secret = secret
        self.votes: IntArray = np.zeros((0, 0), dtype=np.int64)

    @property
    def name(self) -> str:
        """The wrapped model's name."""
        return self._model.name

    def predict_proba(self, rows: npt.NDArray[Any]) -> FloatArray:
        """Averaged probabilities over each row's noisy copies, from one batched model call."""
        values = np.atleast_2d(np.asarray(rows, dtype=np.float64))
        n = self._config.n
        copies = self._config.noisy_copies(values, self._secret)
        proba = np.asarray(self._model.predict_proba(copies), dtype=np.float64)
        per_row = proba.reshape(values.shape[0], n, -1)
        winners = per_row.argmax(axis=2)
        classes = per_row.shape[2]
        self.votes = (winners[:, :, None] == np.arange(classes)).sum(axis=1).astype(np.int64)
        mean: FloatArray = per_row.mean(axis=1)
        return mean

    def radii(self, votes: IntArray) -> FloatArray:
        """The certified radius of each row from its vote counts."""
        config = self._config
        return np.asarray(
            [certified_radius(int(v.max()), config.n, config.sigma, config.alpha) for v in votes],
            dtype=np.float64,
        )


@dataclass(frozen=True, slots=True)
class Served:
    """What the defences decided for one request's rows.

    ``labels`` are class indices (the smoothed majority, or the arg-max of ``probabilities``),
    ``flagged`` the squeezing detector's count and ``radii`` the certified radii (None: no
    smoothing for this model).
    """

    probabilities: FloatArray
    labels: IntArray
    flagged: int
    radii: FloatArray | None


class Smoother:
    """Every served model's smoothing settings and the deployment's noise key."""

    def __init__(self, configs: Mapping[str, SmoothingConfig], *, secret: bytes) -> None:
        """Keep the enabled configurations only: a disabled one changes nothing."""
        if len(secret) < 16:
            raise ValueError("the smoothing secret must be at least 16 bytes")
        self._configs = {name: c for name, c in configs.items() if c.enabled}
        self._secret = secret

    @classmethod
    def from_manifest(
        cls,
        model_dir: str | Path,
        models: Iterable[tuple[str, str]],
        *,
        secret: bytes,
        failures: dict[str, ModelIntegrityError] | None = None,
    ) -> Smoother:
        """Read the ``smoothing`` section of each served model's ``defences.json``, if any.

        With ``failures``, a model whose file fails is recorded there and left out (as
        ``Squeezer.from_manifest``); a model already in ``failures`` is skipped.

        Raises:
            ModelIntegrityError: (without ``failures``) a file is malformed or its section names
                another model version.
        """
        configs: dict[str, SmoothingConfig] = {}
        for name, version in models:
            path = Path(model_dir) / name / DEFENCES_FILE
            if not path.is_file() or (failures is not None and name in failures):
                continue
            try:
                config = load_smoothing(path)
                if config is not None and (config.model != name or config.model_version != version):
                    raise ModelIntegrityError("defences_version_mismatch", detail=f"model={name}")
            except ModelIntegrityError as exc:
                if failures is None:
                    raise
                failures[name] = exc
                continue
            if config is not None:
                configs[name] = config
        return cls(configs, secret=secret)

    def config(self, model: str) -> SmoothingConfig | None:
        """The enabled smoothing of ``model``, if it has one."""
        return self._configs.get(model)

    def wrap(self, model: ProbabilisticModel) -> SmoothedModel | None:
        """A per-request smoothed view of ``model`` (None: smoothing is off for it)."""
        config = self._configs.get(model.name)
        return None if config is None else SmoothedModel(model, config, self._secret)


def serve(
    model: ProbabilisticModel,
    rows: npt.NDArray[Any],
    *,
    squeezer: Squeezer | None,
    smoother: Smoother | None,
) -> Served:
    """Run the input defences and the model on one request's rows: at most one model call.

    Squeezing (when on) and smoothing compose: the squeezer predicts raw and squeezed rows in one
    call, and with smoothing that call carries every row's noisy copies; the served rows (the
    last ``len(rows)`` of the call) get the majority labels and radii.

    Raises:
        AdversarialInputError: the squeeze policy is ``refuse`` and a row is flagged.
        ModelIntegrityError: squeezing is on and the model has no calibration.
    """
    values = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    smoothed = smoother.wrap(model) if smoother is not None else None
    target: ProbabilisticModel = smoothed if smoothed is not None else model
    if squeezer is None:
        probabilities = np.asarray(target.predict_proba(values), dtype=np.float64)
        flagged = 0
    else:
        result = squeezer.check(target, values)
        probabilities, flagged = result.probabilities, result.flagged
    if smoothed is None:
        labels = probabilities.argmax(axis=1).astype(np.int64)
        return Served(probabilities, labels, flagged, None)
    votes = smoothed.votes[-values.shape[0] :]
    labels = votes.argmax(axis=1).astype(np.int64)
    return Served(probabilities, labels, flagged, smoothed.radii(votes))


def load_smoothing(path: str | Path) -> SmoothingConfig | None:
    """The ``smoothing`` section of one ``defences.json`` (None: the file predates smoothing).

    Raises:
        ModelIntegrityError: the file cannot be read or the section is malformed.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        section = data.get("smoothing") if isinstance(data, dict) else None
        if section is None:
            return None
        if not isinstance(section, dict):
            raise ValueError("smoothing must be an object")
        return SmoothingConfig.from_dict(section)
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError("defences_malformed", detail=str(Path(path).name)) from exc
