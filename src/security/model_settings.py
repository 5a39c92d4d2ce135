"""Per-model settings: ``<model_dir>/<name>/settings.json``, the operator's choices for one model.

Optional; every field is optional. What a model's file sets overrides the deployment's value for
that model only, and the runtime defences document (``security.runtime_config``, ``mlmoat
config set --model``) overrides both:

* ``output_policy``: the most any caller sees of this model's answers. A principal's own policy
  is narrowed to it (``OutputPolicy.meet``): a ``probabilities:4`` key gets ``label`` on a model
  set to ``label``, and keeps its own narrower policy elsewhere;
* ``squeeze_policy``: ``off``, ``flag`` or ``refuse`` for this model;
* ``envelope_margin``: the validation envelope's margin for this model (fraction of each
  feature's range, 0 to 1);
* ``max_rows``: at most this many rows per request for this model (never above the deployment's
  ``SECURITY_MAX_ROWS``).

``mlmoat models set NAME`` writes the file; ``mlmoat models check`` validates it. A malformed
file makes its model unavailable (503 ``model_unavailable``): never served with settings other
than the operator's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from security.errors import ModelIntegrityError
from security.policy import OutputPolicy, is_output_policy

SETTINGS_FILE = "settings.json"
SQUEEZE_POLICIES = ("off", "flag", "refuse")
FIELDS = ("output_policy", "squeeze_policy", "envelope_margin", "max_rows")
_MAX_BYTES = 10_000


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """One model's overrides (None: the deployment's value)."""

    output_policy: str | None = None
    squeeze_policy: str | None = None
    envelope_margin: float | None = None
    max_rows: int | None = None

    def narrowed(self, policy: OutputPolicy) -> OutputPolicy:
        """``policy`` narrowed to this model's output policy, if it has one."""
        if self.output_policy is None:
            return policy
        return policy.meet(OutputPolicy.parse(self.output_policy))

    def to_dict(self, name: str) -> dict[str, Any]:
        """The ``settings.json`` document (unset fields left out)."""
        values = {key: getattr(self, key) for key in FIELDS if getattr(self, key) is not None}
        return {"schema_version": 1, "model": name, **values}


def parse_settings(document: object, *, name: str) -> ModelSettings:
    """Validate a decoded ``settings.json`` of model ``name``.

    Raises:
        ModelIntegrityError: ``settings_malformed`` (the detail names the field, not its value).
    """

    def malformed(detail: str) -> ModelIntegrityError:
        return ModelIntegrityError("settings_malformed", detail=f"{name}: {detail}")

    if not isinstance(document, dict):
        raise malformed("not an object")
    if document.get("schema_version") != 1 or document.get("model") != name:
        raise malformed("schema_version is not 1 or model is not this model")
    unknown = set(document) - {"schema_version", "model", *FIELDS}
    if unknown:
        raise malformed(f"unknown fields {sorted(unknown)}")
    policy = document.get("output_policy")
    if policy is not None and not (isinstance(policy, str) and is_output_policy(policy)):
        raise malformed("output_policy is not an output policy")
    squeeze = document.get("squeeze_policy")
    if squeeze is not None and squeeze not in SQUEEZE_POLICIES:
        raise malformed("squeeze_policy is not off, flag or refuse")
    margin = document.get("envelope_margin")
    if margin is not None and (
        isinstance(margin, bool)
        or not isinstance(margin, int | float)
        or not math.isfinite(margin)
        or not 0 <= margin <= 1
    ):
        raise malformed("envelope_margin is not a number from 0 to 1")
    rows = document.get("max_rows")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise malformed("max_rows is not a positive integer")
    return ModelSettings(
        output_policy=str(OutputPolicy.parse(policy)) if policy is not None else None,
        squeeze_policy=squeeze,
        envelope_margin=float(margin) if margin is not None else None,
        max_rows=rows,
    )


def read_settings(directory: Path) -> ModelSettings:
    """A model directory's settings (all None when it has no ``settings.json``).

    Raises:
        ModelIntegrityError: the file exists and is not a valid settings document.
    """
    path = directory / SETTINGS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ModelSettings()
    except OSError as exc:
        raise ModelIntegrityError(
            "settings_malformed", detail=f"{directory.name}: unreadable"
        ) from exc
    if len(raw) > _MAX_BYTES:
        raise ModelIntegrityError("settings_malformed", detail=f"{directory.name}: too large")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelIntegrityError(
            "settings_malformed", detail=f"{directory.name}: not valid JSON"
        ) from exc
    return parse_settings(document, name=directory.name)


def load_settings(
    model_dir: str | Path, names: Iterable[str], *, failures: dict[str, ModelIntegrityError]
) -> Mapping[str, ModelSettings]:
    """The settings of each served model; a model whose file is malformed goes to ``failures``."""
    root = Path(model_dir)
    result: dict[str, ModelSettings] = {}
    for name in names:
        try:
            result[name] = read_settings(root / name)
        except ModelIntegrityError as exc:
            failures[name] = exc
    return result
