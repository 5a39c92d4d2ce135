"""Smoke run of the multi-instance load test (the long run is ``make load``).

Runs ``python -m mlmoat.loadtest`` exactly as ``make load`` does, only shorter: three
``mlmoat local start-api`` processes (Lambda instances) sharing one local DynamoDB, sixteen API
keys and four JWT subjects with small budgets and rate limits, eight concurrent clients for
25 s, on loopback. The runner
checks every limit and budget to the row, one audit record per request and counters equal to
the audit trail; this test asserts it found all of that, with enough traffic to mean something.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_limits_budgets_and_audit_are_exact_across_three_instances(tmp_path: Path) -> None:
    # given three instances, 16 keys and 4 JWT subjects with small limits, 8 clients for 25 s
    report_path = tmp_path / "load.json"
    command = [
        sys.executable, "-m", "mlmoat.loadtest",
        "--instances", "3", "--clients", "8", "--keys", "16", "--jwt-subjects", "4",
        "--duration", "25",
        "--max-requests", "5000", "--seed", "11",
        "--work-dir", str(tmp_path / "work"), "--report", str(report_path),
    ]  # fmt: skip
    # when the load runs to its end
    result = subprocess.run(  # noqa: S603
        command, cwd=REPO, capture_output=True, text=True, timeout=540, check=False
    )
    print(result.stdout)  # the summary, shown with -s / on failure
    assert report_path.exists(), result.stderr[-4000:]
    report = json.loads(report_path.read_text())
    # then every exactness check held, with no server error
    assert report["failures"] == [], report["failures"]
    assert report["ok"] is True and result.returncode == 0
    assert set(report["statuses"]) <= {"200", "429"}, report["statuses"]
    # and the run was big enough to exercise what it claims
    assert (report["instances"], report["keys"], report["jwt_subjects"]) == (3, 16, 4)
    assert report["requests"] >= 100
    assert report["audit_records"] == report["requests"]
    assert report["allowed_rows"] > 0
    assert report["budgets_exhausted"] >= 1, "no budget was driven to exhaustion"
    assert report["windows_saturated"] >= 1, "no rate window was driven to its limit"
    assert report["refused"].get("budget_exhausted", 0) > 0
    assert report["refused"].get("rate_limited", 0) > 0
