"""The mixed-type model the tests build themselves: a churn-like table (numeric tenure and spend,
string plan and region) and a ColumnTransformer(StandardScaler + OneHotEncoder) pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

CLASSES = ("churn", "stay")
COLUMNS = ["Tenure months", "spend", "plan", "region"]


def churn_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """A churn-like table: numeric tenure and spend, string plan and region, a string label."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            # skewed and bell-shaped, as real tenure and spend are (uniform queries stand out)
            "Tenure months": np.minimum(rng.exponential(18.0, n), 72.0).round(1),
            "spend": np.clip(rng.normal(65.0, 15.0, n), 10.0, 120.0).round(2),
            "plan": rng.choice(["basic", "plus", "pro"], n),
            "region": rng.choice(["north", "south", "east", "west"], n),
        }
    )
    score = (
        -0.05 * frame["Tenure months"]
        + 0.02 * frame["spend"]
        + 1.5 * (frame["plan"] == "basic")
        - 1.0 * (frame["region"] == "west")
        - 0.6
    )
    frame["churned"] = np.where(score + rng.normal(0, 0.5, n) > 0, "churn", "stay")
    return frame


def churn_pipeline(extra: Any = None) -> Pipeline:
    numeric: Any = (
        StandardScaler() if extra is None else Pipeline([("f", extra), ("s", StandardScaler())])
    )
    prep = ColumnTransformer(
        [("num", numeric, ["Tenure months", "spend"]), ("cat", OneHotEncoder(), ["plan", "region"])]
    )
    return Pipeline([("prep", prep), ("clf", LogisticRegression())])


def accepted(x: np.ndarray, manifest: dict[str, Any], margin: float = 0.1) -> np.ndarray:
    """Which rows the API accepts: inside the manifest's envelope widened by its margin (the
    default 10 %; rows beyond it are refused by design: tests/unit/test_validation.py)."""
    envelope = [manifest["envelope"][f] for f in manifest["feature_names"]]
    low = np.asarray([e["min"] for e in envelope])
    high = np.asarray([e["max"] for e in envelope])
    width = np.where(high > low, high - low, 1.0)
    inside: np.ndarray = ((x >= low - margin * width) & (x <= high + margin * width)).all(axis=1)
    return inside
