"""Lambda SnapStart: what an execution environment must redo after it is restored from a snapshot.

With SnapStart (``SnapStart: ApplyOn: PublishedVersions``, python3.12+), Lambda runs the init
phase once per published version, snapshots the memory, and restores every new execution
environment from that snapshot. Whatever init computed is then shared by all of them:

* **random state**: ``random``'s Mersenne Twister and numpy's legacy global generator are
  seeded at import, so restored environments would draw identical sequences. Anything
  security-relevant here uses ``secrets``/``os.urandom`` (read at call time, unaffected), but
  any other draw (e.g. smoothing noise, sampling) is reseeded after restore.
* **clients and connections**: sockets opened during init are dead after a restore, and the
  credentials a client resolved at init may have expired: the owner rebuilds its clients.
* **cached secrets and configuration**: a JWT verification key or a cached key configuration
  fetched at init may be arbitrarily old when the snapshot is restored: the owner drops them.

``RefreshableClient`` lets the handler hand a client to ``build_app`` once and still rebuild it
after a restore: it forwards every attribute to the current client, and ``refresh`` replaces it
from its factory (so ``store``, ``extraction`` and ``tokens`` need no setter).

``SnapStartHooks`` collects those actions from the code that owns each object and registers
them, once, with the runtime's ``snapshot_restore_py`` (provided by the Lambda runtime for
python3.12+, and on PyPI as ``snapshot-restore-py`` for ``mlmoat local`` and the tests). A
restore hook failing is fatal by design: Lambda reports the restore as failed rather than
serving from an environment that kept a dead client or a stale secret.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any

import snapshot_restore_py  # type: ignore[import-untyped]  # ships no py.typed

Action = Callable[[], None]


def reseed_random() -> None:
    """Reseed ``random`` and (if imported) numpy's legacy global generator from ``os.urandom``."""
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


class SnapStartHooks:
    """Before-snapshot and after-restore actions for one function, registered with the runtime."""

    def __init__(self, *, reseed: bool = True) -> None:
        """Start with ``reseed_random`` as the first after-restore action unless not ``reseed``."""
        self._before: list[Action] = []
        self._after: list[Action] = [reseed_random] if reseed else []
        self._installed = False
        self.restores = 0

    def before_snapshot(self, action: Action) -> Action:
        """Run ``action`` just before the snapshot (e.g. prime the model, close sockets)."""
        self._before.append(action)
        return action

    def after_restore(self, action: Action) -> Action:
        """Run ``action`` after every restore (e.g. rebuild a client, drop a cached secret)."""
        self._after.append(action)
        return action

    def run_before_snapshot(self) -> None:
        """Run the before-snapshot actions in registration order (the runtime calls this)."""
        for action in self._before:
            action()

    def run_after_restore(self) -> None:
        """Run the after-restore actions in registration order (the runtime calls this)."""
        for action in self._after:
            action()
        self.restores += 1

    def install(self) -> None:
        """Register with ``snapshot_restore_py``, once (without SnapStart nothing calls them)."""
        if self._installed:
            return
        snapshot_restore_py.register_before_snapshot(self.run_before_snapshot)
        snapshot_restore_py.register_after_restore(self.run_after_restore)
        self._installed = True


class RefreshableClient:
    """A boto3 client behind its factory: ``refresh()`` replaces it (e.g. after a restore)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        """Build the first client now, at init, so the snapshot already holds one."""
        self._factory = factory
        self._client = factory()

    def refresh(self) -> None:
        """Build a new client (fresh connection pool, credentials resolved again)."""
        self._client = self._factory()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)
