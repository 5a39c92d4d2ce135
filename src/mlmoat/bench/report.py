"""The benchmark's report: medians over repetitions, ratios, goals, the rendered table."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlmoat.bench.plan import (
    GOAL_COLD_RATIO,
    GOAL_IN_PROCESS_MS,
    GOAL_PACKAGE_MB,
    LAMBDA_LIMIT_BYTES,
    LAMBDA_MB_PER_VCPU,
    MIB,
    Plan,
    Samples,
)
from mlmoat.bench.runner import lambda_python
from mlmoat.bench.stats import median, percentile, ratio


def _machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout  # noqa: S607
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    functions = subprocess.run(  # noqa: S603 - the project's CPython 3.13
        [str(lambda_python()), "-I", "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "functions_python": functions or "unknown",
        "platform": platform.platform(),
    }


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
        pair(
            "cold start, CPython 3.13, with byte-code (as shipped)",
            cold_b,
            cold_m,
            f"mlmoat <= {GOAL_COLD_RATIO} x baseline",
            cold_m <= GOAL_COLD_RATIO * cold_b,
            "s",
        ),
        pair(
            "cold start, CPython 3.13, no byte-code",
            median(b.cold_no_bytecode),
            median(m.cold_no_bytecode),
            "",
            None,
            "s",
        ),
        pair("  of which imports + init", median(b.import_s), median(m.import_s), "", None, "s"),
        pair(
            "  of which first invocation",
            median(b.first_invoke_s),
            median(m.first_invoke_s),
            "",
            None,
            "s",
        ),
        pair("warm p50 per request", median(b.p50_ms), median(m.p50_ms), "", None, "ms"),
        pair("warm p99 per request", median(b.p99_ms), median(m.p99_ms), "", None, "ms"),
        pair(
            "in-process p50 (AWS round trips excluded)",
            median(b.in_p50_ms),
            median(m.in_p50_ms),
            "",
            None,
            "ms",
        ),
        pair(
            "in-process p99 (AWS round trips excluded)",
            median(b.in_p99_ms),
            median(m.in_p99_ms),
            "",
            None,
            "ms",
        ),
        pair(
            "in-process p50 (whole AWS SDK calls excluded)",
            median(b.layer_p50_ms),
            layer_p50,
            "",
            None,
            "ms",
        ),
        pair(
            "in-process p99 (whole AWS SDK calls excluded)",
            median(b.layer_p99_ms),
            median(m.layer_p99_ms),
            "",
            None,
            "ms",
        ),
        pair(
            "framework floor p50 (FastAPI + Mangum, empty route)",
            floor_p50_ms,
            floor_p50_ms,
            "",
            None,
            "ms",
        ),
        pair(
            "security layer alone p50 (SDK-excluded minus floor)",
            median(b.layer_p50_ms) - floor_p50_ms,
            alone_p50,
            f"mlmoat <= {GOAL_IN_PROCESS_MS} ms",
            alone_p50 <= GOAL_IN_PROCESS_MS,
            "ms",
        ),
        pair(
            "DynamoDB requests per allowed prediction",
            0.0,
            per_allowed,
            "1",
            per_allowed == 1.0,
            "",
        ),
        pair(
            "package, unzipped (function + layers)",
            baseline_bytes / MIB,
            ours_bytes / MIB,
            f"mlmoat <= {GOAL_PACKAGE_MB:.0f} MiB",
            ours_bytes / MIB <= GOAL_PACKAGE_MB,
            "MiB",
        ),
        pair(
            "max RSS, steady state",
            median([kb / 1024 for kb in b.steady_rss_kb]),
            steady_mib,
            "",
            None,
            "MiB",
        ),
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
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
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
        "logs": {name: _logs(s) for name, s in samples.items()},
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


def _logs(s: Samples) -> dict[str, Any]:
    # What CloudWatch Logs ingests per single-row allowed prediction: its audit record (none for
    # the baseline) and the lines that are not audit records, spread over every invocation.
    audit = median(s.audit_record_bytes) if s.audit_record_bytes else 0.0
    other = s.other_log_bytes / s.invocations if s.invocations else 0.0
    return {
        "audit_records": len(s.audit_record_bytes),
        "audit_record_bytes": audit,
        "audit_record_bytes_max": max(s.audit_record_bytes, default=0),
        "other_bytes_per_invocation": other,
        "invocations": s.invocations,
        "bytes_per_prediction": audit + other,
        "sqs_sends_per_prediction": s.sqs_sends / s.allowed if s.allowed else 0.0,
        "sqs_bytes_per_send": s.sqs_bytes / s.sqs_sends if s.sqs_sends else 0.0,
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
    ours, base = report["logs"]["mlmoat"], report["logs"]["baseline"]
    lines += [
        "",
        f"Logs (CloudWatch Logs ingestion) per single-row allowed prediction: mlmoat "
        f"{ours['bytes_per_prediction']:,.0f} bytes (audit record median "
        f"{ours['audit_record_bytes']:,.0f}, max {ours['audit_record_bytes_max']:,}, over "
        f"{ours['audit_records']:,} records; other lines {ours['other_bytes_per_invocation']:,.0f} "
        f"per invocation over {ours['invocations']:,}); baseline "
        f"{base['bytes_per_prediction']:,.0f} bytes. SQS on the warm path: "
        f"{ours['sqs_sends_per_prediction']:.2f} SendMessageBatch calls per prediction, "
        f"{ours['sqs_bytes_per_send']:,.0f} bytes per call (request + response).",
    ]
    lines += [
        "",
        f"Steady-path AWS calls over {ddb['allowed_predictions']} allowed predictions: "
        f"{json.dumps(ddb['operations_on_steady_path'])}; other services' requests: "
        f"{json.dumps(ddb['other_aws_requests_on_steady_path'])}. Rows served "
        f"{ddb['rows_served']}, rows counted in DynamoDB {ddb['rows_counted_in_dynamodb']}. "
        f"Key item after the run: {ddb['key_item_bytes_after_run']} bytes, so each counting "
        f"write costs {ddb['write_units_per_charge_after_run']} WCU. Local round trip p50 by "
        f"service (moto, loopback): {json.dumps(ddb['wire_ms_p50_by_service'])} ms.",
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores; functions under CPython "
        f"{machine.get('functions_python', 'unknown')}, the bench itself under Python "
        f"{machine['python']}; "
        f"plan {json.dumps(report['plan'])}.",
    ]
    return "\n".join(lines)
