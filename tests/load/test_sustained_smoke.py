"""Smoke of ``make sustained``: one key's items stay under 1 KB through the real local stack.

Runs ``python -m mlmoat.bench.sustained`` as ``make sustained`` does, only shorter: two
``mlmoat local start-api`` processes (their queue pollers feeding the extraction monitor) on one
local DynamoDB, one key at 5 requests/s for 20 s; the table is scanned every 5 s and at the end.
Asserts, by the project's item-size rules, that the key's counting item stayed under 1 KB (one
write unit a charge) and the monitor's item under its design bound of 4 KB (its compact state's
plateau is about 3.7 KB: docs/ml-defences.md), that the monitor consumed the traffic, and that
every request was answered 200.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlmoat.bench.itemsize import KB

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(400)
def test_one_keys_items_stay_within_their_bounds_with_the_monitor_running(tmp_path: Path) -> None:
    # given two start-api instances and the monitor polling the queue, one key at 5 requests/s
    report_path = tmp_path / "sustained.json"
    command = [
        sys.executable, "-m", "mlmoat.bench.sustained", "--rate", "5", "--duration", "20",
        "--every", "5", "--instances", "2", "--report", str(report_path),
    ]  # fmt: skip
    # when it runs to its end
    result = subprocess.run(  # noqa: S603
        command, cwd=REPO, capture_output=True, text=True, timeout=380, check=False
    )
    print(result.stdout)
    assert report_path.exists(), result.stderr[-4000:]
    report = json.loads(report_path.read_text())
    # then every request was served and the table was sampled through the run
    assert report["statuses"] == {"200": report["requests"]}
    assert report["requests"] == 100
    assert report["samples"] >= 4
    # and the key's counting item and the monitor's stayed under 1 KB (one write unit)
    items = report["items"]
    counting = {pk: s["max_bytes"] for pk, s in items.items() if pk.startswith("key#")}
    monitor = {pk: s["max_bytes"] for pk, s in items.items() if pk.startswith("mon#")}
    assert counting and monitor and set(monitor) == set(report["monitor_items"]), items
    assert set(items) == set(counting) | set(monitor), items
    assert all(0 < size < KB for size in counting.values()), counting
    assert all(0 < size < KB for size in monitor.values()), monitor
    assert report["max_item_bytes"] == max(s["max_bytes"] for s in items.values())
    assert report["counter_under_1_kb"] is True and report["monitor_under_1_kb"] is True
    assert report["within_bounds"] is True and result.returncode == 0
    # and the monitor counted the traffic (bar what the instances' sinks may still hold)
    held = report["rows_possibly_held"]
    assert report["requests"] - held <= report["rows_monitored"] <= report["requests"]
