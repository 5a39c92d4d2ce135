"""``mlmoat bench``: mlmoat against the seed's recipe, side by side, alternating, with medians.

Usage: ``mlmoat bench [--quick] [--repeat N] [--json FILE] [--no-build]``.

Each repetition starts one fresh function process per stack (the baseline first on even
repetitions, mlmoat first on odd ones), measures its cold start, then runs it warm; the table
reports the median over repetitions of each figure and the ratio baseline/mlmoat (above 1:
mlmoat is smaller or faster). Two cold starts are reported: with byte-code cached (as a package
that ships ``.pyc`` files for its runtime starts) and without any (as a package that ships none,
which is what the Lambda build is today: it is built from a 3.11 host for python3.13, so it
cannot carry 3.13 byte-code). Nothing here gates a test on time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlmoat.bench.baseline import BASELINE_KEY, build_baseline, floor_spec
from mlmoat.bench.events import rest_event
from mlmoat.bench.runner import FunctionSpec, Phase, RunResult, run_function
from mlmoat.bench.stack import (
    built_function,
    compile_into,
    function_spec,
    local_stack,
    runtime_site,
    tree_bytes,
)
from mlmoat.bench.stats import median, percentile, ratio

# Iris rows inside the training envelope (the seed's 4-feature schema).
ROWS: tuple[tuple[float, float, float, float], ...] = (
    (5.1, 3.5, 1.4, 0.2),
    (6.2, 2.9, 4.3, 1.3),
    (6.3, 3.3, 6.0, 2.5),
    (5.0, 3.4, 1.5, 0.2),
    (5.7, 2.8, 4.1, 1.3),
    (7.2, 3.0, 5.8, 1.6),
    (4.9, 3.1, 1.5, 0.1),
    (6.7, 3.1, 4.7, 1.5),
)
BATCH_SIZES = (1, 10, 100)
LAMBDA_MB_PER_VCPU = 1769
MIB = 1024 * 1024
GOAL_COLD_RATIO = 0.5
GOAL_IN_PROCESS_MS = 1.0
GOAL_PACKAGE_MB = 180.0
LAMBDA_LIMIT_BYTES = 262_144_000  # "250 MB" unzipped, function plus all its layers


@dataclass(frozen=True)
class Plan:
    """How much to run."""

    repeat: int
    warm: int
    batch: int
    no_bytecode_repeat: int


@dataclass
class Samples:
    """Everything measured for one stack, across repetitions."""

    cold: list[float] = field(default_factory=list)
    cold_no_bytecode: list[float] = field(default_factory=list)
    import_s: list[float] = field(default_factory=list)
    first_invoke_s: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    in_p50_ms: list[float] = field(default_factory=list)
    in_p99_ms: list[float] = field(default_factory=list)
    layer_p50_ms: list[float] = field(default_factory=list)
    layer_p99_ms: list[float] = field(default_factory=list)
    wire_ms_by_service: dict[str, list[float]] = field(default_factory=dict)
    steady_rss_kb: list[int] = field(default_factory=list)
    max_rss_kb: list[int] = field(default_factory=list)
    allowed: int = 0
    dynamodb_sends_allowed: int = 0
    other_sends: dict[str, int] = field(default_factory=dict)
    operations: dict[str, int] = field(default_factory=dict)
    non_200: dict[str, int] = field(default_factory=dict)
    rows_served: int = 0
    scaling: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    first_wire: list[dict[str, Any]] = field(default_factory=list)


def _repo_root(start: Path) -> Path:
    for candidate in (start, *start.parents):
        if (candidate / "template.yaml").is_file() and (candidate / "bench" / "baseline").is_dir():
            return candidate
    raise SystemExit("mlmoat bench: run it inside the mlmoat repository (template.yaml not found)")


def _machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout  # noqa: S607
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _record(samples: Samples, result: RunResult, *, rows_by_phase: dict[str, int]) -> None:
    samples.cold.append(result.cold_s)
    samples.import_s.append(result.first["import_s"])
    samples.first_invoke_s.append(result.first["first_invoke_s"])
    samples.first_wire.append(result.first["wire"])
    samples.max_rss_kb.append(result.maxrss_kb)
    samples.rows_served += 1  # the cold request: one row, answered 200 (checked by the runner)
    for name, phase in result.phases.items():
        rows = rows_by_phase[name]
        for sample in phase["samples"]:
            status = int(sample["status"])
            if status != 200:
                samples.non_200[str(status)] = samples.non_200.get(str(status), 0) + 1
                continue
            samples.rows_served += rows
            if name == "warm":
                samples.allowed += 1
                sends = sample["sends"]
                samples.dynamodb_sends_allowed += int(sends.get("dynamodb", 0))
                for service, count in sends.items():
                    if service != "dynamodb":
                        samples.other_sends[service] = samples.other_sends.get(service, 0) + count
                for call in sample["calls"]:
                    samples.operations[call] = samples.operations.get(call, 0) + 1
        ok = [s for s in phase["samples"] if int(s["status"]) == 200]
        total_ms = [s["ns"] / 1e6 for s in ok]
        inside_ms = [(s["ns"] - s["wire_ns"]) / 1e6 for s in ok]
        layer_ms = [(s["ns"] - s.get("sdk_ns", 0)) / 1e6 for s in ok]
        if name == "warm":
            samples.layer_p50_ms.append(percentile(layer_ms, 50))
            samples.layer_p99_ms.append(percentile(layer_ms, 99))
            for s in ok:
                for service, ns in s.get("wire_ns_by_service", {}).items():
                    samples.wire_ms_by_service.setdefault(service, []).append(ns / 1e6)
            samples.p50_ms.append(percentile(total_ms, 50))
            samples.p99_ms.append(percentile(total_ms, 99))
            samples.in_p50_ms.append(percentile(inside_ms, 50))
            samples.in_p99_ms.append(percentile(inside_ms, 99))
            samples.steady_rss_kb.append(int(phase["maxrss_kb"]))
        else:
            per = samples.scaling.setdefault(rows, {"ms": [], "in_ms": [], "ddb": [], "bytes": []})
            per["ms"].append(median(total_ms))
            per["in_ms"].append(median(inside_ms))
            per["ddb"].append(
                sum(int(s["sends"].get("dynamodb", 0)) for s in ok) / len(ok) if ok else math.nan
            )
            per["bytes"].append(
                sum(int(s["bytes_by_service"].get("dynamodb", 0)) for s in ok) / len(ok)
                if ok
                else math.nan
            )


def _fmt(value: float, unit: str = "", digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def _memory_floor(steady_rss_mib: float) -> int:
    # What memory alone needs: 50% headroom over the steady state, rounded up to 128 MB.
    return int(math.ceil(steady_rss_mib * 1.5 / 128.0)) * 128


def _recommend_memory(steady_rss_mib: float) -> int:
    # Above the floor, CPU decides: Lambda's CPU share is MemorySize/1769 MB, and both the cold
    # start (imports, CPU-bound) and the in-process work scale with it. 1024 MB (0.58 vCPU) keeps
    # the cold start near 1.7x a full core's; below it cold starts stretch past 3x.
    return max(_memory_floor(steady_rss_mib), 1024)


def _build(root: Path) -> None:
    print("bench: make build build-host (no-op when up to date) ...", file=sys.stderr)
    make = shutil.which("make") or "make"
    done = subprocess.run(  # noqa: S603 - the project's own Makefile
        [make, "--no-print-directory", "build", "build-host"], cwd=root, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"mlmoat bench: `make build build-host` failed ({done.returncode})")


def run(
    root: Path, plan: Plan, *, build: bool, log: bool = True, profile: Path | None = None
) -> dict[str, Any]:
    """Build both stacks, run the plan, and return every figure (the JSON report).

    With ``profile``, one extra mlmoat run (not counted in any figure) profiles the warm phase
    with cProfile and writes the stats there (read them with ``python -m pstats FILE``).
    """
    if build:
        _build(root)
    # A private working dir per run: concurrent runs in one tree (a smoke test, a developer's
    # bench) never share or delete each other's files. Removed when the run succeeds.
    (root / "build" / "bench").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=root / "build" / "bench"))
    try:
        report = _run_in(root, work, plan, log=log, profile=profile)
    except BaseException:
        if log:
            print(f"bench: failed; logs kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return report


def _run_in(
    root: Path, work: Path, plan: Plan, *, log: bool, profile: Path | None
) -> dict[str, Any]:
    log_dir, pycache = work / "logs", work / "pycache"
    # A private copy of the host build: a rebuild running elsewhere cannot change it mid-run.
    host_dir = work / "build-host"
    shutil.copytree(
        root / ".aws-sam" / "build-host",
        host_dir,
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    site = runtime_site(host_dir)
    baseline = build_baseline(root, runtime_site=site, log=log)
    host = built_function(root, host_dir)
    lambda_build = built_function(root, root / ".aws-sam" / "build")
    # Lambda's own boto3 comes byte-compiled: the no-byte-code runs read only that.
    runtime_only = work / "pycache-runtime-only"
    compile_into(site, runtime_only)

    with local_stack(root, log_dir=log_dir) as stack:
        ours = function_spec(root, host_dir, aws_env=stack.aws_env)
        cap = int(ours.env.get("SECURITY_MAX_ROWS", "100"))
        sizes = sorted({n for n in (*BATCH_SIZES, cap) if n <= cap})

        def single(key_header: dict[str, str]) -> dict[str, Any]:
            return rest_event(path="/predict", body={"features": list(ROWS[0])}, headers=key_header)

        def batch(n: int) -> dict[str, Any]:
            rows = [list(ROWS[i % len(ROWS)]) for i in range(n)]
            return rest_event(
                path="/predict", body={"instances": rows}, headers={"X-API-Key": stack.api_key}
            )

        base_event = single({"X-API-Key": BASELINE_KEY})
        our_event = single({"X-API-Key": stack.api_key})
        base_phases = [Phase("warm", base_event, plan.warm, vary_source=True)]
        our_phases = [Phase("warm", our_event, plan.warm, vary_source=True)]
        our_phases += [Phase(f"batch-{n}", batch(n), plan.batch, vary_source=True) for n in sizes]
        rows_by_phase = {"warm": 1, **{f"batch-{n}": n for n in sizes}}
        stacks: dict[str, tuple[FunctionSpec, dict[str, Any], list[Phase]]] = {
            "baseline": (baseline, base_event, base_phases),
            "mlmoat": (ours, our_event, our_phases),
        }
        samples = {name: Samples() for name in stacks}
        floor = floor_spec(root, baseline)
        floor_p50: list[float] = []

        def once(name: str, *, cached: bool, phases: bool) -> RunResult:
            spec, event, phase_list = stacks[name]
            return run_function(
                spec,
                event,
                phase_list if phases else [],
                log_dir=log_dir,
                pycache=(pycache / name) if cached else runtime_only,
                write_bytecode=cached,
            )

        # Warm-up, discarded: fills the byte-code cache and the page cache for both stacks.
        for name in stacks:
            once(name, cached=True, phases=False)
            samples[name].rows_served += 1
        for rep in range(plan.repeat):
            order = ["baseline", "mlmoat"] if rep % 2 == 0 else ["mlmoat", "baseline"]
            for name in order:
                if log:
                    print(f"bench: repetition {rep + 1}/{plan.repeat}: {name}", file=sys.stderr)
                result = once(name, cached=True, phases=True)
                _record(samples[name], result, rows_by_phase=rows_by_phase)
            # The framework floor, warm only: what FastAPI + Mangum cost an empty route here.
            result = run_function(
                floor, base_event, [Phase("warm", base_event, plan.warm, vary_source=True)],
                log_dir=log_dir, pycache=pycache / "floor",
            )
            floor_p50.append(
                percentile([x["ns"] / 1e6 for x in result.phases["warm"]["samples"]], 50)
            )
            if rep < plan.no_bytecode_repeat:
                for name in order:
                    result = once(name, cached=False, phases=False)
                    samples[name].cold_no_bytecode.append(result.cold_s)
                    samples[name].rows_served += 1
        if profile is not None:
            spec, event, phase_list = stacks["mlmoat"]
            run_function(spec, event, phase_list[:1], log_dir=log_dir,
                         pycache=pycache / "mlmoat", profile=profile.resolve())
            samples["mlmoat"].rows_served += 1 + plan.warm
        usage = stack.admin.usage(stack.key_id)["usage"]
        item_bytes = stack.key_item_bytes()

    return _report(
        root,
        plan,
        samples,
        usage=usage,
        item_bytes=item_bytes,
        floor_p50_ms=median(floor_p50),
        baseline_bytes=sum(tree_bytes(Path(p)) for p in baseline.paths),
        lambda_parts={p.name: tree_bytes(p) for p in lambda_build.package_dirs()},
        template_memory_mb=host.memory_mb,
        sizes=sizes,
    )


def _report(
    root: Path,
    plan: Plan,
    samples: dict[str, Samples],
    *,
    usage: dict[str, Any],
    item_bytes: int,
    floor_p50_ms: float,
    baseline_bytes: int,
    lambda_parts: dict[str, int],
    template_memory_mb: int,
    sizes: Sequence[int],
) -> dict[str, Any]:
    b, m = samples["baseline"], samples["mlmoat"]
    ours_bytes = sum(lambda_parts.values())
    steady_mib = median([kb / 1024 for kb in m.steady_rss_kb])
    recommended = _recommend_memory(steady_mib)
    per_allowed = m.dynamodb_sends_allowed / m.allowed if m.allowed else math.nan

    def pair(
        name: str, bv: float, mv: float, goal: str, met: bool | None, unit: str
    ) -> dict[str, Any]:
        return {
            "figure": name,
            "baseline": bv,
            "mlmoat": mv,
            "ratio": ratio(bv, mv),
            "goal": goal,
            "met": met,
            "unit": unit,
        }

    cold_b, cold_m = median(b.cold), median(m.cold)
    layer_p50 = median(m.layer_p50_ms)
    alone_p50 = layer_p50 - floor_p50_ms
    figures = [
        pair("cold start (byte-code cached)", cold_b, cold_m,
             f"mlmoat <= {GOAL_COLD_RATIO} x baseline", cold_m <= GOAL_COLD_RATIO * cold_b, "s"),
        pair("cold start (no byte-code, as built for Lambda)", median(b.cold_no_bytecode),
             median(m.cold_no_bytecode), "", None, "s"),
        pair("  of which imports + init", median(b.import_s), median(m.import_s), "", None, "s"),
        pair("  of which first invocation", median(b.first_invoke_s), median(m.first_invoke_s),
             "", None, "s"),
        pair("warm p50 per request", median(b.p50_ms), median(m.p50_ms), "", None, "ms"),
        pair("warm p99 per request", median(b.p99_ms), median(m.p99_ms), "", None, "ms"),
        pair("in-process p50 (AWS round trips excluded)", median(b.in_p50_ms),
             median(m.in_p50_ms), "", None, "ms"),
        pair("in-process p99 (AWS round trips excluded)", median(b.in_p99_ms),
             median(m.in_p99_ms), "", None, "ms"),
        pair("in-process p50 (whole AWS SDK calls excluded)", median(b.layer_p50_ms), layer_p50,
             "", None, "ms"),
        pair("in-process p99 (whole AWS SDK calls excluded)", median(b.layer_p99_ms),
             median(m.layer_p99_ms), "", None, "ms"),
        pair("framework floor p50 (FastAPI + Mangum, empty route)", floor_p50_ms, floor_p50_ms,
             "", None, "ms"),
        pair("security layer alone p50 (SDK-excluded minus floor)",
             median(b.layer_p50_ms) - floor_p50_ms, alone_p50,
             f"mlmoat <= {GOAL_IN_PROCESS_MS} ms", alone_p50 <= GOAL_IN_PROCESS_MS, "ms"),
        pair("DynamoDB requests per allowed prediction", 0.0, per_allowed, "1",
             per_allowed == 1.0, ""),
        pair("package, unzipped (function + layers)", baseline_bytes / MIB, ours_bytes / MIB,
             f"mlmoat <= {GOAL_PACKAGE_MB:.0f} MiB", ours_bytes / MIB <= GOAL_PACKAGE_MB, "MiB"),
        pair("max RSS, steady state", median([kb / 1024 for kb in b.steady_rss_kb]), steady_mib,
             "", None, "MiB"),
    ]
    scaling = []
    for n in sizes:
        per = m.scaling.get(n, {"ms": [], "in_ms": [], "ddb": [], "bytes": []})
        ms = median(per["ms"])
        scaling.append(
            {
                "rows": n,
                "ms_per_request": ms,
                "ms_per_row": ms / n,
                "in_process_ms_per_request": median(per["in_ms"]),
                "dynamodb_requests_per_request": median(per["ddb"]),
                "dynamodb_bytes_per_request": median(per["bytes"]),
            }
        )
    # Cost grows no faster than linearly in rows: the largest batch's time per row is at most the
    # single row's, and the DynamoDB requests per request do not depend on the rows.
    per_row = [row["ms_per_row"] for row in scaling]
    ddb_counts = {row["dynamodb_requests_per_request"] for row in scaling}
    scaling_verdict = {
        "time_per_row_not_above_single_row": bool(per_row) and per_row[-1] <= per_row[0],
        "dynamodb_requests_independent_of_rows": len(ddb_counts) == 1,
    }
    return {
        "command": "mlmoat bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else []),
        "machine": _machine(),
        "plan": plan.__dict__,
        "figures": figures,
        "scaling": scaling,
        "scaling_verdict": scaling_verdict,
        "dynamodb": {
            "allowed_predictions": m.allowed,
            "requests_per_allowed_prediction": per_allowed,
            "operations_on_steady_path": m.operations,
            "other_aws_requests_on_steady_path": m.other_sends,
            "first_request": m.first_wire[:1],
            "rows_served": m.rows_served,
            "rows_counted_in_dynamodb": usage.get("rows_used"),
            "key_item_bytes_after_run": item_bytes,
            "write_units_per_charge_after_run": math.ceil(item_bytes / 1024),
            "wire_ms_p50_by_service": {
                service: percentile(values, 50) for service, values in m.wire_ms_by_service.items()
            },
            "non_200_responses": {"baseline": b.non_200, "mlmoat": m.non_200},
        },
        "package": {
            "mlmoat_parts_bytes": lambda_parts,
            "mlmoat_bytes": ours_bytes,
            "baseline_bytes": baseline_bytes,
            "lambda_limit_bytes": LAMBDA_LIMIT_BYTES,
        },
        "memory": {
            "steady_rss_mib": steady_mib,
            "max_rss_mib": median([kb / 1024 for kb in m.max_rss_kb]),
            "template_memory_mb": template_memory_mb,
            "memory_floor_mb": _memory_floor(steady_mib),
            "recommended_memory_mb": recommended,
            "vcpu_share_at_recommended": recommended / LAMBDA_MB_PER_VCPU,
            "vcpu_share_at_template": template_memory_mb / LAMBDA_MB_PER_VCPU,
        },
        "snapstart": "not measurable locally (needs the Lambda service); see docs/performance.md",
        "raw": {
            name: {
                "cold_s": s.cold,
                "cold_no_bytecode_s": s.cold_no_bytecode,
                "p50_ms": s.p50_ms,
                "p99_ms": s.p99_ms,
                "in_process_p50_ms": s.in_p50_ms,
                "steady_rss_kb": s.steady_rss_kb,
            }
            for name, s in samples.items()
        },
    }


def render(report: dict[str, Any]) -> str:
    """The report as a Markdown table (figures, then batch scaling)."""
    lines = [
        "| figure | baseline (seed recipe) | mlmoat | ratio baseline/mlmoat | goal | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in report["figures"]:
        unit = f" {row['unit']}" if row["unit"] else ""
        digits = 3 if row["unit"] in ("s", "ms") else 1
        met = {True: "yes", False: "NO", None: ""}[row["met"]]
        no_baseline = row["figure"].startswith("DynamoDB")
        baseline = "—" if no_baseline else _fmt(row["baseline"], unit, digits)
        no_ratio = no_baseline or row["figure"].startswith("framework floor")
        ratio_text = "—" if no_ratio else _fmt(row["ratio"], "", 2)
        lines.append(
            f"| {row['figure']} | {baseline} | {_fmt(row['mlmoat'], unit, digits)} | "
            f"{ratio_text} | {row['goal']} | {met} |"
        )
    memory = report["memory"]
    lines += [
        "",
        f"Memory: steady max RSS {memory['steady_rss_mib']:.0f} MiB; template MemorySize "
        f"{memory['template_memory_mb']} MB ({memory['vcpu_share_at_template']:.2f} vCPU); "
        f"memory alone needs {memory['memory_floor_mb']} MB (+50%); "
        f"recommended {memory['recommended_memory_mb']} MB "
        f"({memory['vcpu_share_at_recommended']:.2f} vCPU; Lambda gives 1 vCPU per "
        f"{LAMBDA_MB_PER_VCPU} MB, so CPU, not memory, sets it).",
        "",
        "| rows per request | ms per request | ms per row | in-process ms | "
        "DynamoDB requests per request | DynamoDB bytes per request |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["scaling"]:
        lines.append(
            f"| {row['rows']} | {_fmt(row['ms_per_request'], '', 3)} | "
            f"{_fmt(row['ms_per_row'], '', 4)} | {_fmt(row['in_process_ms_per_request'], '', 3)} | "
            f"{_fmt(row['dynamodb_requests_per_request'], '', 2)} | "
            f"{_fmt(row['dynamodb_bytes_per_request'], '', 0)} |"
        )
    verdict = report["scaling_verdict"]
    lines += [
        "",
        "Scaling: time per row at the largest batch "
        + ("<=" if verdict["time_per_row_not_above_single_row"] else ">")
        + " a single row's; DynamoDB requests per request "
        + ("independent of" if verdict["dynamodb_requests_independent_of_rows"] else "VARY with")
        + " the rows (the row cap, SECURITY_MAX_ROWS, is the last size).",
    ]
    ddb = report["dynamodb"]
    machine = report["machine"]
    lines += [
        "",
        f"Steady-path AWS calls over {ddb['allowed_predictions']} allowed predictions: "
        f"{json.dumps(ddb['operations_on_steady_path'])}; other services' requests: "
        f"{json.dumps(ddb['other_aws_requests_on_steady_path'])}. Rows served "
        f"{ddb['rows_served']}, rows counted in DynamoDB {ddb['rows_counted_in_dynamodb']}. "
        f"Key item after the run: {ddb['key_item_bytes_after_run']} bytes, so each counting "
        f"write costs {ddb['write_units_per_charge_after_run']} WCU. Local round trip p50 by "
        f"service (moto, loopback): {json.dumps(ddb['wire_ms_p50_by_service'])} ms.",
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores, Python {machine['python']}; "
        f"plan {json.dumps(report['plan'])}.",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run ``mlmoat bench``."""
    parser = argparse.ArgumentParser(prog="mlmoat bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and requests")
    parser.add_argument("--repeat", type=int, help="repetitions (fresh processes per stack)")
    parser.add_argument("--json", type=Path, help="also write the full report as JSON here")
    parser.add_argument("--no-build", action="store_true", help="use the existing sam build output")
    parser.add_argument("--profile", type=Path, help="cProfile one extra mlmoat warm phase here")
    args = parser.parse_args(argv)
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
