"""``python -m mlmoat.bench.sustained``: one key's DynamoDB items under sustained traffic.

The capacity model replays on a simulated clock; this runs the real local stack for minutes on
the wall clock: ``mlmoat.local.stack.LocalStack`` (one embedded DynamoDB, which also serves the
extraction queue, bootstrapped from template.yaml) and ``--instances`` ``mlmoat local start-api``
processes (the Lambda build under CPython 3.13), each with the queue poller start-api runs for
the template's SQS event source, so the extraction monitor consumes what the predict path sends,
as on Lambda. One key with limits far above the traffic receives single-row predictions at a
steady ``--rate`` for ``--duration`` seconds, the instances taking turns; the rows are benign
iris rows (``mlmoat.bench.replay.benign_rows``, the capacity model's: held-out rows with
noise). Every ``--every`` seconds, and once the monitor has drained the queue at the end, the
table is scanned and every item of the key (its item, its counter shards, its monitor state,
anything whose partition key names the key) is sized by the project's DynamoDB item-size rules
(``mlmoat.bench.itemsize``).

The report: requests and statuses, the achieved rate, the largest size each item reached over
the run, the monitor's rows, and the verdict: every item of the key under 1 KB, one write unit a
write: its counting items (``key#...``: its item and its shards) and the monitor's item
(``docs/ml-defences.md``, "State layout": a state at its plateau is at most 880 bytes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlmoat.bench.itemsize import KB, item_size
from mlmoat.bench.replay import benign_rows
from mlmoat.local.stack import (
    REPO,
    KeyPlan,
    LocalStack,
    create_key,
    dynamodb_client,
    send,
    table_name,
)

#: The bound of each kind of item: one write unit, the counting items and the monitor's alike.
COUNTER_BOUND = KB
MONITOR_BOUND = KB
#: Limits far above any run here: the run measures sizes, not refusals.
PLAN = KeyPlan("sustained", rate=1_000_000, window_s=60, budget=100_000_000)
#: How long the monitor gets to drain the queue after the last request (its poller waits at most
#: 1 s a receive; each instance's sink may still hold up to 9 entries, sent with its next
#: request or at shutdown).
DRAIN_S = 5.0
SINK_HELD_MAX = 9


def key_items(env: dict[str, str], key_id: str) -> dict[str, dict[str, Any]]:
    """Every item of the table whose partition key names ``key_id``, as DynamoDB returns it."""
    client = dynamodb_client(env)
    items: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("scan").paginate(TableName=table_name(), ConsistentRead=True):
        for item in page.get("Items", []):
            pk = item["pk"]["S"]
            if key_id in pk:
                items[pk] = item
    return items


def monitor_rows(items: dict[str, dict[str, Any]]) -> int:
    """Rows the monitor's states of these items counted."""
    from security.extraction import DetectorState

    return sum(
        DetectorState.from_bytes(bytes(item["state"]["B"])).rows_seen
        for pk, item in items.items()
        if pk.startswith("mon#") and "state" in item
    )


def within_bounds(largest: dict[str, int]) -> bool:
    """Whether every item kept to its bound: the monitor's item under ``MONITOR_BOUND``, every
    other item of the key (its counting items, anything else) under ``COUNTER_BOUND``; and the
    key's item and a monitor item were both seen."""
    seen = any(pk.startswith("key#") for pk in largest) and any(
        pk.startswith("mon#") for pk in largest
    )
    return seen and all(
        size < (MONITOR_BOUND if pk.startswith("mon#") else COUNTER_BOUND)
        for pk, size in largest.items()
    )


def run(
    *, rate: float, duration_s: float, every_s: float, instances: int, work_dir: Path
) -> dict[str, Any]:
    """Run the stack, drive it, sample the key's items; return the report."""
    stack = LocalStack(work_dir=work_dir, instances=instances)
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    largest: dict[str, int] = {}
    samples: list[dict[str, Any]] = []

    def sample(at: float) -> dict[str, dict[str, Any]]:
        items = key_items(stack.env, key_id)
        sizes = {pk: item_size(item) for pk, item in items.items()}
        with lock:
            for pk, size in sizes.items():
                largest[pk] = max(largest.get(pk, 0), size)
            samples.append({"t": round(at, 1), "sizes": sizes})
        return items

    try:
        stack.start_dynamodb()
        key_id, api_key = create_key(stack.env, owner="sustained", plan=PLAN)
        stack.start_apis()
        rows = benign_rows(REPO, 4096)
        headers = {"X-API-Key": api_key, "Content-Type": "application/json"}

        def one(index: int) -> None:
            port = stack.api_ports[index % len(stack.api_ports)]
            body = json.dumps({"features": rows[index % len(rows)]}).encode()
            try:
                status = str(send(port, path="/predict", body=body, headers=headers)[0])
            except OSError as exc:
                status = type(exc).__name__
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

        total = int(rate * duration_s)
        start = time.monotonic()
        next_sample = every_s
        with ThreadPoolExecutor(max_workers=max(2, 2 * instances)) as pool:
            for index in range(total):
                due = start + index / rate
                while (now := time.monotonic()) < due:
                    time.sleep(min(0.05, due - now))
                if now - start >= next_sample:
                    pool.submit(sample, now - start)
                    next_sample += every_s
                pool.submit(one, index)
        elapsed = time.monotonic() - start
        time.sleep(DRAIN_S)
        final = sample(time.monotonic() - start)
    finally:
        stack.stop()
    sent = sum(statuses.values())
    counter = {pk: n for pk, n in largest.items() if pk.startswith("key#")}
    monitor = {pk: n for pk, n in largest.items() if pk.startswith("mon#")}
    return {
        "rate_target": rate,
        "duration_s": duration_s,
        "instances": instances,
        "requests": sent,
        "achieved_rate": round(sent / elapsed, 2) if elapsed else 0.0,
        "elapsed_s": round(elapsed, 1),
        "statuses": dict(sorted(statuses.items())),
        "samples": len(samples),
        "items": {
            pk: {"max_bytes": size, "final_bytes": item_size(final[pk]) if pk in final else None}
            for pk, size in sorted(largest.items())
        },  # fmt: skip
        "max_item_bytes": max(largest.values(), default=0),
        "max_counter_bytes": max(counter.values(), default=0),
        "max_monitor_bytes": max(monitor.values(), default=0),
        "counter_under_1_kb": bool(counter) and max(counter.values()) < COUNTER_BOUND,
        "monitor_under_1_kb": bool(monitor) and max(monitor.values()) < MONITOR_BOUND,
        "within_bounds": within_bounds(largest),
        "monitor_items": sorted(pk for pk in final if pk.startswith("mon#")),
        "rows_monitored": monitor_rows(final),
        "rows_possibly_held": SINK_HELD_MAX * instances,
        "over_time": [
            {"t": s["t"], "max_bytes": max(s["sizes"].values(), default=0)} for s in samples
        ],
    }


def render(report: dict[str, Any]) -> str:
    """The human summary."""
    lines = [
        f"sustained: {report['requests']:,} requests at {report['achieved_rate']} req/s "
        f"(target {report['rate_target']:g}) over {report['elapsed_s']} s, "
        f"{report['instances']} start-api instance(s); statuses {report['statuses']}; "
        f"monitor counted {report['rows_monitored']:,} rows",
        "| item | max bytes | final bytes |",
        "|---|---:|---:|",
    ]
    for pk, sizes in report["items"].items():
        lines.append(f"| `{pk}` | {sizes['max_bytes']:,} | {sizes['final_bytes']} |")
    lines.append(
        f"largest counting item {report['max_counter_bytes']:,} bytes "
        f"({'under' if report['counter_under_1_kb'] else 'NOT under'} 1 KB); monitor item "
        f"{report['max_monitor_bytes']:,} bytes "
        f"({'under' if report['monitor_under_1_kb'] else 'NOT under'} 1 KB)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: run once, print the summary, exit 0 only if every item kept to its bound
    (``within_bounds``) and every request was answered 200."""
    parser = argparse.ArgumentParser(prog="python -m mlmoat.bench.sustained")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of traffic")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--report", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if not (0 < args.rate <= 200 and 1 <= args.duration <= 3600 and 1 <= args.instances <= 8):
        parser.error("--rate in (0, 200], --duration in [1, 3600], --instances in [1, 8]")
    with tempfile.TemporaryDirectory(prefix="mlmoat-sustained-") as work:
        report = run(
            rate=args.rate,
            duration_s=args.duration,
            every_s=args.every,
            instances=args.instances,
            work_dir=Path(work),
        )
    print(render(report))
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    ok = report["within_bounds"] and set(report["statuses"]) == {"200"}
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
