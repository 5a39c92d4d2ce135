"""The load test's run and command line (``python -m mlmoat.load``; ``mlmoat.loadtest`` too)."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlmoat.bench.stats import percentile
from mlmoat.load.checks import Report, check_run
from mlmoat.load.plan import KeyPlan, LoadConfig, LoadKey, jwt_subjects, plan_keys
from mlmoat.load.traffic import drive, warm_up
from mlmoat.local.processes import HOST
from mlmoat.local.server import EmbeddedDynamoDB, serve_until_signalled
from mlmoat.local.stack import LocalStack, create_key, read_audit, read_items

_DESCRIPTION = (
    "The bounded load test across instances: several ``start-api`` processes, one DynamoDB."
)


def _percentile(values: list[float], q: float) -> float:
    # The one nearest-rank definition (``mlmoat.bench.stats.percentile``); 0.0 with no traffic.
    return percentile(values, q) if values else 0.0


def run(config: LoadConfig) -> Report:
    """Run the whole load test once and return its report.

    Raises:
        RuntimeError: the local stack could not be started or keys could not be created.
    """
    rng = random.Random(config.seed)  # noqa: S311 - load shape, not security
    report = Report(config.instances, config.clients, config.keys, config.duration_s)
    report.jwt_subjects = config.jwt_subjects
    with _work_dir(config.work_dir) as work:
        stack = LocalStack(work_dir=work, instances=config.instances)
        try:
            stack.start_dynamodb()
            plans = plan_keys(config.keys, rng)
            keys = [
                LoadKey(*create_key(stack.env, owner=f"load-{config.seed}-{i}", plan=plan), plan)
                for i, plan in enumerate(plans)
            ]
            if config.jwt_subjects:
                subjects, stack.env_vars_file = jwt_subjects(
                    stack.env, config.jwt_subjects, rng, seed=config.seed, work=work,
                    valid_s=config.duration_s,
                )  # fmt: skip
                keys += subjects
            warm_plan = KeyPlan("warmup", rate=1000, window_s=60, budget=1000)
            warm = LoadKey(
                *create_key(stack.env, owner=f"load-{config.seed}-warmup", plan=warm_plan),
                warm_plan,
            )
            stack.start_apis()
            # One request per instance first, so cold starts do not count in the timed run.
            warmup, report.failed_inits = warm_up(warm, stack.api_ports, config.model)
            samples, elapsed = drive(keys, stack.api_ports, config)
            samples = warmup + samples
            keys = [warm, *keys]
            stack.stop_apis()
            audit = read_audit(stack.api_logs)
            items = read_items(stack.env, [k.pk for k in keys])
        finally:
            stack.stop()
        report.duration_s = round(elapsed, 2)
        check_run(keys, samples, audit, items, report)
        report.warmup_requests = len(warmup)
        samples = samples[len(warmup) :]
        latencies = [(s.received - s.sent) * 1000 for s in samples if not s.transport_error]
        report.requests_per_second = round(len(samples) / elapsed, 1) if elapsed else 0.0
        report.latency_p50_ms = round(_percentile(latencies, 50), 1)
        report.latency_p99_ms = round(_percentile(latencies, 99), 1)
    return report


@contextlib.contextmanager
def _work_dir(path: str | None) -> Iterator[Path]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="mlmoat-load-") as tmp:
        yield Path(tmp)


def format_summary(report: Report) -> str:
    """The human summary printed at the end of a run."""
    lines = [
        f"load: {report.requests} requests, {report.instances} instances, "
        f"{report.clients} clients, {report.keys} keys + {report.jwt_subjects} JWT subjects, "
        f"{report.duration_s:.1f} s "
        f"({report.requests_per_second} req/s, p50 {report.latency_p50_ms} ms, "
        f"p99 {report.latency_p99_ms} ms)",
        f"  statuses: {report.statuses}; routes: {report.routes}",
        f"  allowed: {report.allowed_requests} requests, {report.allowed_rows} rows; "
        f"refused: {report.refused}",
        f"  audit records: {report.audit_records} for {report.requests} requests "
        f"({report.warmup_requests} of them warm-up, after {report.failed_inits} failed cold "
        f"starts); extraction flags raised by the monitor: "
        f"{report.extraction_flags}",
        f"  budgets: {report.budgets_checked} checked, {report.budgets_exhausted} exhausted; "
        f"rate windows: {report.windows_checked} checked, {report.windows_saturated} saturated",
        "  exactness: " + ("every check held" if report.ok else "FAILED"),
    ]
    lines += [f"  - {failure}" for failure in report.failures[:50]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: run once, print the summary, exit 0 only if every check held."""
    parser = argparse.ArgumentParser(prog="python -m mlmoat.loadtest", description=_DESCRIPTION)
    defaults = LoadConfig()
    parser.add_argument("--instances", type=int, default=defaults.instances)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--keys", type=int, default=defaults.keys)
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds")
    parser.add_argument("--max-requests", type=int, default=defaults.max_requests)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument(
        "--jwt-subjects", type=int, default=defaults.jwt_subjects, help="JWT subjects besides keys"
    )
    parser.add_argument("--work-dir", default=None, help="keep logs here (default: a temp dir)")
    parser.add_argument("--report", default=None, help="also write the report as JSON here")
    parser.add_argument(
        "--serve-dynamodb", type=int, metavar="PORT", help="only serve a serial moto server"
    )
    args = parser.parse_args(argv)
    if args.serve_dynamodb is not None:
        return serve_until_signalled(EmbeddedDynamoDB(host=HOST, port=args.serve_dynamodb))
    if not 0 <= args.jwt_subjects <= 1000:
        parser.error("--jwt-subjects must be between 0 and 1000")
    for name, high in (
        ("instances", 16),
        ("clients", 256),
        ("keys", 10000),
        ("max_requests", 10**6),
    ):
        if not 1 <= getattr(args, name) <= high:
            parser.error(f"--{name.replace('_', '-')} must be between 1 and {high}")
    if not 1 <= args.duration <= 3600:
        parser.error("--duration must be between 1 and 3600 seconds")
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so the stack's processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    config = LoadConfig(
        instances=args.instances,
        clients=args.clients,
        keys=args.keys,
        duration_s=args.duration,
        max_requests=args.max_requests,
        seed=args.seed,
        model=args.model,
        jwt_subjects=args.jwt_subjects,
        work_dir=args.work_dir,
    )
    report = run(config)
    print(format_summary(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
