"""``mlmoat redteam [calibrate]``: calibrate the defences, or attack them and write the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlmoat.redteam.cases import ModelCase

DEFAULT_MODELS = ("iris", "breast-cancer", "breast-cancer-forest")
DP_EPSILON = 1.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmoat redteam", description=__doc__)
    parser.add_argument("action", nargs="?", default="run", choices=("run", "calibrate"))
    parser.add_argument("--quick", action="store_true", help="the short run used by make test")
    parser.add_argument("--out", type=Path, default=Path("reports/redteam"))
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--seed", type=int, default=20251125)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    return parser


def _dp_cases(cases: list[ModelCase]) -> dict[str, ModelCase]:
    """DP variants (diffprivlib, epsilon 1) trained in-process on the same split."""
    from dataclasses import replace

    from mlmoat.train import MODEL_SPECS, train_model

    dp: dict[str, ModelCase] = {}
    for case in cases:
        if not MODEL_SPECS[case.name].supports_dp:
            continue
        trained = train_model(case.name, dp_epsilon=DP_EPSILON)
        dp[case.name] = replace(
            case,
            name=f"{case.name}-dp",
            version=str(trained.manifest["version"]),
            predict_proba=trained.estimator.predict_proba,
            dp_epsilon=DP_EPSILON,
        )
    return dp


def main(argv: list[str]) -> int:
    """Run ``mlmoat redteam``."""
    args = _parser().parse_args(argv)
    from mlmoat.redteam.cases import load_cases

    cases = load_cases(args.model_dir, list(args.models))
    if args.action == "calibrate":
        from mlmoat.redteam.calibrate import calibrate_case, write_defences

        for case in cases:
            path = write_defences(calibrate_case(case), args.model_dir)
            print(f"wrote {path}")
        return 0
    from mlmoat.redteam.report import headline, write_report
    from mlmoat.redteam.run import FULL, QUICK, run, targets, write_json

    results = run(
        cases, _dp_cases(cases), args.model_dir, plan=QUICK if args.quick else FULL, seed=args.seed
    )
    write_json(results, args.out)
    report = write_report(results, args.out)
    print(headline(results))
    print(f"\nreport: {report}")
    return 0 if all(t["met"] for t in targets(results)) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
