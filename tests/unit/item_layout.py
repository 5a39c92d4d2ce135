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
from pathlib import Path

ATTRS = frozenset(
    """pk secret_hash prev_secret_hash prev_secret_until status owner scopes rate_count
    rate_window budget output_policy expires_at config_version rows_used requests created_at
    last_used_at flags shards kind key_id subject issuer refusals rotated_at updated_at
    flagged_at shard state state_version ttl last_refused_at""".split()
)
HELPERS = frozenset(
    """rate_attr refusal_attr writer_attr key_pk subject_pk shard_pk monitor_pk issuer_hash
    KEY_PREFIX SUBJECT_PREFIX RATE_ATTR_PREFIX REFUSAL_ATTR_PREFIX WRITER_ATTR_PREFIX
    AUTHFAIL_PREFIX AUTHFAIL_ATTR_PREFIX MONITOR_PREFIX LEGACY_PREFIX""".split()
)
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


def raw_accesses(source: str) -> int:
    """The raw item-attribute accesses in one module's source."""
    count = 0
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and _literal(node.slice):
            count += 1
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and _literal(node.args[0])
        ):
            count += 1
        elif isinstance(node, ast.Compare) and _literal(node.left):
            count += any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
        elif isinstance(node, ast.Dict):
            count += sum(1 for key in node.keys if key is not None and _literal(key))
        elif isinstance(node, ast.Name) and node.id in HELPERS:
            count += 1
        elif isinstance(node, ast.Attribute) and node.attr in HELPERS:
            count += 1
    return count


def per_module(root: Path) -> dict[str, int]:
    """``{"security/limits.py": n, ...}`` for every module of ``root/src/security`` and
    ``root/src/handlers`` with at least one raw access."""
    src = root / "src"
    counts: dict[str, int] = {}
    for package in ("security", "handlers"):
        for path in sorted((src / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            if n := raw_accesses(path.read_text()):
                counts[path.relative_to(src).as_posix()] = n
    return counts


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2]
    counts = per_module(root)
    inside = {name: n for name, n in counts.items() if name in STORE}
    outside = {name: n for name, n in counts.items() if name not in STORE}
    for title, group in (("store", inside), ("outside the store", outside)):
        print(f"{title}: {sum(group.values())}")
        for name, n in sorted(group.items(), key=lambda pair: -pair[1]):
            print(f"  {n:4d}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
