"""``mlmoat bench``: mlmoat against the seed's recipe, side by side, alternating, with medians.

Usage: ``mlmoat bench [--quick] [--repeat N] [--json FILE] [--no-build]``, or
``mlmoat bench --capacity [--quick] [--json FILE]`` for the DynamoDB capacity table
(``mlmoat.bench.capacity_report``: no build, no CPython 3.13, an embedded moto server).

Each repetition starts one fresh function process per stack (the baseline first on even
repetitions, mlmoat first on odd ones), measures its cold start, then runs it warm; the table
reports the median over repetitions of each figure and the ratio baseline/mlmoat (above 1:
mlmoat is smaller or faster). Both stacks run under CPython 3.13, the Lambda runtime's Python
(``make python313``): mlmoat as it ships (the Lambda build with its cp313 byte-code), the seed's
recipe as a user of it builds it (its dependencies installed and byte-compiled under 3.13). Two
cold starts are reported: with that byte-code, and with none on either side (every import
compiles, as for a package that ships none). Nothing here gates a test on time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlmoat.bench.measure import _repo_root, run
from mlmoat.bench.plan import Plan
from mlmoat.bench.report import render

__all__ = ["Plan", "main", "render", "run"]


def main(argv: list[str]) -> int:
    """Run ``mlmoat bench``."""
    parser = argparse.ArgumentParser(prog="mlmoat bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and requests")
    parser.add_argument("--repeat", type=int, help="repetitions (fresh processes per stack)")
    parser.add_argument("--json", type=Path, help="also write the full report as JSON here")
    parser.add_argument("--no-build", action="store_true", help="use the existing sam build output")
    parser.add_argument("--profile", type=Path, help="cProfile one extra mlmoat warm phase here")
    parser.add_argument(
        "--capacity",
        action="store_true",
        help="the DynamoDB capacity table instead (replays at simulated rates; needs no build)",
    )
    args = parser.parse_args(argv)
    if args.capacity:
        if args.repeat is not None or args.no_build or args.profile is not None:
            parser.error("--capacity takes only --quick and --json")
        return _capacity(quick=args.quick, json_path=args.json)
    plan = (
        Plan(repeat=2, warm=60, batch=5, no_bytecode_repeat=1)
        if args.quick
        else Plan(repeat=5, warm=300, batch=30, no_bytecode_repeat=3)
    )
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        plan = Plan(args.repeat, plan.warm, plan.batch, min(plan.no_bytecode_repeat, args.repeat))
    root = _repo_root(Path.cwd())
    report = run(root, plan, build=not args.no_build, profile=args.profile)
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


def _capacity(*, quick: bool, json_path: Path | None) -> int:
    from mlmoat.bench.capacity_report import render_capacity, run_capacity

    report = run_capacity(_repo_root(Path.cwd()), quick=quick)
    print(render_capacity(report))
    if json_path is not None:
        payload = {"capacity": report}
        json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return 0
