"""Counting raw DynamoDB item-attribute accesses per module (``tests/unit/test_item_layout.py``).

A *raw access* is one of: a string-keyed read of an item attribute (``x["status"]``,
``x.get("rows_used")``, ``"shards" in x``); an item attribute written as a dict-literal key (an
item built by hand); a use of a layout helper (``rate_attr``, ``key_pk``, ``*_PREFIX``, ...).
The attribute names are the store's item layout (``security.store``'s docstring). Run it on any
tree: ``python tests/unit/item_layout.py [ROOT]`` prints the per-module counts for
``ROOT/src/security`` and ``ROOT/src/handlers``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from pathlib import Path

_ATTR_TEXT = """pk secret_hash prev_secret_hash prev_secret_until status owner scopes rate_count
    rate_window budget output_policy expires_at config_version rows_used requests created_at
    last_used_at flags shards kind key_id subject issuer refusals rotated_at updated_at
    flagged_at shard state state_version ttl last_refused_at"""
ATTRS = frozenset(_ATTR_TEXT.split())
_HELPER_TEXT = """rate_attr refusal_attr writer_attr KEY_PREFIX SUBJECT_PREFIX RATE_ATTR_PREFIX
    REFUSAL_ATTR_PREFIX WRITER_ATTR_PREFIX AUTHFAIL_PREFIX AUTHFAIL_ATTR_PREFIX MONITOR_PREFIX
    LEGACY_PREFIX"""
#: Attribute names and prefixes.
HELPERS = frozenset(_HELPER_TEXT.split())
#: Builders of principal ids (partition keys), counted apart: an id is opaque to its users.
ID_BUILDERS = frozenset(["key_pk", "subject_pk", "shard_pk", "monitor_pk", "issuer_hash"])
#: The store: the modules that own the item layout.
STORE = frozenset(
    {
        "security/store.py",
        "security/dynamo.py",
        "security/records.py",
        "security/admin_store.py",
        "security/counters.py",
        "security/monitor_state.py",
        "security/writers.py",
        "security/itemviews.py",
        "security/charging.py",
    }
)


def _literal(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in ATTRS:
        return node.value
    return None


def _layout_names(tree: ast.AST, *, store: bool) -> frozenset[str]:
    """The layout helpers a module can use: all of them in a store module, elsewhere those it
    imports from ``security.*`` (so ``keys.KEY_PREFIX``, the API key's text prefix, is not one)."""
    if store:
        return HELPERS | ID_BUILDERS
    found = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("security.")
        and node.module != "security.keys"
        for alias in node.names
        if alias.name in HELPERS | ID_BUILDERS
    }
    return frozenset(found)


def _access(node: ast.AST, helpers: frozenset[str]) -> int:
    if isinstance(node, ast.Subscript):
        return 1 if _literal(node.slice) else 0
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return 1 if node.func.attr == "get" and node.args and _literal(node.args[0]) else 0
    if isinstance(node, ast.Compare) and _literal(node.left):
        return 1 if any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) else 0
    if isinstance(node, ast.Dict):  # an item built by hand (it has a "pk"), not a JSON view
        keys = [_literal(key) for key in node.keys if key is not None]
        return sum(1 for key in keys if key) if "pk" in keys else 0
    if isinstance(node, ast.Name):
        return 1 if node.id in helpers else 0
    if isinstance(node, ast.Attribute):
        return 1 if node.attr in helpers else 0
    return 0


def raw_accesses(source: str, *, store: bool = False) -> int:
    """The raw item-attribute accesses in one module's source (id builders not counted)."""
    tree = ast.parse(source)
    helpers = _layout_names(tree, store=store) - ID_BUILDERS
    return sum(_access(node, helpers) for node in ast.walk(tree))


def id_builds(source: str, *, store: bool = False) -> int:
    """The uses of principal-id builders (``key_pk``, ...) in one module's source."""
    tree = ast.parse(source)
    builders = _layout_names(tree, store=store) & ID_BUILDERS
    return sum(
        1
        for node in ast.walk(tree)
        if (isinstance(node, ast.Name) and node.id in builders)
        or (isinstance(node, ast.Attribute) and node.attr in builders)
    )


def per_module(root: Path, *, count: Callable[..., int] = raw_accesses) -> dict[str, int]:
    """``{"security/limits.py": n, ...}`` for every module of ``root/src/security`` and
    ``root/src/handlers`` with at least one raw access."""
    src = root / "src"
    counts: dict[str, int] = {}
    for package in ("security", "handlers"):
        for path in sorted((src / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            name = path.relative_to(src).as_posix()
            if n := count(path.read_text(), store=name in STORE):
                counts[name] = n
    return counts


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2]
    for what, count in (("raw attribute accesses", raw_accesses), ("id builders", id_builds)):
        counts = per_module(root, count=count)
        inside = {name: n for name, n in counts.items() if name in STORE}
        outside = {name: n for name, n in counts.items() if name not in STORE}
        for title, group in (("store", inside), ("outside the store", outside)):
            print(f"{what}, {title}: {sum(group.values())}")
            for name, n in sorted(group.items(), key=lambda pair: -pair[1]):
                print(f"  {n:4d}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
