"""``mlmoat models check``: verify every model directory before it ships.

For each ``<model_dir>/<name>/`` it runs the checks the functions run at init, and the ones a
build can afford and a cold start cannot:

- the manifest parses and names its directory, the ONNX file hashes to the manifest, loads in
  onnxruntime and matches the manifest's signature (``security.model.ServedModel``);
- ``defences.json`` is present (whatever the squeeze policy: a build ships every defence), its
  squeezing and smoothing sections are for this model version (``security.defences``,
  ``security.smoothing``), and its monitor reference loads (``security.extraction``);
- parity: if the manifest records a parity sample (section ``parity``: ``rows``,
  ``probabilities``, optional ``atol``, default 1e-5), the served graph reproduces it (same
  labels, probabilities within ``atol``; a regressor's ``values`` within ``rtol`` relative to
  the value or ``scale``). A manifest without one is reported, not failed.

One line per model, ``ok`` or the first check it failed; exit status 1 if any model (or the
directory) fails, so ``make build`` never packages a model the function would refuse.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from security.defences import DEFENCES_FILE, squeeze_config
from security.errors import ModelIntegrityError
from security.extraction.reference import load_monitor_reference
from security.model import ServedModel
from security.smoothing import load_smoothing

_REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
_DEFAULT_ATOL = 1e-5
NO_PARITY = "no parity sample recorded: parity not checked"


def _check_defences(directory: Path, model: ServedModel) -> str:
    name, version = model.name, model.version
    # The same checks as the functions' init (squeezing required here whatever the policy).
    squeeze_config(directory.parent, name, version, required=True)
    smoothing = load_smoothing(directory / DEFENCES_FILE)
    if smoothing is not None and (smoothing.model, smoothing.model_version) != (name, version):
        raise ModelIntegrityError("defences_version_mismatch", detail=f"model={name}")
    document = json.loads((directory / DEFENCES_FILE).read_text(encoding="utf-8"))
    if document.get("model_version", version) != version:
        raise ModelIntegrityError("defences_version_mismatch", detail=f"model={name}")
    reference = load_monitor_reference(directory / DEFENCES_FILE, name)
    if not reference.prada_stale:
        return ""
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    imported = manifest.get("train_split", {}).get("dataset") == "csv"
    data = f" --data {name}=FILE` (FILE: the CSV it was imported from)" if imported else "`"
    return (
        f"; monitor calibrated on state layout {reference.state_layout}: PRADA disabled "
        f"until `mlmoat redteam calibrate --models {name}{data}"
    )


def check_parity(model: ServedModel) -> str:
    """Compare the served graph with the manifest's recorded parity sample, if any.

    Returns what was checked (``NO_PARITY`` when nothing is recorded).

    Raises:
        ModelIntegrityError: the section is malformed (``parity_malformed``) or the graph does
            not reproduce it (``parity_mismatch``).
    """
    section = model.manifest.extra.get("parity")
    if section is None:
        return NO_PARITY
    name = model.name
    if model.kind == "regressor":
        from mlmoat.models_regress import check_value_parity

        return check_value_parity(model, section)
    try:
        if not isinstance(section, Mapping):
            raise TypeError("parity is not an object")
        rows = np.asarray(section["rows"], dtype=np.float64)
        expected = np.asarray(section["probabilities"], dtype=np.float64)
        atol = float(section.get("atol", _DEFAULT_ATOL))
        if rows.ndim != 2 or expected.shape != (rows.shape[0], len(model.classes)):
            raise ValueError("rows and probabilities do not agree in shape")
        if not (math.isfinite(atol) and atol > 0) or not np.isfinite(expected).all():
            raise ValueError("atol or probabilities not finite")
        proba = model.predict_proba(rows)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelIntegrityError("parity_malformed", detail=f"{name}: {exc}") from exc
    worst = float(np.max(np.abs(proba - expected)))
    if worst > atol or not np.array_equal(proba.argmax(axis=1), expected.argmax(axis=1)):
        raise ModelIntegrityError(
            "parity_mismatch", detail=f"{name}: max |p - recorded| = {worst:.3g} > {atol:g}"
        )
    return f"parity on {rows.shape[0]} recorded rows within {atol:g}"


_SETTING_KEYS = ("output_policy", "squeeze_policy", "envelope_margin", "max_rows")


def check_directory(directory: Path) -> str:
    """Every check of one model directory; what was verified.

    Raises:
        ModelIntegrityError: the first check the model fails.
    """
    from security.model_settings import read_settings

    model = ServedModel.from_directory(directory)
    stale = _check_defences(directory, model)
    own = read_settings(directory)
    parity = check_parity(model)
    overrides = [f"{k}={v}" for k, v in own.to_dict(model.name).items() if k in _SETTING_KEYS]
    return parity + stale + (f"; settings: {', '.join(overrides)}" if overrides else "")


def check_models(model_dir: str | Path) -> dict[str, tuple[bool, str]]:
    """Check every model directory under ``model_dir``: name -> (passed, what or why).

    Raises:
        ModelIntegrityError: ``model_dir`` is not a directory or holds no model directory.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelIntegrityError("model_dir_missing", detail=str(root))
    directories = sorted(p for p in root.iterdir() if p.is_dir())
    if not directories:
        raise ModelIntegrityError("no_models", detail=f"no model under {root}")
    results: dict[str, tuple[bool, str]] = {}
    for directory in directories:
        try:
            results[directory.name] = (True, check_directory(directory))
        except (ModelIntegrityError, OSError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, ModelIntegrityError) else type(exc).__name__
            detail = getattr(exc, "detail", None) or str(exc)
            results[directory.name] = (False, f"{reason}: {detail}" if detail else reason)
    return results


def main(argv: list[str]) -> int:
    """Run ``mlmoat models check``."""
    parser = argparse.ArgumentParser(
        prog="mlmoat models check", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--model-dir", default=str(_REPO_MODELS), help="default: models/")
    args = parser.parse_args(argv)
    try:
        results = check_models(args.model_dir)
    except ModelIntegrityError as exc:
        print(f"mlmoat models check: {exc.reason}: {exc.detail}", file=sys.stderr)
        return 1
    width = max(len(name) for name in results)
    for name, (passed, what) in results.items():
        print(f"{name:<{width}}  {'ok' if passed else 'FAILED'}  {what}")
    failed = sorted(name for name, (passed, _) in results.items() if not passed)
    if failed:
        print(f"mlmoat models check: {len(failed)} of {len(results)} failed", file=sys.stderr)
        return 1
    return 0
