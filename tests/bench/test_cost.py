"""The cost model (``mlmoat.bench.cost``): known usage gives known dollars, and docs/cost.md's
tables are what the generator computes from the inputs recorded beside it, at today's prices."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from mlmoat.bench import cost
from mlmoat.bench.capacity_report import plan
from mlmoat.bench.cost import (
    GB,
    PRICES,
    Measured,
    Usage,
    billed_ms,
    cost_report,
    doc_block,
    generated_part,
    price,
    shape_usage,
    sqs_requests,
    update_doc,
)
from mlmoat.bench.logbytes import read_log

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cost.md"
INPUTS = ROOT / "docs" / "cost-inputs.json"


def test_known_usage_gives_known_dollars_per_million() -> None:
    # given one prediction: 1 API request, 10 ms at 1,024 MB, 1 WCU, 0.5 RCU, 0.3 SQS requests,
    # a hundredth of a 20 ms monitor invocation, and 1,024 bytes of logs
    usage = Usage(
        billed_ms=10, memory_mb=1024, write_units=1, read_units=0.5, sqs_requests=0.3,
        monitor_invocations=0.01, monitor_billed_ms=20, monitor_memory_mb=1024, log_bytes=1024,
    )  # fmt: skip
    # when priced
    dollars = price(usage)
    # then each item is the list price times the usage of a million predictions
    assert dollars["api_requests"] == pytest.approx(3.50)
    assert dollars["lambda_requests"] == pytest.approx(0.20)
    assert dollars["lambda_gb_seconds"] == pytest.approx(10_000 * 0.0000166667)  # 10,000 GB-s
    assert dollars["write_units"] == pytest.approx(0.625)
    assert dollars["read_units"] == pytest.approx(0.0625)
    assert dollars["sqs_requests"] == pytest.approx(0.12)
    # 10,000 monitor invocations ($0.002) and 200 GB-s
    assert dollars["monitor"] == pytest.approx(0.002 + 200 * 0.0000166667)
    assert dollars["log_gb"] == pytest.approx(0.50 * 1024 * 1_000_000 / 2**30)
    assert dollars["total"] == pytest.approx(sum(v for k, v in dollars.items() if k != "total"))
    assert dollars["total"] == pytest.approx(5.156337, abs=1e-5)


def test_the_prices_are_the_recorded_list_prices() -> None:
    assert cost.REGION == "us-east-1" and cost.PRICES_TAKEN
    table = {name: (p.usd, p.quantity) for name, p in PRICES.items()}
    assert table == {
        "api_requests": (3.50, 1_000_000),
        "lambda_requests": (0.20, 1_000_000),
        "lambda_gb_seconds": (0.0000166667, 1),
        "write_units": (0.625, 1_000_000),
        "read_units": (0.125, 1_000_000),
        "sqs_requests": (0.40, 1_000_000),
        "log_gb": (0.50, 1),
    }
    assert all(p.source.startswith("https://aws.amazon.com/") for p in PRICES.values())
    assert GB == 2**30


def test_billed_duration_stretches_below_one_vcpu_and_rounds_up() -> None:
    # 3 ms on a full core at 1,024 MB (0.58 vCPU) is 5.18 ms, plus a 5 ms round trip: 11 ms
    assert billed_ms(3.0, 1024, round_trip_ms=5.0) == 11
    # at or above 1,769 MB a full vCPU: no stretch, still rounded up to the millisecond
    assert billed_ms(3.2, 2048) == 4
    assert billed_ms(3.0, 1769) == 3


def test_sqs_requests_count_sends_receives_deletes_and_64_kb_chunks() -> None:
    # a tenth of a send a prediction, and the receive and delete of what it carried
    assert sqs_requests(0.1, 4_486, 0.1) == pytest.approx(0.3)
    # a send over 64 KB is billed as two requests, and so are its receive and delete
    assert sqs_requests(0.1, 70_000, 0.1) == pytest.approx(0.6)


def _measured() -> Measured:
    return Measured(
        mlmoat_in_process_ms=3.0, baseline_in_process_ms=2.0, memory_mb=1024,
        dynamodb_requests=1.0, mlmoat_log_bytes=1200, baseline_log_bytes=0,
        audit_record_bytes=1200, sqs_bytes_per_send=4_000,
    )  # fmt: skip


def _scenario(label: str = "1 key x 100/s", *, allowed: int = 2000) -> dict:
    return {
        "scenario": label, "requests": allowed, "allowed": allowed,
        "total": {"write_units": 1.02, "read_units": 0.01},
        "delivery": {
            "queue_calls_per_request": 0.1, "monitor_batches": 20, "messages_per_batch": 100.0,
            "rows_served": allowed, "rows_monitored": allowed,
            "monitor_ms_per_invocation": 10.0, "monitor_calls_per_invocation": 2.0,
        },
    }  # fmt: skip


def test_a_shapes_usage_comes_from_the_capacity_figures() -> None:
    usage = shape_usage(_measured(), _scenario())
    # 3 ms x 1769/1024 + 1 DynamoDB request (5 ms) + 0.1 SQS sends (0.8 ms) = 10.98: 11 ms
    assert usage.billed_ms == 11
    assert (usage.write_units, usage.read_units) == (1.02, 0.01)
    # 0.1 sends and 0.1 receives (2,000 rows / 10 a receive) and as many deletes
    assert usage.sqs_requests == pytest.approx(0.3)
    assert usage.monitor_invocations == pytest.approx(20 / 2000)
    # 10 ms x 1769/1024 + 2 DynamoDB calls (10 ms) = 27.3: 28 ms
    assert usage.monitor_billed_ms == 28
    assert usage.log_bytes == 1200


def test_the_three_stacks_side_by_side() -> None:
    report = cost_report(_measured(), {"scenarios": [_scenario()], "date": "d", "quick": False})
    (row,) = report["rows"]
    base = report["baseline"]
    # without the layer: API Gateway + the function (2 ms x 1.73 = 3.46: 4 ms), nothing else
    assert base["usage"]["billed_ms"] == 4
    assert base["dollars"]["total"] == pytest.approx(3.50 + 0.20 + 4_000 * 0.0000166667)
    for item in ("write_units", "read_units", "sqs_requests", "monitor", "log_gb"):
        assert base["dollars"][item] == 0
    # usage plans cost the same dollars (no charge of their own); mlmoat costs more
    assert row["usage_plans"] == row["without_layer"] == base["dollars"]["total"]
    assert row["premium"] == pytest.approx(row["mlmoat"]["total"] - base["dollars"]["total"])
    assert row["premium"] > 0 and math.isclose(
        row["ratio"], row["mlmoat"]["total"] / base["dollars"]["total"]
    )
    text = cost.render_all(report)
    assert "| 1 key x 100/s |" in text and "https://aws.amazon.com/lambda/pricing/" in text


def test_the_doc_tables_are_the_generators_on_the_recorded_inputs() -> None:
    # given the inputs recorded beside docs/cost.md by `mlmoat bench --cost-doc`
    inputs = json.loads(INPUTS.read_text(encoding="utf-8"))
    doc = DOC.read_text(encoding="utf-8")
    # then the doc's generated part is exactly what the code computes from them now
    assert generated_part(doc) == doc_block(inputs), (
        "docs/cost.md is stale: run `mlmoat bench --cost-doc docs/cost.md`"
    )
    assert update_doc(doc, inputs) == doc
    # and every traffic shape of the capacity model is in it
    labels = [s["scenario"] for s in inputs["capacity"]["scenarios"]]
    assert labels == [scenario.label for scenario in plan(quick=False)]
    assert all(f"| {label} |" in doc for label in labels)
    assert inputs["capacity"]["quick"] is False


def test_a_price_edit_without_regenerating_the_doc_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inputs = json.loads(INPUTS.read_text(encoding="utf-8"))
    doc = DOC.read_text(encoding="utf-8")
    edited = dataclasses.replace(PRICES["write_units"], usd=1.25)
    monkeypatch.setitem(PRICES, "write_units", edited)
    assert generated_part(doc) != doc_block(inputs)


def test_log_bytes_split_single_row_audit_records_from_the_rest(tmp_path: Path) -> None:
    audit = json.dumps({"message": "audit", "rows": 1, "status": 200, "x": "y"})
    batch = json.dumps({"message": "audit", "rows": 10, "status": 200})
    other = "not json at all"
    path = tmp_path / "stdout"
    path.write_text(f"{audit}\n{batch}\n\n{other}\n{audit}\n", encoding="utf-8")
    found = read_log(path)
    assert found.audit_record_bytes == [len(audit), len(audit)]
    assert found.other_audit_bytes == len(batch)
    assert found.other_bytes == len(other)


def test_a_capacity_report_updates_the_units_and_keeps_the_recorded_measurements(
    tmp_path: Path,
) -> None:
    # given the doc and its recorded inputs, and a `mlmoat bench --capacity --json` report whose
    # many-keys steady state costs one write unit less
    from mlmoat.cli import main

    doc = tmp_path / "cost.md"
    doc.write_text(DOC.read_text(encoding="utf-8"), encoding="utf-8")
    recorded = json.loads(INPUTS.read_text(encoding="utf-8"))
    (tmp_path / "cost-inputs.json").write_text(json.dumps(recorded), encoding="utf-8")
    capacity = json.loads(json.dumps(recorded["capacity"]))
    last = capacity["scenarios"][-1]
    last["total"]["write_units"] -= 1.0
    report = tmp_path / "capacity.json"
    report.write_text(json.dumps({"capacity": capacity}), encoding="utf-8")
    # when the doc is regenerated from it
    assert main(["bench", "--cost-doc", str(doc), "--from", str(report)]) == 0
    # then the inputs hold the new units and the measurements recorded before
    inputs = json.loads((tmp_path / "cost-inputs.json").read_text(encoding="utf-8"))
    assert inputs["measured"] == recorded["measured"]
    assert inputs["capacity"]["scenarios"][-1]["total"] == last["total"]
    # and the doc's tables are the generator's on those inputs (and differ from before)
    assert cost.doc_block(inputs) in doc.read_text(encoding="utf-8")
    assert cost.doc_block(recorded) not in doc.read_text(encoding="utf-8")
