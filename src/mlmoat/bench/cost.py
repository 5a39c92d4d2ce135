"""What a million allowed predictions cost on AWS, from the bench and the capacity model.

``PRICES`` is the one price table (us-east-1 list prices, the date they were recorded, the AWS
pricing page of each); ``ASSUMPTIONS`` the few figures that cannot be measured here. The inputs
are per allowed prediction (``Usage``): API Gateway requests, function invocations and their
billed milliseconds at the template's ``MemorySize``, DynamoDB write and read units (the capacity
model's), SQS requests (the sink's ``SendMessageBatch`` calls, the event source's receives and
deletes, each billed per started 64 KB), the monitor's invocations and milliseconds, and the log
bytes CloudWatch Logs ingests. ``price`` turns one ``Usage`` into dollars per million
predictions, item by item; ``cost_report`` builds the three stacks for every traffic shape of a
capacity report from the bench's measurements:

* **mlmoat**: API Gateway, the prediction function with the security layer, DynamoDB, SQS, the
  extraction monitor, the audit records;
* **without the layer**: the same API and model served by API Gateway and a function running the
  model only (the bench's baseline, the seed's recipe), nothing metered;
* **usage plans**: the same, metered by API Gateway's API keys and usage plans (no charge of
  their own; their throttles and quotas are best effort, not exact).

Free tiers are ignored; nothing here is re-checked against the live pricing pages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mlmoat.bench.plan import LAMBDA_MB_PER_VCPU

REGION = "us-east-1"
#: The day the list prices below were recorded (not re-checked live since).
PRICES_TAKEN = "2026-12-04"
MILLION = 1_000_000
GB = 1024**3
#: SQS bills one request per started 64 KB of payload.
SQS_CHUNK_BYTES = 64 * 1024
#: ReceiveMessage and DeleteMessageBatch carry at most 10 messages.
SQS_BATCH_MAX = 10


@dataclass(frozen=True, slots=True)
class Price:
    """One list price: ``usd`` per ``quantity`` ``unit``, from ``source``."""

    item: str
    usd: float
    quantity: float
    unit: str
    source: str

    def of(self, amount: float) -> float:
        """Dollars for ``amount`` units."""
        return amount * self.usd / self.quantity


PRICES: dict[str, Price] = {
    "api_requests": Price(
        "API Gateway REST API requests (first 333 million a month)",
        3.50, MILLION, "requests", "https://aws.amazon.com/api-gateway/pricing/",
    ),
    "lambda_requests": Price(
        "Lambda requests", 0.20, MILLION, "requests", "https://aws.amazon.com/lambda/pricing/"
    ),
    "lambda_gb_seconds": Price(
        "Lambda duration, x86", 0.0000166667, 1, "GB-second",
        "https://aws.amazon.com/lambda/pricing/",
    ),
    "write_units": Price(
        "DynamoDB on-demand write request units (price of 2024-11-01)",
        0.625, MILLION, "write request units",
        "https://aws.amazon.com/dynamodb/pricing/on-demand/",
    ),
    "read_units": Price(
        "DynamoDB on-demand read request units (price of 2024-11-01)",
        0.125, MILLION, "read request units",
        "https://aws.amazon.com/dynamodb/pricing/on-demand/",
    ),
    "sqs_requests": Price(
        "SQS standard queue requests (each started 64 KB is one request)",
        0.40, MILLION, "requests", "https://aws.amazon.com/sqs/pricing/",
    ),
    "log_gb": Price(
        "CloudWatch Logs ingestion, standard class", 0.50, 1, "GB (2^30 bytes)",
        "https://aws.amazon.com/cloudwatch/pricing/",
    ),
}  # fmt: skip

#: What the run cannot measure on this machine, and the figure taken instead.
ASSUMPTIONS: dict[str, tuple[float, str]] = {
    "dynamodb_round_trip_ms": (
        5.0,
        "one DynamoDB request in-region, added to a function's duration per request it made "
        "(the predict path's and the monitor's)",
    ),
    "sqs_round_trip_ms": (
        8.0,
        "one SQS SendMessageBatch in-region, added per call the predict path made",
    ),
    "vcpu_mb": (
        float(LAMBDA_MB_PER_VCPU),
        "Lambda gives one vCPU per this many MB: in-process time measured on one core here "
        "is scaled by vcpu_mb / MemorySize below it",
    ),
}

#: The cost items in table order, with their short column names.
ITEMS: tuple[tuple[str, str], ...] = (
    ("api_requests", "API Gateway"),
    ("lambda_requests", "Lambda requests"),
    ("lambda_gb_seconds", "Lambda GB-s"),
    ("write_units", "DynamoDB writes"),
    ("read_units", "DynamoDB reads"),
    ("sqs_requests", "SQS"),
    ("monitor", "monitor (Lambda)"),
    ("log_gb", "CloudWatch Logs"),
)


@dataclass(frozen=True, slots=True)
class Usage:
    """What one allowed prediction uses (means over the predictions measured)."""

    api_requests: float = 1.0
    invocations: float = 1.0
    billed_ms: float = 0.0
    memory_mb: int = 1024
    write_units: float = 0.0
    read_units: float = 0.0
    sqs_requests: float = 0.0
    monitor_invocations: float = 0.0
    monitor_billed_ms: float = 0.0
    monitor_memory_mb: int = 1024
    log_bytes: float = 0.0


def price(usage: Usage, prices: Mapping[str, Price] | None = None) -> dict[str, float]:
    """Dollars per million allowed predictions, by item of ``ITEMS``, and their ``total``."""
    p = PRICES if prices is None else prices
    n = MILLION
    gb_s = usage.billed_ms / 1000 * usage.memory_mb / 1024
    monitor_gb_s = (
        usage.monitor_invocations * usage.monitor_billed_ms / 1000 * usage.monitor_memory_mb / 1024
    )
    dollars = {
        "api_requests": p["api_requests"].of(usage.api_requests * n),
        "lambda_requests": p["lambda_requests"].of(usage.invocations * n),
        "lambda_gb_seconds": p["lambda_gb_seconds"].of(gb_s * n),
        "write_units": p["write_units"].of(usage.write_units * n),
        "read_units": p["read_units"].of(usage.read_units * n),
        "sqs_requests": p["sqs_requests"].of(usage.sqs_requests * n),
        "monitor": p["lambda_requests"].of(usage.monitor_invocations * n)
        + p["lambda_gb_seconds"].of(monitor_gb_s * n),
        "log_gb": p["log_gb"].of(usage.log_bytes * n / GB),
    }
    dollars["total"] = sum(dollars.values())
    return dollars


def billed_ms(in_process_ms: float, memory_mb: int, *, round_trip_ms: float = 0.0) -> float:
    """An invocation's billed duration on Lambda: the in-process time measured on one core here,
    stretched by the CPU share of ``memory_mb``, plus the AWS round trips, rounded up to 1 ms."""
    vcpu_mb = ASSUMPTIONS["vcpu_mb"][0]
    return float(math.ceil(in_process_ms * max(1.0, vcpu_mb / memory_mb) + round_trip_ms))


def sqs_requests(sends: float, send_bytes: float, receives: float) -> float:
    """SQS requests per prediction: the sends and the receives and deletes of what they carry
    (a receive returns at most what one send carried, each received set is deleted in one call),
    each billed per started 64 KB of a send's payload."""
    chunks = max(1, math.ceil(send_bytes / SQS_CHUNK_BYTES))
    return (sends + 2 * receives) * chunks


@dataclass(frozen=True, slots=True)
class Measured:
    """The bench's measurements the cost is computed from (per allowed single-row prediction)."""

    mlmoat_in_process_ms: float
    baseline_in_process_ms: float
    memory_mb: int
    dynamodb_requests: float
    mlmoat_log_bytes: float
    baseline_log_bytes: float
    audit_record_bytes: float
    sqs_bytes_per_send: float
    source: str = ""

    @classmethod
    def from_bench(cls, report: Mapping[str, Any]) -> Measured:
        """From a ``mlmoat bench`` report (its figures, memory, dynamodb and logs sections)."""
        figures = {row["figure"]: row for row in report["figures"]}
        in_process = figures["in-process p50 (AWS round trips excluded)"]
        logs = report["logs"]
        return cls(
            mlmoat_in_process_ms=float(in_process["mlmoat"]),
            baseline_in_process_ms=float(in_process["baseline"]),
            memory_mb=int(report["memory"]["template_memory_mb"]),
            dynamodb_requests=float(report["dynamodb"]["requests_per_allowed_prediction"]),
            mlmoat_log_bytes=float(logs["mlmoat"]["bytes_per_prediction"]),
            baseline_log_bytes=float(logs["baseline"]["bytes_per_prediction"]),
            audit_record_bytes=float(logs["mlmoat"]["audit_record_bytes"]),
            sqs_bytes_per_send=float(logs["mlmoat"]["sqs_bytes_per_send"]),
            source=str(report.get("date", "")),
        )


def shape_usage(measured: Measured, scenario: Mapping[str, Any]) -> Usage:
    """mlmoat's usage per allowed prediction in one capacity scenario."""
    delivery = scenario["delivery"]
    allowed = max(1, int(scenario["allowed"]))
    sends = float(delivery["queue_calls_per_request"])
    # A sampled scenario's batches are the population's (fractional per prediction).
    batches = float(delivery["monitor_batches"])
    monitor_invocations = batches / allowed
    # One message per allowed prediction; each send's messages come back in one receive, at
    # most 10 a receive.
    receives = max(sends, 1 / SQS_BATCH_MAX)
    round_trips = (
        measured.dynamodb_requests * ASSUMPTIONS["dynamodb_round_trip_ms"][0]
        + sends * ASSUMPTIONS["sqs_round_trip_ms"][0]
    )
    monitor_ms = billed_ms(
        float(delivery.get("monitor_ms_per_invocation") or 0.0),
        measured.memory_mb,
        round_trip_ms=float(delivery.get("monitor_calls_per_invocation") or 0.0)
        * ASSUMPTIONS["dynamodb_round_trip_ms"][0],
    )
    return Usage(
        billed_ms=billed_ms(
            measured.mlmoat_in_process_ms, measured.memory_mb, round_trip_ms=round_trips
        ),
        memory_mb=measured.memory_mb,
        write_units=float(scenario["total"]["write_units"]),
        read_units=float(scenario["total"]["read_units"]),
        sqs_requests=sqs_requests(sends, measured.sqs_bytes_per_send, receives),
        monitor_invocations=monitor_invocations,
        monitor_billed_ms=monitor_ms if monitor_invocations else 0.0,
        monitor_memory_mb=measured.memory_mb,
        log_bytes=measured.mlmoat_log_bytes,
    )


def baseline_usage(measured: Measured) -> Usage:
    """The same API and model without the layer: API Gateway and the function, nothing else."""
    return Usage(
        billed_ms=billed_ms(measured.baseline_in_process_ms, measured.memory_mb),
        memory_mb=measured.memory_mb,
        log_bytes=measured.baseline_log_bytes,
    )


def cost_report(measured: Measured, capacity: Mapping[str, Any]) -> dict[str, Any]:
    """Dollars per million allowed predictions for every scenario of ``capacity``, the three
    stacks side by side, with the usage each was computed from and the price table."""
    base = baseline_usage(measured)
    base_dollars = price(base)
    rows = []
    for scenario in capacity["scenarios"]:
        usage = shape_usage(measured, scenario)
        dollars = price(usage)
        rows.append(
            {
                "scenario": scenario["scenario"],
                "usage": asdict(usage),
                "mlmoat": dollars,
                "without_layer": base_dollars["total"],
                "usage_plans": base_dollars["total"],
                "premium": dollars["total"] - base_dollars["total"],
                "ratio": dollars["total"] / base_dollars["total"],
            }
        )
    return {
        "region": REGION,
        "prices_taken": PRICES_TAKEN,
        "prices": {name: asdict(p) for name, p in PRICES.items()},
        "assumptions": {name: {"value": v, "meaning": m} for name, (v, m) in ASSUMPTIONS.items()},
        "measured": asdict(measured),
        "capacity_date": capacity.get("date", ""),
        "capacity_quick": bool(capacity.get("quick", False)),
        "baseline": {"usage": asdict(base), "dollars": base_dollars},
        "rows": rows,
    }


# ---------------------------------------------------------------------- rendering
def _usd(value: float) -> str:
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def render_inputs(report: Mapping[str, Any]) -> str:
    """The per-prediction figures the cost comes from, as markdown."""
    m = report["measured"]
    lines = [
        f"Per allowed prediction (bench: {m['source'] or 'this run'}; capacity model: "
        f"{report['capacity_date']}{', --quick' if report['capacity_quick'] else ''}): "
        f"in-process p50 (AWS round trips excluded) mlmoat {m['mlmoat_in_process_ms']:.3f} ms, "
        f"without the layer {m['baseline_in_process_ms']:.3f} ms; MemorySize {m['memory_mb']} MB; "
        f"DynamoDB requests {m['dynamodb_requests']:g}; log bytes mlmoat "
        f"{m['mlmoat_log_bytes']:,.0f} (audit record {m['audit_record_bytes']:,.0f}), without "
        f"the layer {m['baseline_log_bytes']:,.0f}; SQS bytes per send "
        f"{m['sqs_bytes_per_send']:,.0f}.",
        "",
        "| scenario | billed ms | WCU | RCU | SQS requests | monitor invocations "
        "| monitor billed ms | log bytes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = report["baseline"]["usage"]
    for row in [{"scenario": "without the layer", "usage": base}, *report["rows"]]:
        u = row["usage"]
        lines.append(
            f"| {row['scenario']} | {u['billed_ms']:g} | {u['write_units']:.2f} "
            f"| {u['read_units']:.2f} | {u['sqs_requests']:.3f} "
            f"| {u['monitor_invocations']:.4f} | {u['monitor_billed_ms']:g} "
            f"| {u['log_bytes']:,.0f} |"
        )
    return "\n".join(lines)


def render_cost(report: Mapping[str, Any]) -> str:
    """Dollars per million allowed predictions, as markdown: mlmoat by item, then the three
    stacks side by side."""
    header = " | ".join(name for _, name in ITEMS)
    lines = [
        f"Dollars per million allowed predictions, {report['region']} list prices of "
        f"{report['prices_taken']} (free tiers ignored):",
        "",
        f"| scenario | {header} | mlmoat | without the layer | usage plans | mlmoat / without |",
        "|---|" + "---:|" * (len(ITEMS) + 4),
    ]
    for row in report["rows"]:
        items = " | ".join(_usd(row["mlmoat"][key]) for key, _ in ITEMS)
        lines.append(
            f"| {row['scenario']} | {items} | **{_usd(row['mlmoat']['total'])}** "
            f"| {_usd(row['without_layer'])} | {_usd(row['usage_plans'])} "
            f"| {row['ratio']:.2f} |"
        )
    base = report["baseline"]["dollars"]
    items = " | ".join(_usd(base[key]) for key, _ in ITEMS)
    lines.append(
        f"| without the layer (any shape) | {items} | — | **{_usd(base['total'])}** "
        f"| {_usd(base['total'])} | — |"
    )
    return "\n".join(lines)


def _list_price(usd: float) -> str:
    text = f"{usd:.10f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def render_prices(report: Mapping[str, Any]) -> str:
    """The price table and the assumptions, as markdown."""
    lines = [
        f"| item | list price ({report['region']}, recorded {report['prices_taken']}) | source |",
        "|---|---|---|",
    ]
    for p in report["prices"].values():
        quantity = f"{p['quantity']:,.0f} " if p["quantity"] != 1 else ""
        lines.append(
            f"| {p['item']} | {_list_price(p['usd'])} per {quantity}{p['unit']} | {p['source']} |"
        )
    lines += ["", "| assumption | value | meaning |", "|---|---:|---|"]
    for name, a in report["assumptions"].items():
        lines.append(f"| `{name}` | {a['value']:g} | {a['meaning']} |")
    return "\n".join(lines)


def render_all(report: Mapping[str, Any]) -> str:
    """Prices, inputs and dollars: what ``mlmoat bench`` prints and docs/cost.md embeds."""
    return "\n\n".join((render_prices(report), render_inputs(report), render_cost(report)))


# ---------------------------------------------------------------------- docs/cost.md
DOC_BEGIN = "<!-- cost tables: generated by `mlmoat bench --cost-doc`; do not edit by hand -->"
DOC_END = "<!-- end of the generated cost tables -->"


def recorded_inputs(measured: Measured, capacity: Mapping[str, Any]) -> dict[str, Any]:
    """What the cost tables are computed from, small enough to keep beside the doc."""
    return {
        "measured": asdict(measured),
        "capacity": {
            "date": capacity.get("date", ""),
            "quick": bool(capacity.get("quick", False)),
            "request_cap": capacity.get("request_cap"),
            "scenarios": [
                {
                    "scenario": s["scenario"],
                    "requests": s["requests"],
                    "allowed": s["allowed"],
                    "total": {k: s["total"][k] for k in ("write_units", "read_units")},
                    "delivery": dict(s["delivery"]),
                }
                for s in capacity["scenarios"]
            ],
        },
    }


def report_from_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The cost report of recorded inputs, at the prices of ``PRICES``."""
    return cost_report(Measured(**inputs["measured"]), inputs["capacity"])


def doc_block(inputs: Mapping[str, Any]) -> str:
    """The generated part of docs/cost.md, markers included."""
    return f"{DOC_BEGIN}\n\n{render_all(report_from_inputs(inputs))}\n\n{DOC_END}"


def generated_part(text: str) -> str:
    """The generated part of a doc's text (markers included).

    Raises:
        ValueError: the doc has no generated part.
    """
    start, end = text.find(DOC_BEGIN), text.find(DOC_END)
    if start < 0 or end < start:
        raise ValueError("no generated cost tables in the doc")
    return text[start : end + len(DOC_END)]


def update_doc(text: str, inputs: Mapping[str, Any]) -> str:
    """``text`` with its generated part replaced by the tables of ``inputs``."""
    return text.replace(generated_part(text), doc_block(inputs))
