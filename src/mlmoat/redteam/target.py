"""An in-process target for attacks that need tens of thousands of queries (HopSkipJump).

Through the real handlers against the local DynamoDB each request costs ~0.1 s here, which puts
HopSkipJump's thousands of requests out of the run's time budget. ``ServedTarget`` runs a request
with the same security code the predict pipeline runs: feature squeezing
(``security.defences.Squeezer``) and input smoothing (``security.smoothing``, composed by
``security.smoothing.serve``), prediction, the caller's output policy
(``security.sanitize.apply_output_policy``), and hands every served request to the extraction
monitor's detector exactly as the queue message would carry it (rows, labels, confidences).
The attacker sees only what the policy lets out: a probability vector where the policy
shows one, a one-hot label otherwise, and nothing for a refused request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from mlmoat.redteam.cases import ModelCase
from security.defences import SqueezeConfig, Squeezer
from security.errors import AdversarialInputError
from security.extraction import DetectorState, ExtractionDetector, MonitorReference
from security.policy import OutputPolicy
from security.sanitize import apply_output_policy
from security.smoothing import Smoother, SmoothingConfig, serve

# The red team's noise key: fixed so a run is reproducible; a deployment has its own secret.
REDTEAM_SECRET = b"mlmoat-redteam-smoothing-key-not-a-deployment-secret"


@dataclass
class ServedTarget:
    """One model behind one output policy and squeeze policy, with its extraction monitor."""

    case: ModelCase
    policy: str
    squeeze_policy: str = "off"
    squeeze: SqueezeConfig | None = None
    monitor: MonitorReference | None = None
    smoothing: SmoothingConfig | None = None
    batch_rows: int = 100
    queries: int = 0
    refused: int = 0
    state: DetectorState = field(default_factory=DetectorState)

    def __post_init__(self) -> None:
        configs = {self.case.name: self.squeeze} if self.squeeze is not None else {}
        self._squeezer = Squeezer(configs, policy=self.squeeze_policy)
        # Given a smoothing configuration, the target smooths, whether calibration enabled it.
        self._smoother = (
            Smoother(
                {self.case.name: dataclasses.replace(self.smoothing, enabled=True)},
                secret=REDTEAM_SECRET,
            )
            if self.smoothing is not None
            else None
        )
        self._policy = OutputPolicy.parse(self.policy)
        self._detector = ExtractionDetector(self.monitor) if self.monitor is not None else None

    @property
    def name(self) -> str:
        """The served model's name."""
        return self.case.name

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """The model's raw probabilities (what the squeezer needs from a served model)."""
        return self.case.predict_proba(rows)

    def query(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Send rows in requests of ``batch_rows``; return (what the attacker sees, served mask)."""
        # What the API can be sent: a categorical feature only as one of its categories.
        rows = self.case.domain.snap(np.atleast_2d(np.asarray(rows, dtype=np.float64)))
        seen = np.zeros((rows.shape[0], len(self.case.classes)))
        served = np.ones(rows.shape[0], dtype=bool)
        for start in range(0, rows.shape[0], self.batch_rows):
            chunk = rows[start : start + self.batch_rows]
            self.queries += chunk.shape[0]
            try:
                result = serve(self, chunk, squeezer=self._squeezer, smoother=self._smoother)
            except AdversarialInputError:
                self.refused += chunk.shape[0]
                served[start : start + chunk.shape[0]] = False
                continue
            predictions = apply_output_policy(
                self._policy, self.case.classes, result.probabilities, result.labels
            )
            for offset, prediction in enumerate(predictions):
                seen[start + offset] = self._visible(prediction)
            if self._detector is not None:
                labels = [str(p["label"]) for p in predictions]
                best = result.probabilities[np.arange(len(result.labels)), result.labels]
                confidences = best.tolist()
                self._detector.observe(self.state, chunk, labels=labels, confidences=confidences)
        return seen, served

    def labels(self, rows: np.ndarray) -> np.ndarray:
        """Class indices as the attacker sees them (-1 for a refused row)."""
        seen, served = self.query(rows)
        return np.where(served, seen.argmax(axis=1), -1)

    def _visible(self, prediction: dict[str, object]) -> np.ndarray:
        probabilities = prediction.get("probabilities")
        vector = np.zeros(len(self.case.classes))
        if isinstance(probabilities, dict) and len(probabilities) == len(self.case.classes):
            for i, name in enumerate(self.case.classes):
                vector[i] = float(probabilities[name])
            return vector
        vector[self.case.classes.index(str(prediction["label"]))] = 1.0
        return vector
