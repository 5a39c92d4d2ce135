"""The models under test: a served model with its manifest envelope and its exact data split."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlmoat.redteam.traffic import Domain

ProbaFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ModelCase:
    """One served model, its training envelope and the split it was trained on."""

    name: str
    version: str
    classes: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    predict_proba: ProbaFn
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    dp_epsilon: float | None = None
    # Indices of the categorical features (values are category indices 0..k-1).
    categorical: tuple[int, ...] = ()
    # Their categories (feature index -> names, in index order): what the API is sent.
    category_names: dict[int, tuple[str, ...]] = field(default_factory=dict)

    @property
    def domain(self) -> Domain:
        """The input space as the callers see it."""
        std = self.x_train.std(axis=0) + 1e-12
        return Domain(self.lower, self.upper, std, categorical=self.categorical)

    @property
    def category_counts(self) -> dict[int, int]:
        """Each categorical feature's index -> its number of categories."""
        return {j: int(self.upper[j]) + 1 for j in self.categorical}

    def wire_rows(self, rows: np.ndarray) -> list[list[Any]]:
        """Rows as a request carries them: a categorical feature as its category string."""
        snapped = self.domain.snap(np.atleast_2d(rows))
        if not self.category_names:
            return list(snapped.tolist())
        return [
            [
                self.category_names[j][int(v)] if j in self.category_names else v
                for j, v in enumerate(row)
            ]
            for row in snapped.tolist()
        ]

    def label_index(self, labels: np.ndarray) -> np.ndarray:
        """Class labels (strings) to class indices."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        return np.asarray([lookup[str(v)] for v in labels], dtype=int)


def envelope_bounds(
    envelope: dict[str, Any], feature_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The manifest envelope as (lower, upper) arrays in feature order."""
    lower = np.asarray([float(envelope[f]["min"]) for f in feature_names])
    upper = np.asarray([float(envelope[f]["max"]) for f in feature_names])
    return lower, upper


def load_cases(
    model_dir: Path, names: list[str], data: dict[str, Path] | None = None
) -> list[ModelCase]:
    """Load the served artifacts (ONNX through ``security.model``) and their splits.

    A built-in model's split is rebuilt by ``mlmoat.train.load_split``; an imported model's
    (``train_split.dataset == "csv"``) from the CSV in ``data[name]``, which must be the file the
    import read (its SHA-256 is in the manifest), split with the recorded seed.

    Raises:
        ValueError: an imported model without its data, or with other data than it was
            imported from.
    """
    from mlmoat.train import load_split
    from security.model import ModelRegistry

    registry = ModelRegistry.load(str(model_dir))
    cases: list[Any] = []
    for name in names:
        served = registry.get(name)
        manifest = _manifest_dict(model_dir, name)
        lower, upper = envelope_bounds(manifest["envelope"], list(manifest["feature_names"]))
        if manifest.get("kind") == "regressor":
            cases.append(_regressor_case(manifest, served, lower, upper, (data or {}).get(name)))
            continue
        if manifest.get("train_split", {}).get("dataset") == "csv":
            x_train, y_train, x_test, y_test = imported_split(manifest, (data or {}).get(name))
        else:
            x_train, y_train, x_test, y_test = load_split(name)
        cases.append(
            ModelCase(
                name=name,
                version=str(manifest["version"]),
                classes=tuple(str(c) for c in manifest["classes"]),
                lower=lower,
                upper=upper,
                predict_proba=served.predict_proba,
                x_train=x_train,
                y_train=y_train,
                x_test=x_test,
                y_test=y_test,
                dp_epsilon=manifest.get("dp_epsilon"),
                categorical=categorical_indices(manifest),
                category_names={
                    i: tuple(manifest["categories"][f])
                    for i, f in enumerate(manifest["feature_names"])
                    if f in (manifest.get("categories") or {})
                },
            )
        )
    return cases


def _regressor_case(
    manifest: dict[str, Any], served: Any, lower: np.ndarray, upper: np.ndarray, path: Path | None
) -> Any:
    """An imported regressor (``mlmoat.redteam.regression.RegressorCase``) and its split."""
    from mlmoat.redteam.regression import RegressorCase

    x_train, y_train, x_test, y_test = imported_split(manifest, path, regressor=True)
    return RegressorCase(
        name=str(manifest["name"]),
        version=str(manifest["version"]),
        lower=lower,
        upper=upper,
        target_range=(float(manifest["target"]["min"]), float(manifest["target"]["max"])),
        predict_values=served.predict_values,
        x_train=x_train,
        y_train=y_train.astype(np.float64),
        x_test=x_test,
        y_test=y_test.astype(np.float64),
        categorical=categorical_indices(manifest),
    )


def categorical_indices(manifest: dict[str, Any]) -> tuple[int, ...]:
    """The positions of a manifest's categorical features (``security.features``)."""
    categories = manifest.get("categories") or {}
    return tuple(i for i, f in enumerate(manifest["feature_names"]) if f in categories)


def imported_split(
    manifest: dict[str, Any], path: Path | None, *, regressor: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An imported model's train and held-out rows, from the CSV it was imported from."""
    from mlmoat import models_import as mi

    split = manifest["train_split"]
    name = manifest["name"]
    if path is None:
        raise ValueError(
            f"{name} was imported from {split['file']}: give it with --data {name}=FILE"
        )
    columns = [split["columns"][feature] for feature in manifest["feature_names"]]
    categories = {
        split["columns"][feature]: tuple(values)
        for feature, values in (manifest.get("categories") or {}).items()
    }
    dataset = mi.read_csv(path, target=split["target"], features=columns, categories=categories)
    if dataset.sha256 != split["sha256"]:
        raise ValueError(f"{path} is not the {split['file']} that {name} was imported from")
    if "test_file" in split:
        raise ValueError(f"{name} was imported with --test-data: the red team splits one CSV only")
    if regressor:
        from mlmoat.models_regress import targets

        dataset = dataclasses.replace(dataset, y=targets(dataset))
    x_train, y_train, x_test, y_test = mi.split(
        dataset,
        test=None,
        test_fraction=float(split["test_fraction"]),
        seed=int(split["seed"]),
        stratify=not regressor,
    )
    if regressor:
        return x_train, y_train, x_test, y_test
    as_text = np.vectorize(str)
    return x_train, as_text(y_train), x_test, as_text(y_test)


def _manifest_dict(model_dir: Path, name: str) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads((model_dir / name / "manifest.json").read_text())
    return data
