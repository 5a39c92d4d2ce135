"""Runtime defences (security.runtime_config): parsing, precedence, caching, failing closed.

The source reads a real SSM API (moto in-process); "unreachable" is a real refused connection.
The monitor's runtime action is checked on the principal store (moto DynamoDB), as
tests/unit/test_extraction.py checks its deploy-time action.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from moto import mock_aws

from security.errors import RuntimeConfigUnavailableError
from security.runtime_config import (
    RETRY_AFTER_FAILURE_S,
    RuntimeConfig,
    RuntimeConfigError,
    RuntimeConfigSource,
)
from security.settings import Settings, SettingsError

NAME = "/mlmoat-unit/runtime-config"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _CountingClient:
    """A real SSM client that counts its GetParameter calls (and can be cut off)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls = 0
        self.broken: Any = None

    def get_parameter(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.broken is not None:
            return self.broken.get_parameter(**kwargs)
        return self._client.get_parameter(**kwargs)


def _unreachable() -> Any:
    # Nothing listens on port 9 of loopback: a real EndpointConnectionError, fast.
    return boto3.client(
        "ssm",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        config=Config(connect_timeout=0.5, read_timeout=0.5, retries={"total_max_attempts": 1}),
    )


# ------------------------------------------------------------------ parsing


def test_a_document_sets_global_and_per_model_values_with_the_model_winning() -> None:
    config = RuntimeConfig.parse(
        json.dumps(
            {
                "squeeze_policy": "refuse",
                "models": {"iris": {"squeeze_policy": "off", "extraction_action": "suspend"}},
            }
        )
    )
    assert config.value("squeeze_policy", model="iris", default="flag") == "off"
    assert config.value("squeeze_policy", model="breast-cancer", default="flag") == "refuse"
    assert config.value("extraction_action", model="iris", default="flag") == "suspend"
    # unset globally: the deploy-time default
    assert config.value("extraction_action", model="breast-cancer", default="flag") == "flag"


@pytest.mark.parametrize("text", ["", "  ", "{}"])
def test_an_empty_document_sets_nothing(text: str) -> None:
    config = RuntimeConfig.parse(text)
    assert config.value("squeeze_policy", model="iris", default="flag") == "flag"
    assert config.to_json() == "{}"


@pytest.mark.parametrize(
    "text",
    [
        "refuse",  # not JSON
        '["refuse"]',  # not an object
        '{"squeeze_policy": "refuze"}',  # a typo of the strictest value
        '{"squeeze_policy": "REFUSE"}',
        '{"squeeze_policy": true}',
        '{"squeeze_policy": null}',
        '{"squeeze": "refuse"}',  # an unknown setting
        '{"squeeze_policy": "refuse", "squeeze_policy": "off"}',  # repeated key
        '{"models": []}',
        '{"models": {"Iris!": {"squeeze_policy": "refuse"}}}',
        '{"models": {"iris": {"extraction_action": "ban"}}}',
        '{"models": {"iris": "refuse"}}',
        json.dumps({"squeeze_policy": "refuse", "pad": "x" * 5000}),  # over SSM's 4 KB
    ],
)
def test_a_malformed_document_is_refused_and_never_echoed(text: str) -> None:
    with pytest.raises(RuntimeConfigError) as info:
        RuntimeConfig.parse(text)
    for value in ("refuze", "REFUSE", "Iris!", "ban", "xxxx"):
        assert value not in str(info.value)


def test_set_and_unset_round_trip_through_the_document() -> None:
    config = RuntimeConfig().with_value("squeeze_policy", "refuse")
    config = config.with_value("extraction_action", "suspend", model="breast-cancer-forest")
    parsed = RuntimeConfig.parse(config.to_json())
    assert parsed == config
    assert json.loads(config.to_json()) == {
        "models": {"breast-cancer-forest": {"extraction_action": "suspend"}},
        "squeeze_policy": "refuse",
    }
    assert parsed.without("squeeze_policy").to_json() == json.dumps(
        {"models": {"breast-cancer-forest": {"extraction_action": "suspend"}}},
        separators=(",", ":"),
    )
    assert parsed.without("extraction_action", model="breast-cancer-forest").to_json() == (
        '{"squeeze_policy":"refuse"}'
    )
    assert parsed.without(None).to_json() == "{}"
    with pytest.raises(RuntimeConfigError):
        RuntimeConfig().with_value("squeeze_policy", "refuze")
    with pytest.raises(RuntimeConfigError):
        RuntimeConfig().with_value("squeeze_policy", "refuse", model="../iris")


def test_settings_read_the_parameter_name_and_max_age() -> None:
    base = {"SECURITY_TABLE_NAME": "t", "SECURITY_MODEL_DIR": "models"}
    settings = Settings.from_env(
        {
            **base,
            "SECURITY_RUNTIME_CONFIG_PARAMETER": NAME,
            "SECURITY_RUNTIME_CONFIG_MAX_AGE_SECONDS": "2",
        }
    )
    assert settings.runtime_config_parameter == NAME
    assert settings.runtime_config_max_age_seconds == 2
    assert Settings.from_env(base).runtime_config_parameter is None
    assert Settings.from_env(base).runtime_config_max_age_seconds == 30
    for name, value in (
        ("SECURITY_RUNTIME_CONFIG_PARAMETER", "bad name with spaces"),
        ("SECURITY_RUNTIME_CONFIG_MAX_AGE_SECONDS", "0"),
    ):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({**base, name: value})


# ------------------------------------------------------------------ the cached source


@mock_aws
def test_a_change_is_seen_after_the_max_age_and_not_read_before() -> None:
    ssm = boto3.client("ssm", region_name="us-east-1")
    client, clock = _CountingClient(ssm), _Clock()
    source = RuntimeConfigSource(
        client=client, parameter_name=NAME, max_age_seconds=30, clock=clock
    )
    # no parameter at all: no runtime value, the deploy-time setting applies
    assert source.current().value("squeeze_policy", model="iris", default="flag") == "flag"
    ssm.put_parameter(Name=NAME, Type="String", Value='{"squeeze_policy":"refuse"}')
    clock.now += 29.9
    assert source.current().value("squeeze_policy", model="iris", default="flag") == "flag"
    assert client.calls == 1  # cached: one read per max age, whatever the traffic
    clock.now += 0.2
    assert source.current().value("squeeze_policy", model="iris", default="flag") == "refuse"
    assert client.calls == 2


@mock_aws
def test_a_malformed_value_fails_closed_until_it_is_fixed() -> None:
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(Name=NAME, Type="String", Value='{"squeeze_policy":"refuse"}')
    clock = _Clock()
    source = RuntimeConfigSource(client=ssm, parameter_name=NAME, max_age_seconds=5, clock=clock)
    assert source.current().value("squeeze_policy", model="iris", default="flag") == "refuse"
    # When an operator writes a typo past the CLI's checks
    ssm.put_parameter(Name=NAME, Type="String", Value='{"squeeze_policy":"refuze"}', Overwrite=True)
    clock.now += 5
    # Then neither the deploy-time flag nor the last good refuse is served: 503 until fixed
    for _ in range(2):
        with pytest.raises(RuntimeConfigUnavailableError) as info:
            source.current()
        assert info.value.reason == "runtime_config_invalid"
        assert info.value.retry_after >= 1
        assert "refuze" not in str(info.value)
        clock.now += 5
    ssm.put_parameter(Name=NAME, Type="String", Value="{}", Overwrite=True)
    clock.now += 5
    assert source.current().value("squeeze_policy", model="iris", default="flag") == "flag"


@mock_aws
def test_an_unreachable_store_keeps_the_last_document_read_and_retries_soon() -> None:
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(Name=NAME, Type="String", Value='{"squeeze_policy":"refuse"}')
    client, clock = _CountingClient(ssm), _Clock()
    source = RuntimeConfigSource(
        client=client, parameter_name=NAME, max_age_seconds=30, clock=clock
    )
    assert source.current().value("squeeze_policy", model="x", default="flag") == "refuse"
    client.broken = _unreachable()
    clock.now += 30
    # the last document read stays in force (the operator's refuse is not lost to an outage)
    assert source.current().value("squeeze_policy", model="x", default="flag") == "refuse"
    assert client.calls == 2
    clock.now += RETRY_AFTER_FAILURE_S - 0.1
    source.current()
    assert client.calls == 2  # not one slow failing read per request
    clock.now += 0.2
    source.current()
    assert client.calls == 3


def test_an_unreachable_store_with_nothing_read_fails_closed() -> None:
    source = RuntimeConfigSource(client=_unreachable(), parameter_name=NAME, max_age_seconds=30)
    with pytest.raises(RuntimeConfigUnavailableError) as info:
        source.current()
    assert info.value.reason == "runtime_config_unavailable"


# ------------------------------------------------------------------ the monitor's action


@mock_aws
@pytest.mark.parametrize(("runtime", "status"), [("suspend", "suspended"), ("flag", "active")])
def test_the_monitor_takes_the_runtime_action_at_detection(runtime: str, status: str) -> None:
    from test_extraction import _reference, _table

    from security.extraction import ExtractionMonitor, QueryMessage
    from security.store import PrincipalStore
    from security.wiring import runtime_config_source

    table = f"sec-runtime-{runtime}"
    client = _table(table)
    client.put_item(TableName=table, Item={"pk": {"S": "key#rt1"}, "status": {"S": "active"}})
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(
        Name=NAME,
        Type="String",
        Value=json.dumps({"models": {"toy": {"extraction_action": runtime}}}),
    )
    settings = Settings(table_name=table, model_dir="models", runtime_config_parameter=NAME)
    source = runtime_config_source(settings, ssm)
    assert source is not None
    records: list[dict[str, Any]] = []
    # deploy-time action "flag" (the opposite of the runtime one in the first case)
    monitor = ExtractionMonitor(
        store=PrincipalStore(client=client, table_name=table),
        references={"toy": _reference()},
        action="flag" if runtime == "suspend" else "suspend",
        audit=records.append,
        action_for=lambda model: source.current().value(
            "extraction_action", model=model, default="flag"
        ),
    )
    rng = np.random.default_rng(7)
    for i in range(3):
        rows = tuple(tuple(r) for r in rng.random((20, 3)))
        monitor.process(QueryMessage("key#rt1", "toy", f"req-rt{i}", 1.0, rows, ("a",) * 20))
    item = client.get_item(TableName=table, Key={"pk": {"S": "key#rt1"}})["Item"]
    assert item["status"]["S"] == status
    assert item["flags"]["SS"] == ["extraction:off_manifold"]
    assert [record["decision"] for record in records] == [runtime]


@mock_aws
def test_the_monitor_retries_a_detection_while_the_document_is_malformed() -> None:
    from test_extraction import _reference, _table

    from security.extraction import ExtractionMonitor, QueryMessage
    from security.store import PrincipalStore

    table = "sec-runtime-malformed"
    client = _table(table)
    client.put_item(TableName=table, Item={"pk": {"S": "key#rt2"}, "status": {"S": "active"}})
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(Name=NAME, Type="String", Value='{"extraction_action": "suspendd"}')
    clock = _Clock()
    source = RuntimeConfigSource(client=ssm, parameter_name=NAME, max_age_seconds=1, clock=clock)
    store = PrincipalStore(client=client, table_name=table)
    monitor = ExtractionMonitor(
        store=store,
        references={"toy": _reference()},
        action="flag",
        audit=lambda record: None,
        action_for=lambda model: source.current().value(
            "extraction_action", model=model, default="flag"
        ),
    )
    rng = np.random.default_rng(7)
    messages = [
        QueryMessage(
            "key#rt2", "toy", f"req-rm{i}", 1.0, tuple(map(tuple, rng.random((20, 3)))), ("a",) * 20
        )
        for i in range(3)
    ]
    # the detecting message raises (SQS redelivers it): no flag, no state written for it
    failed = None
    for message in messages:
        try:
            monitor.process(message)
        except RuntimeConfigUnavailableError as exc:
            assert exc.reason == "runtime_config_invalid"
            failed = message
            break
    assert failed is not None
    item = client.get_item(TableName=table, Key={"pk": {"S": "key#rt2"}})["Item"]
    assert "flags" not in item and item["status"]["S"] == "active"
    # once fixed, the redelivered message flags (and suspends) as the operator meant
    ssm.put_parameter(
        Name=NAME, Type="String", Value='{"extraction_action": "suspend"}', Overwrite=True
    )
    clock.now += 1
    assert monitor.process(failed).verdict is not None
    item = client.get_item(TableName=table, Key={"pk": {"S": "key#rt2"}})["Item"]
    assert item["status"]["S"] == "suspended"
