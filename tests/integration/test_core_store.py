"""PrincipalStore's error translation: DynamoDB failures become StoreUnavailableError (chained),
bugs are re-raised unchanged."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError
from coresupport import make_client

from mlmoat.local.server import free_port
from security.errors import NotFoundError, StoreUnavailableError
from security.store import PrincipalStore


def test_unreachable_endpoint_is_store_unavailable() -> None:
    store = PrincipalStore(
        client=make_client(f"http://127.0.0.1:{free_port()}", max_attempts=1), table_name="t-closed"
    )
    with pytest.raises(StoreUnavailableError) as caught:
        store.get("key#AAAAAAAAAAAA")
    assert isinstance(caught.value.__cause__, EndpointConnectionError)


def test_missing_table_is_store_unavailable(core_endpoint: str) -> None:
    store = PrincipalStore(client=make_client(core_endpoint), table_name="no-such-table-here")
    with pytest.raises(StoreUnavailableError) as caught:
        store.record_auth_failure("192.0.2.1", window_start=0, window_seconds=60)
    assert isinstance(caught.value.__cause__, ClientError)


def test_a_bug_is_re_raised_unchanged(core_endpoint: str) -> None:
    store = PrincipalStore(client=make_client(core_endpoint), table_name="")
    with pytest.raises(ParamValidationError):
        store.get("key#AAAAAAAAAAAA")


def test_unknown_key_for_admin_reads_is_not_found(core_endpoint: str, core_table: str) -> None:
    store = PrincipalStore(client=make_client(core_endpoint), table_name=core_table)
    with pytest.raises(NotFoundError):
        store.get_key("AAAAAAAAAAAA")


def test_monitor_state_round_trip_with_optimistic_versions(
    core_endpoint: str, core_table: str
) -> None:
    store = PrincipalStore(client=make_client(core_endpoint), table_name=core_table)
    principal = "key#AAAAAAAAAAAC"
    assert store.load_monitor_state(principal, "iris") == (None, 0)
    store.save_monitor_state(principal, "iris", b"\x00state-1", expected_version=0, now=10)
    assert store.load_monitor_state(principal, "iris") == (b"\x00state-1", 1)
    store.save_monitor_state(principal, "iris", b"state-2", expected_version=1, now=11)
    # a writer holding a stale version loses, and nothing is overwritten
    with pytest.raises(StoreUnavailableError) as caught:
        store.save_monitor_state(principal, "iris", b"stale", expected_version=1, now=12)
    assert caught.value.reason == "monitor_state_conflict"
    with pytest.raises(StoreUnavailableError):
        store.save_monitor_state(principal, "iris", b"stale", expected_version=0, now=12)
    assert store.load_monitor_state(principal, "iris") == (b"state-2", 2)
    assert store.load_monitor_state(principal, "breast-cancer") == (None, 0)
