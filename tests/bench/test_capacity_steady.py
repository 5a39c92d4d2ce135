"""The capacity model's many-keys steady state (``CapacityReplay.run_steady``).

10,000 keys at 1 request/s each, two of them simulated after 140 s of unmetered warm-up: the
monitor's states are at their plateau (they no longer grow), each principal has one message per
monitor batch. Without the monitor's buffer (``flush_seconds=0``) the monitor's write units per
prediction are the state's write units (at the plateau) over the messages per principal and
batch: four. With it (the template's 30 s, 8 messages) over the event source's five pollers,
each with its own monitor environment, a principal's messages are written about once per 30 s
per environment: under one write unit. The environments' caches drop a key after
``eviction_seconds`` and every cold request reads the key. A change to the state's size, to the
batching, to the buffer or to the environments' cache sizes shows up here.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from mlmoat.bench.capacity_report import (
    STEADY_WARMUP_SECONDS,
    steady_scenario,
    summarise,
)
from mlmoat.bench.itemsize import KB, write_units
from mlmoat.bench.replay import (
    CACHE_ENTRIES,
    CapacityReplay,
    ScenarioResult,
    eviction_seconds,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_cache_entries_are_the_security_layers() -> None:
    from security import itemviews, keycache

    assert itemviews._VIEWS == CACHE_ENTRIES
    assert keycache._CACHE_SIZE == CACHE_ENTRIES


def test_eviction_seconds_is_the_lru_lifetime() -> None:
    # 10,000 keys at 1/s over 250 environments: each environment sees a key every 250 s; 4,096
    # distinct others arrive in 250 x ln(1 / (1 - 0.4096)) s.
    assert eviction_seconds(10_000, 1.0, 250) == pytest.approx(250 * math.log(1 / 0.5904))
    assert eviction_seconds(4_096, 1.0, 250) == math.inf
    # Twice the environments: each sees a key half as often.
    assert eviction_seconds(10_000, 1.0, 500) == pytest.approx(2 * eviction_seconds(10_000, 1, 250))
    # The warm-up outlasts the lifetime: the cold share is the steady state's.
    assert eviction_seconds(10_000, 1.0, 250) < STEADY_WARMUP_SECONDS


@pytest.fixture(scope="module")
def steady(moto_server: Any) -> tuple[ScenarioResult, dict[str, Any]]:
    """Without the monitor's buffer (each batch applied at once): 5 s metered."""
    if not (REPO / "models" / "iris" / "manifest.json").is_file():
        pytest.skip("models/ not trained yet (mlmoat train)")
    scenario = dataclasses.replace(steady_scenario(quick=True, sample=2), seconds=5.0)
    result = CapacityReplay(REPO, moto_server.endpoint, flush_seconds=0).run_steady(scenario)
    return result, summarise(result)


@pytest.fixture(scope="module")
def buffered(moto_server: Any) -> tuple[ScenarioResult, dict[str, Any]]:
    """As deployed: the template's buffer, five pollers, 60 s metered (two buffer periods)."""
    if not (REPO / "models" / "iris" / "manifest.json").is_file():
        pytest.skip("models/ not trained yet (mlmoat train)")
    result = CapacityReplay(REPO, moto_server.endpoint).run_steady(
        steady_scenario(quick=True, sample=2)
    )
    return result, summarise(result)


def test_buffered_the_monitor_writes_a_principal_under_once_per_prediction(
    buffered: tuple[ScenarioResult, dict[str, Any]],
) -> None:
    result, row = buffered
    assert result.allowed == result.scenario.requests == 120 and result.monitor_failures == 0
    assert (row["pollers"], row["flush_seconds"], row["flush_messages"]) == (5, 30.0, 8)
    figures = row["steady"]
    # The same plateau state (one write unit a write) ...
    assert KB / 2 < figures["monitor_state_bytes"] <= KB
    assert figures["monitor_state_write_units"] == 1
    # ... fed one message a batch, but written once for several of a principal's messages:
    # 1 request/s over 5 environments is one every 5 s in each, 6 in 30 s.
    assert result.event_source is not None and result.event_source.batch_size == 1
    assert figures["messages_per_principal_per_batch"] >= 4
    assert row["monitor"]["write_units"] == pytest.approx(
        figures["monitor_state_write_units"] / figures["messages_per_principal_per_batch"], rel=0.05
    )
    # The bound: at most one write unit per prediction, well under one read unit.
    assert row["monitor"]["write_units"] <= 1.0, row["monitor"]
    assert row["monitor"]["read_units"] <= 0.25, row["monitor"]
    # The counter: exactly one write a prediction, one unit each. Each environment prunes
    # other lanes only from a view it saw whole within PRUNE_VIEW_SECONDS (a cold request's
    # read, its own write's ALL_NEW), so no counting write is refused by a lane that wrote
    # again since its view (before: 3 % of writes, 1.03 units) and no cleanup write is needed.
    counter_writes = [r for r in result.records if r.is_write and r.pk in result.key_pks]
    assert len(counter_writes) == result.allowed
    assert {r.write_units for r in counter_writes} == {1.0}
    assert not any(r.condition_failed for r in counter_writes)
    assert row["counter"]["write_units"] == 1.0
    assert max(item.size for item in result.counter_items) < KB
    # and nothing lost: every row served in the window is in a state once the buffers are
    # flushed (the rows they held at its start counted before it)
    assert row["delivery"]["rows_monitored"] == row["delivery"]["rows_served"] == 120


def test_steady_state_monitor_writes_its_plateau_state_once_per_message(
    steady: tuple[ScenarioResult, dict[str, Any]],
) -> None:
    result, row = steady
    assert result.allowed == result.scenario.requests == 10
    assert row["statuses"] == {"200": 10}
    figures = row["steady"]
    monitor_writes = [r for r in result.records if r.is_write and r.pk.startswith("mon#")]
    # At the plateau: no write changes the state's size, and it is under 1 KB (one write unit).
    assert all(r.size_before == r.size_after for r in monitor_writes)
    assert KB / 2 < figures["monitor_state_bytes"] <= KB
    assert figures["monitor_state_write_units"] == 1
    # The sample's share of a batch of 100 among 10,000 keys: one message, one per principal.
    assert result.event_source is not None and result.event_source.batch_size == 1
    assert figures["messages_per_principal_per_batch"] == pytest.approx(1.0)
    # The model: the state's write units over the messages per principal and batch.
    assert row["monitor"]["write_units"] == pytest.approx(
        figures["monitor_state_write_units"] / figures["messages_per_principal_per_batch"], rel=0.05
    )
    # Without any batching (every message its own write, as when a principal's messages are
    # spread over more environments than a buffer period holds of them): one write unit.
    assert row["monitor"]["write_units"] == pytest.approx(1.0)
    assert (row["pollers"], row["flush_seconds"]) == (5, 0.0)
    # One eventually consistent read of a state under 4 KB per message.
    assert row["monitor"]["read_units"] == pytest.approx(0.5)
    # so the monitor bound (at most 1 write unit a prediction) holds whatever the
    # batching: a write applies at least one message, and no state costs more than one unit
    assert row["monitor"]["write_units"] <= 1.0
    assert row["delivery"]["rows_monitored"] == row["delivery"]["rows_served"] == 10
    # The population's delivery: full batches of 100, one invocation per 100 predictions.
    assert row["delivery"]["messages_per_batch"] == 100
    assert row["delivery"]["monitor_batches"] == pytest.approx(10 / 100)


def test_steady_state_counter_pays_a_read_per_cold_request_and_lanes_per_environment(
    steady: tuple[ScenarioResult, dict[str, Any]],
) -> None:
    result, row = steady
    assert result.cold_requests is not None
    counter_reads = [r for r in result.records if not r.is_write and r.pk in result.key_pks]
    # Every cold environment reads the key once, eventually consistent: half a unit (its
    # item is under 4 KB; the counting write re-checks what the read gave).
    assert len(counter_reads) == result.cold_requests
    assert {r.read_units for r in counter_reads} == {0.5}
    assert row["counter"]["read_units"] == pytest.approx(0.5 * result.cold_requests / 10)
    # Spread over 250 environments, a key's item carries a lane for each that wrote it within
    # the lanes' horizon: far more than the one environment of the first-request figure.
    assert min(item.lanes for item in result.counter_items) >= 20
    # Its writes cost what the sizes the meter observed give (the lanes make them larger).
    writes = [r for r in result.records if r.is_write and r.pk in result.key_pks]
    assert row["counter"]["write_units"] == pytest.approx(
        sum(write_units(r.size_before, r.size_after) for r in writes) / 10
    )
    assert row["counter"]["write_units"] >= 1.0
    # The table-wide figures stand for the 10,000 keys, not the sample of 2.
    assert row["table"]["write_units_per_second"] >= 5_000 * row["total"]["write_units"] * 0.5
