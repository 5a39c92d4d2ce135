"""The outside test's regression suite (tests/findings.py) names tests that exist."""

from __future__ import annotations

import ast
from pathlib import Path

from findings import FINDINGS, node_ids

REPO = Path(__file__).resolve().parents[2]


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


def test_every_finding_names_at_least_one_test_that_exists() -> None:
    for finding, (summary, tests) in FINDINGS.items():
        assert summary and tests, finding
        for node in tests:
            file, _, name = node.partition("::")
            path = REPO / file
            assert path.is_file(), node
            assert name in _test_functions(path), node


def test_the_node_ids_are_every_test_once() -> None:
    ids = node_ids()
    assert len(ids) == len(set(ids))
    assert set(ids) == {node for _, tests in FINDINGS.values() for node in tests}
