"""``python -m mlmoat.loadtest``: the load test's old entry point (``make load`` runs it).

The load test lives in ``mlmoat.load`` (``plan``, ``traffic``, ``checks``, ``cli``) and its stack in
``mlmoat.local.stack``; this module only runs ``mlmoat.load.cli.main``. (Its old re-exports are
gone: the tests import from ``mlmoat.local.stack`` and ``mlmoat.local.processes``.)
"""

from __future__ import annotations

from mlmoat.load.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
