"""Smoke of ``mlmoat bench``: every figure is produced; the steady path costs one DynamoDB request.

Runs one short repetition of the real benchmark (the baseline built from its lock file, the
Lambda build of mlmoat, both under CPython 3.13, against a moto server it starts). It never
asserts on a time: only that each figure was measured, and on counts, which do not depend on
the machine.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mlmoat.bench.cli import Plan, render, run

ROOT = Path(__file__).resolve().parents[2]
BUILDS = (ROOT / ".aws-sam" / "build" / "template.yaml",)


@pytest.fixture(scope="module")
def report() -> dict:
    missing = [str(p.parent) for p in BUILDS if not p.is_file()]
    if missing:
        pytest.skip(f"no sam build output ({', '.join(missing)}): `make build` makes it")
    return run(ROOT, Plan(repeat=1, warm=8, batch=2, no_bytecode_repeat=1), build=False, log=False)


def test_every_figure_is_measured_for_both_stacks(report: dict) -> None:
    # given a one-repetition run; then each figure has a finite value on each side it applies to
    names = {row["figure"] for row in report["figures"]}
    for expected in (
        "cold start, CPython 3.13, with byte-code (as shipped)",
        "cold start, CPython 3.13, no byte-code",
        "warm p50 per request",
        "warm p99 per request",
        "in-process p50 (AWS round trips excluded)",
        "security layer alone p50 (SDK-excluded minus floor)",
        "DynamoDB requests per allowed prediction",
        "package, unzipped (function + layers)",
        "max RSS, steady state",
    ):
        assert expected in names
    for row in report["figures"]:
        assert math.isfinite(row["mlmoat"]), row
        if not row["figure"].startswith("DynamoDB"):
            assert math.isfinite(row["baseline"]), row
        if not row["figure"].startswith("security layer alone"):  # a difference: may be < 0
            assert row["mlmoat"] > 0, row
    memory = report["memory"]
    assert memory["memory_floor_mb"] >= memory["steady_rss_mib"] * 1.5
    assert memory["recommended_memory_mb"] >= memory["memory_floor_mb"]
    table = render(report)
    assert "| cold start, CPython 3.13, with byte-code (as shipped) |" in table
    assert "| 100 |" in table


def test_steady_path_costs_one_dynamodb_request_per_allowed_prediction(report: dict) -> None:
    ddb = report["dynamodb"]
    assert ddb["allowed_predictions"] == 8
    assert ddb["requests_per_allowed_prediction"] == 1.0
    operations = {op for op in ddb["operations_on_steady_path"] if op.startswith("dynamodb:")}
    assert operations == {"dynamodb:UpdateItem"}
    assert ddb["operations_on_steady_path"]["dynamodb:UpdateItem"] == 8
    assert ddb["non_200_responses"] == {"baseline": {}, "mlmoat": {}}


def test_batches_cost_one_dynamodb_request_whatever_their_rows(report: dict) -> None:
    rows = [row["rows"] for row in report["scaling"]]
    assert rows[:3] == [1, 10, 100]
    for row in report["scaling"]:
        assert row["dynamodb_requests_per_request"] == 1.0, row
        assert math.isfinite(row["ms_per_row"]) and row["ms_per_row"] > 0
    assert report["scaling_verdict"]["dynamodb_requests_independent_of_rows"] is True


def test_every_served_row_was_counted_once_in_dynamodb(report: dict) -> None:
    ddb = report["dynamodb"]
    assert ddb["rows_counted_in_dynamodb"] == ddb["rows_served"]


def test_the_audit_records_bytes_are_measured_from_the_functions_stdout(report: dict) -> None:
    # every single-row 200 of the mlmoat process (the cold request, the 8 warm ones, the
    # batch-1 phase) wrote one audit record; the seed's recipe writes none
    ours, base = report["logs"]["mlmoat"], report["logs"]["baseline"]
    assert ours["audit_records"] >= 9
    assert 200 < ours["audit_record_bytes"] <= ours["audit_record_bytes_max"]
    assert ours["bytes_per_prediction"] >= ours["audit_record_bytes"]
    assert base["audit_records"] == 0
    assert ours["invocations"] > ours["audit_records"]
