"""Train and joblib-dump the baseline's scikit-learn model, as the seed's recipe ships it.

Run with the baseline's own dependencies on the path (``mlmoat bench`` does this), so the pickle
is written and read by the same scikit-learn. Usage: ``python train.py OUT_PATH``.
"""

from __future__ import annotations

import sys

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def main(out_path: str) -> None:
    data = load_iris()
    model = LogisticRegression(max_iter=1000, random_state=0).fit(data.data, data.target)
    joblib.dump(model, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
