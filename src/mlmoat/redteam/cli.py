"""``mlmoat redteam [calibrate]``: calibrate the defences, or attack them and write the report."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_MODELS = ("iris", "breast-cancer", "breast-cancer-forest")
# --quick (make test): the smallest and the overfit model, the two with the most to show.
QUICK_MODELS = ("iris", "breast-cancer-forest")
DP_EPSILON = 1.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmoat redteam", description=__doc__)
    parser.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "calibrate", "docs", "leak"),
        help="run the red team (default); calibrate the defences; docs: copy the headline "
        "table and detection plot of the run in --out to --docs-dir; leak: what squeezing "
        "refusals tell a label-only key (SqueezePolicy=refuse)",
    )
    parser.add_argument("--quick", action="store_true", help="the short run used by make test")
    parser.add_argument("--out", type=Path, default=Path("reports/redteam"))
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument(
        "--adv-model-dir",
        type=Path,
        default=Path("models-adv"),
        help="where mlmoat train --adversarial wrote <name>-adv (measured beside <name>)",
    )
    parser.add_argument("--seed", type=int, default=20251125)
    parser.add_argument("--docs-dir", type=Path, default=Path("docs/redteam"))
    parser.add_argument(
        "--models",
        nargs="+",
        help=f"default: {' '.join(DEFAULT_MODELS)} ({' '.join(QUICK_MODELS)} with --quick)",
    )
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="an imported model's CSV (the file mlmoat models import read; checked by hash); "
        "FILE alone when one imported model is attacked",
    )
    return parser


def _data_paths(values: list[str], models: list[str]) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for value in values:
        name, sep, file = value.partition("=")
        if not sep:
            if len(models) != 1:
                raise SystemExit("mlmoat redteam: --data NAME=FILE when attacking several models")
            name, file = models[0], value
        paths[name] = Path(file)
    return paths


def _served_dir(
    model_dir: Path,
    names: list[str],
    work: Path,
    *,
    with_dp: bool,
    adv_dir: Path | None = None,
) -> tuple[Path, list[str]]:
    """A model directory holding the served models and their DP variants (trained here).

    The adversarially trained variants found in ``adv_dir`` are copied in too (with their own
    calibrated defences.json): the robustness table measures them.
    """
    from mlmoat.redteam.calibrate import calibrate_case, write_defences
    from mlmoat.redteam.cases import load_cases
    from mlmoat.train import MODEL_SPECS, train_model, write_model

    served = work / "models"
    dp_names = []
    for name in names:
        shutil.copytree(model_dir / name, served / name)
        if adv_dir is not None and (adv_dir / f"{name}-adv" / "defences.json").is_file():
            shutil.copytree(adv_dir / f"{name}-adv", served / f"{name}-adv")
        if with_dp and name in MODEL_SPECS and MODEL_SPECS[name].supports_dp:
            write_model(train_model(name, dp_epsilon=DP_EPSILON), served)
            dp_names.append(f"{name}-dp")
    for case in load_cases(served, dp_names):
        write_defences(calibrate_case(case), served)
    return served, dp_names


def main(argv: list[str]) -> int:
    """Run ``mlmoat redteam``."""
    args = _parser().parse_args(argv)
    if args.models is None:
        args.models = list(QUICK_MODELS if args.quick else DEFAULT_MODELS)
    args.data_given = list(args.data)
    data = _data_paths(args.data, list(args.models))
    from mlmoat.redteam.cases import load_cases

    if args.action == "calibrate":
        from mlmoat.redteam.calibrate import calibrate_case, write_defences
        from mlmoat.redteam.regression import RegressorCase, calibrate_regressor

        for case in load_cases(args.model_dir, list(args.models), data):
            any_case: Any = case
            document = (
                calibrate_regressor(any_case)
                if isinstance(any_case, RegressorCase)
                else calibrate_case(case)
            )
            path = write_defences(document, args.model_dir)
            print(f"wrote {path}")
        return 0
    regressors = [m for m in args.models if _kind(args.model_dir, m) == "regressor"]
    if args.action == "run" and regressors:
        return _run_with_regressors(args, regressors, data)
    if args.action == "leak":
        from mlmoat.redteam.squeeze_leak import measure, render

        leaks = [
            measure(args.model_dir, name, uniform_rows=300 if args.quick else 2000, seed=args.seed)
            for name in args.models
        ]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "squeeze_leak.json").write_text(json.dumps(leaks, indent=1) + "\n")
        print(render(leaks))
        return 0
    from mlmoat.redteam.report import headline, robustness_tables, write_docs, write_report

    if args.action == "docs":
        results = json.loads((args.out / "results.json").read_text(encoding="utf-8"))
        print(f"wrote {write_docs(results, args.out, args.docs_dir)}")
        return 0
    from mlmoat.redteam.run import FULL, QUICK, run, targets, write_json

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlmoat-redteam-") as work:
        # --quick leaves the DP variants out: training and calibrating them costs ~40 s.
        served, dp_names = _served_dir(
            args.model_dir,
            list(args.models),
            Path(work),
            with_dp=not args.quick,
            adv_dir=args.adv_model_dir,
        )
        cases = load_cases(served, list(args.models), data)
        dp_cases = {case.name.removesuffix("-dp"): case for case in load_cases(served, dp_names)}
        adv_names = [n for n in (f"{m}-adv" for m in args.models) if (served / n).is_dir()]
        adv_cases = {c.name.removesuffix("-adv"): c for c in load_cases(served, adv_names)}
        results = run(
            cases,
            dp_cases,
            served,
            plan=QUICK if args.quick else FULL,
            seed=args.seed,
            audit_path=args.out / "audit.log",
            adv_cases=adv_cases,
        )
    write_json(results, args.out)
    report = write_report(results, args.out)
    print(headline(results))
    print(f"\n{robustness_tables(results)}")
    print(f"\nreport: {report}")
    return 0 if all(t["met"] is not False for t in targets(results)) else 1


def _kind(model_dir: Path, name: str) -> str:
    path = model_dir / name / "manifest.json"
    if not path.is_file():
        return "classifier"
    return str(json.loads(path.read_text(encoding="utf-8")).get("kind", "classifier"))


def _run_with_regressors(
    args: argparse.Namespace, regressors: list[str], data: dict[str, Path]
) -> int:
    """The red team on the regressors (``mlmoat.redteam.regression``: in process, R^2
    fidelity), then the classifiers as usual; one results.json and report.md."""
    from mlmoat.redteam import regression
    from mlmoat.redteam.cases import load_cases

    cases: list[Any] = list(load_cases(args.model_dir, regressors, data))
    figures = regression.run(cases, args.model_dir, quick=args.quick, seed=args.seed)
    others = [m for m in args.models if m not in regressors]
    status = 0
    if others:
        args.models = others
        status = main(_argv_of(args))
        results = json.loads((args.out / "results.json").read_text(encoding="utf-8"))
        report = (args.out / "report.md").read_text(encoding="utf-8")
    else:
        results = {"seed": args.seed, "plan": "quick" if args.quick else "full", "models": {}}
        report = "# mlmoat red-team report\n"
    results["regressors"] = figures
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    section = "\n".join(regression.markdown(figures, args.seed))
    (args.out / "report.md").write_text(report.rstrip("\n") + "\n\n" + section)
    print(section)
    print(f"\nreport: {args.out / 'report.md'}")
    return status


def _argv_of(args: argparse.Namespace) -> list[str]:
    argv = ["run", "--out", str(args.out), "--model-dir", str(args.model_dir), "--seed"]
    argv += [str(args.seed), "--adv-model-dir", str(args.adv_model_dir), "--models", *args.models]
    argv += [f"--data={value}" for value in args.data_given]
    return [*argv, "--quick"] if args.quick else argv


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
