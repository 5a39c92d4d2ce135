"""The benchmark's measurements: build both stacks, alternate fresh processes, collect samples."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlmoat import python313
from mlmoat.bench.baseline import BASELINE_KEY, build_baseline, floor_spec
from mlmoat.bench.events import rest_event
from mlmoat.bench.logbytes import read_log
from mlmoat.bench.plan import BATCH_SIZES, ROWS, Plan, Samples
from mlmoat.bench.report import _report
from mlmoat.bench.runner import FunctionSpec, Phase, RunResult, run_function
from mlmoat.bench.stack import (
    built_function,
    function_spec,
    local_stack,
    tree_bytes,
    without_bytecode,
)
from mlmoat.bench.stats import median, percentile


def _repo_root(start: Path) -> Path:
    for candidate in (start, *start.parents):
        if (candidate / "template.yaml").is_file() and (candidate / "bench" / "baseline").is_dir():
            return candidate
    raise SystemExit("mlmoat bench: run it inside the mlmoat repository (template.yaml not found)")


def _record(samples: Samples, result: RunResult, *, rows_by_phase: dict[str, int]) -> None:
    samples.cold.append(result.cold_s)
    samples.import_s.append(result.first["import_s"])
    samples.first_invoke_s.append(result.first["first_invoke_s"])
    samples.first_wire.append(result.first["wire"])
    samples.max_rss_kb.append(result.maxrss_kb)
    samples.rows_served += 1  # the cold request: one row, answered 200 (checked by the runner)
    logs = read_log(result.stdout_path)
    samples.audit_record_bytes += logs.audit_record_bytes
    samples.other_log_bytes += logs.other_bytes
    samples.invocations += 1 + sum(len(phase["samples"]) for phase in result.phases.values())
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
                samples.sqs_sends += int(sends.get("sqs", 0))
                samples.sqs_bytes += int(sample.get("bytes_by_service", {}).get("sqs", 0))
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


def _build(root: Path) -> None:
    print("bench: make build (no-op when up to date) ...", file=sys.stderr)
    make = shutil.which("make") or "make"
    done = subprocess.run(  # noqa: S603 - the project's own Makefile
        [make, "--no-print-directory", "build"], cwd=root, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"mlmoat bench: `make build` failed ({done.returncode})")


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
    log_dir = work / "logs"
    # A private copy of the Lambda build, with the byte-code it ships: a rebuild running
    # elsewhere cannot change it mid-run.
    build_dir = work / "build"
    shutil.copytree(root / ".aws-sam" / "build", build_dir, symlinks=True)
    site = python313.runtime_site(root)
    baseline = build_baseline(root, runtime_site=site, log=log)
    lambda_build = built_function(root, build_dir)

    with local_stack(root, log_dir=log_dir) as stack:
        ours = function_spec(root, build_dir, aws_env=stack.aws_env)
        # The same trees without byte-code (the runtime's boto3 keeps its own, as on Lambda).
        bare = {
            "baseline": without_bytecode(baseline, work / "bare-baseline", keep=(site,)),
            "mlmoat": without_bytecode(ours, work / "bare-mlmoat", keep=(site,)),
        }
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
                spec if cached else bare[name],
                event,
                phase_list if phases else [],
                log_dir=log_dir,
            )

        # Warm-up, discarded: fills the page cache for both stacks.
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
                floor,
                base_event,
                [Phase("warm", base_event, plan.warm, vary_source=True)],
                log_dir=log_dir,
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
            run_function(
                spec,
                event,
                phase_list[:1],
                log_dir=log_dir,
                profile=profile.resolve(),
            )
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
        template_memory_mb=lambda_build.memory_mb,
        sizes=sizes,
    )
