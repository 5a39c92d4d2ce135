"""PredictFunction's SnapStart wiring: after a restore every client is rebuilt and serving goes on.

The Lambda service (which calls the hooks) cannot run here; the hooks are the ones the handler
registered with ``snapshot_restore_py``, called as the runtime calls them after a restore.
"""

from __future__ import annotations

from typing import Any

import snapshot_restore_py
from handlersupport import invoke, load_event, response_body


def test_the_handler_registers_its_hooks_with_the_runtime(predict_module: Any) -> None:
    # given the handler module imported as a cold start does
    hooks = predict_module.hooks
    # then its hooks are registered with the runtime's registry (once)
    registered = [entry[0] for entry in snapshot_restore_py._after_restore_registry]
    assert registered.count(hooks.run_after_restore) == 1
    before = [entry[0] for entry in snapshot_restore_py._before_snapshot_registry]
    assert before.count(hooks.run_before_snapshot) == 1


def test_a_restore_rebuilds_every_client_and_the_next_request_is_served(
    predict_module: Any, keys: dict[str, str], handler_env: dict[str, str], monkeypatch: Any
) -> None:
    # given the clients built at init (the extraction queue is configured in these tests)
    clients = predict_module.function.clients.all()
    assert len(clients) == 2
    old = [client._client for client in clients]
    restores = predict_module.hooks.restores
    # when the runtime runs the after-restore hooks (in the function's environment, as in
    # Lambda: the fixture sets it only around the import, and new clients read their endpoints)
    with monkeypatch.context() as env:
        for name, value in handler_env.items():
            env.setenv(name, value)
        predict_module.hooks.run_after_restore()
    # then every client is a new one and the hooks ran once
    assert all(
        client._client is not previous for client, previous in zip(clients, old, strict=True)
    )
    assert predict_module.hooks.restores == restores + 1
    # and the app, holding the same RefreshableClient objects, serves through the new clients
    response = invoke(predict_module, load_event("rest/predict-ok-single.json", keys))
    assert response["statusCode"] == 200, response_body(response)


def test_a_restore_draws_new_writer_lanes(
    predict_module: Any, handler_env: dict[str, str], monkeypatch: Any
) -> None:
    # given the gatekeeper's lane as the snapshot holds it (every restored environment would
    # share it: two environments writing under one lane would defeat the retry check)
    gatekeeper = predict_module.function.app.state.gate.gatekeeper
    with gatekeeper._writers.lane() as lane:
        before = lane.id
    # when the runtime runs the after-restore hooks
    with monkeypatch.context() as env:
        for name, value in handler_env.items():
            env.setenv(name, value)
        predict_module.hooks.run_after_restore()
    # then the environment writes under a lane of its own
    with gatekeeper._writers.lane() as lane:
        assert lane.id != before


def test_a_restored_environment_gets_a_queue_buffer_of_its_own(
    predict_module: Any, handler_env: dict[str, str], monkeypatch: Any
) -> None:
    # given the extraction sink of the function built at init
    sink = predict_module.function.app.state.query_sink
    before = sink.environment
    # when a snapshot is taken and restored, then the buffer was empty in the snapshot and the
    # restored environment's queue position has an id of its own (environments restored from
    # one snapshot must not share one: docs/ml-defences.md, "Delivery")
    predict_module.hooks.run_before_snapshot()
    assert sink.pending == 0
    with monkeypatch.context() as env:
        for name, value in handler_env.items():
            env.setenv(name, value)
        predict_module.hooks.run_after_restore()
    assert sink.environment != before and (sink.queued, sink.flushed) == (0, 0)
