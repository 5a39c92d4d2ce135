"""The security layer's seams, pinned: one composition root, one HTTP package, thin handlers."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
SECURITY = SRC / "security"


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (imports for type hints only)."""
    nodes: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return nodes


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports at run time."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _calls(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            names.add(f"{func.value.id}.{func.attr}")
    return names


def test_only_the_composition_root_builds_aws_clients() -> None:
    builders = {
        path.relative_to(SRC).as_posix()
        for path in _modules(SECURITY) + _modules(SRC / "handlers")
        if {"boto3.client", "boto3.resource", "boto3.Session"} & _calls(path)
        or {"botocore.config", "botocore.session", "boto3"} & set(_imports(path))
    }
    assert builders == {"security/wiring.py"}


def test_only_the_http_package_imports_fastapi() -> None:
    importers = {
        path.relative_to(SRC).as_posix()
        for path in _modules(SECURITY)
        if any(
            name == "fastapi" or name.startswith(("fastapi.", "starlette"))
            for name in _imports(path)
        )
    }
    assert importers and all(name.startswith("security/api/") for name in importers), importers


def test_handlers_are_thin_and_modules_small() -> None:
    handlers = {p.name: len(p.read_text().splitlines()) for p in _modules(SRC / "handlers")}
    assert set(handlers) >= {"predict.py", "admin.py", "monitor.py"}
    assert all(lines < 30 for lines in handlers.values()), handlers
    large = {
        p.relative_to(SRC).as_posix(): n
        for p in _modules(SECURITY)
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert not large, large


def test_the_handlers_wire_through_the_composition_root() -> None:
    for name in ("predict.py", "admin.py", "monitor.py"):
        imports = _imports(SRC / "handlers" / name)
        assert "security.wiring" in imports, name
        assert "boto3" not in imports, name
