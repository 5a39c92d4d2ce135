"""docs/faults.md and docs/threat-model.md name only tests that exist.

Both documents map a threat or a fault to "the test that proves it". A renamed or deleted test
would leave the claim unproven while the document still reads well, so every ``tests/...py``
path and every ``::test_name`` they cite is checked here (a ``::name`` without a path refers to
the last path cited before it in the same table cell).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = ["docs/faults.md", "docs/threat-model.md"]
_REFERENCE = re.compile(r"(tests/[\w/]+\.py)?(::(test_\w+))?")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


def _references(text: str) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    for line in text.splitlines():
        for cell in line.split("|"):
            current: str | None = None
            for match in re.finditer(r"tests/[\w/]+\.py|::test_\w+", cell):
                token = match.group()
                if token.startswith("tests/"):
                    current = token
                    found.append((current, None))
                elif current is not None:
                    found.append((current, token[2:]))
    return found


@pytest.mark.parametrize("doc", DOCS)
def test_every_cited_test_exists(doc: str) -> None:
    references = _references((REPO / doc).read_text())
    assert len(references) >= 20, f"{doc} cites too few tests to be the map it claims to be"
    missing = []
    for path, name in references:
        file = REPO / path
        if not file.is_file():
            missing.append(path)
        elif name is not None and name not in _test_names(file):
            missing.append(f"{path}::{name}")
    assert not missing, f"{doc} cites tests that do not exist: {sorted(set(missing))}"
