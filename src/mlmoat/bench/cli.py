"""``mlmoat bench``: mlmoat against the seed's recipe, side by side, alternating, with medians.

Usage: ``mlmoat bench [--quick] [--repeat N] [--json FILE] [--no-build]``: the side-by-side
table, then the DynamoDB capacity table (``mlmoat.bench.capacity_report``; its quick plan with
``--quick``), then the cost per million predictions computed from both (``mlmoat.bench.cost``).
``mlmoat bench --capacity [--quick] [--json FILE]``: the capacity table alone (no build, no
CPython 3.13, an embedded moto server). ``mlmoat bench --cost-doc docs/cost.md [--from FILE]``:
rewrite the doc's generated tables from a ``--json`` report (recording its inputs in
``docs/cost-inputs.json``; a ``--capacity --json`` report replaces the capacity units and keeps
the recorded measurements), or from the recorded inputs without ``--from`` (after a price edit).

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

from mlmoat.bench.cost import Measured, cost_report, recorded_inputs, render_all, update_doc
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
    parser.add_argument("--cost-doc", type=Path, help="regenerate this doc's cost tables")
    parser.add_argument(
        "--from", dest="source", type=Path, help="with --cost-doc: a `mlmoat bench --json` report"
    )
    args = parser.parse_args(argv)
    if args.cost_doc is not None:
        return _cost_doc(args.cost_doc, args.source)
    if args.source is not None:
        parser.error("--from goes with --cost-doc")
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
    print(render(report), flush=True)
    from mlmoat.bench.capacity_report import render_capacity, run_capacity

    capacity = run_capacity(root, quick=args.quick)
    print("\n" + render_capacity(capacity))
    costs = cost_report(Measured.from_bench(report), capacity)
    print("\n" + render_all(costs))
    if args.json is not None:
        payload = {**report, "capacity": capacity, "cost": costs}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


def _cost_doc(doc: Path, source: Path | None) -> int:
    inputs_path = doc.with_name(f"{doc.stem}-inputs.json")
    if source is not None:
        report = json.loads(source.read_text(encoding="utf-8"))
        if "capacity" not in report:
            raise SystemExit(f"mlmoat bench: {source} is not a `mlmoat bench --json` report")
        if "logs" in report:
            inputs = recorded_inputs(Measured.from_bench(report), report["capacity"])
        else:
            # A `mlmoat bench --capacity --json` report: new units, the recorded measurements.
            recorded = json.loads(inputs_path.read_text(encoding="utf-8"))
            inputs = recorded_inputs(Measured(**recorded["measured"]), report["capacity"])
        inputs_path.write_text(json.dumps(inputs, indent=2) + "\n", encoding="utf-8")
    else:
        inputs = json.loads(inputs_path.read_text(encoding="utf-8"))
    doc.write_text(update_doc(doc.read_text(encoding="utf-8"), inputs), encoding="utf-8")
    print(f"{doc}: cost tables regenerated from {inputs_path}")
    return 0


def _capacity(*, quick: bool, json_path: Path | None) -> int:
    from mlmoat.bench.capacity_report import render_capacity, run_capacity

    report = run_capacity(_repo_root(Path.cwd()), quick=quick)
    print(render_capacity(report))
    if json_path is not None:
        payload = {"capacity": report}
        json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return 0
