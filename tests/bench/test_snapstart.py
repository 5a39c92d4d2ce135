"""SnapStart hooks: restored environments must not share random state, clients or secrets."""

from __future__ import annotations

import random

import numpy as np
import snapshot_restore_py

from security.snapstart import RefreshableClient, SnapStartHooks, reseed_random


def _run_registered(registry: list[tuple[object, tuple[object, ...], dict[str, object]]]) -> None:
    # As the Lambda runtime does: call every registered (func, args, kwargs).
    for func, args, kwargs in registry:
        func(*args, **kwargs)  # type: ignore[operator]


def test_two_restores_of_one_snapshot_draw_different_random_numbers() -> None:
    # given: a snapshot of the interpreter's random state taken after init
    hooks = SnapStartHooks()
    snapshot = (random.getstate(), np.random.get_state())

    def restore_and_draw() -> tuple[float, float]:
        random.setstate(snapshot[0])
        np.random.set_state(snapshot[1])
        hooks.run_after_restore()
        return random.random(), float(np.random.random())

    # when: two environments are restored from it
    first, second = restore_and_draw(), restore_and_draw()

    # then: they draw different numbers (without the hook both would repeat the snapshot's draw)
    random.setstate(snapshot[0])
    np.random.set_state(snapshot[1])
    unreseeded = (random.random(), float(np.random.random()))
    assert first != second
    assert first[0] != unreseeded[0] and first[1] != unreseeded[1]
    assert hooks.restores == 2


def test_after_restore_runs_reseed_then_owner_actions_in_order() -> None:
    # given: owners registering a client rebuild and a secret-cache drop
    calls: list[str] = []
    hooks = SnapStartHooks()
    hooks.after_restore(lambda: calls.append("rebuild-dynamodb-client"))
    hooks.after_restore(lambda: calls.append("drop-jwt-key-cache"))
    hooks.before_snapshot(lambda: calls.append("prime-model"))

    # when: the runtime snapshots, then restores
    hooks.run_before_snapshot()
    hooks.run_after_restore()

    # then
    assert calls == ["prime-model", "rebuild-dynamodb-client", "drop-jwt-key-cache"]


def test_install_registers_once_with_the_runtime_module() -> None:
    # given: hooks with one action of each kind
    calls: list[str] = []
    hooks = SnapStartHooks(reseed=False)
    hooks.before_snapshot(lambda: calls.append("before"))
    hooks.after_restore(lambda: calls.append("after"))
    before = list(snapshot_restore_py.get_before_snapshot())
    after = list(snapshot_restore_py.get_after_restore())

    # when: installed twice (a handler module imported twice must not double the hooks)
    hooks.install()
    hooks.install()
    try:
        new_before = snapshot_restore_py.get_before_snapshot()[len(before) :]
        new_after = snapshot_restore_py.get_after_restore()[len(after) :]
        # then: exactly one registration each, and the runtime's calls reach our actions
        assert len(new_before) == 1 and len(new_after) == 1
        _run_registered(new_before)
        _run_registered(new_after)
        assert calls == ["before", "after"]
    finally:
        del snapshot_restore_py.get_before_snapshot()[len(before) :]
        del snapshot_restore_py.get_after_restore()[len(after) :]


def test_reseed_random_changes_the_next_draw() -> None:
    # given: a fixed state
    random.seed(1234)
    state = random.getstate()
    expected = random.random()
    # when
    random.setstate(state)
    reseed_random()
    # then
    assert random.random() != expected


def test_refreshable_client_forwards_to_a_new_client_after_restore() -> None:
    # given: a client wired once at init behind a factory, refreshed by the after-restore hook
    built: list[dict[str, str]] = []

    class _Client:
        def __init__(self, generation: int) -> None:
            self.generation = generation

        def get_item(self, **kwargs: str) -> dict[str, object]:
            return {"generation": self.generation, **kwargs}

    def factory() -> _Client:
        built.append({})
        return _Client(len(built))

    client = RefreshableClient(factory)
    hooks = SnapStartHooks(reseed=False)
    hooks.after_restore(client.refresh)
    assert client.get_item(TableName="t") == {"generation": 1, "TableName": "t"}

    # when: the environment is restored
    hooks.run_after_restore()

    # then: the same object now calls through a newly built client
    assert client.get_item(TableName="t") == {"generation": 2, "TableName": "t"}
    assert len(built) == 2
