"""Run by CPython 3.13 (the build's interpreter): check the byte-code of every module in trees.

``python3.13 -I bytecode_check.py LAMBDA_PATH=DIR ...`` prints a JSON report: how many modules
and .pyc files were seen, and every problem as ``[kind, path]``: a module with no
``__pycache__/<name>.cpython-313.pyc``, a .pyc with no module or for another interpreter (its
name or its magic number), one that is not an unchecked hash-based pyc, one whose source hash is
not the module's, one whose code names a path other than the module's on Lambda.
"""

from __future__ import annotations

import _imp
import importlib.util
import json
import marshal
import sys
from pathlib import Path

TAG = sys.implementation.cache_tag  # cpython-313
UNCHECKED_HASH = 0b01  # hash-based, check_source off (PEP 552)


def check(lambda_path: str, root: Path, report: dict[str, object]) -> None:
    problems: list[list[str]] = report["problems"]  # type: ignore[assignment]
    sources = {p for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    for pyc in root.rglob("*.pyc"):
        report["pycs"] = int(report["pycs"]) + 1  # type: ignore[call-overload]
        name = pyc.name.rsplit(".", 2)
        source = pyc.parent.parent / f"{name[0]}.py"
        if pyc.parent.name != "__pycache__" or len(name) != 3 or name[1] != TAG:
            problems.append(["foreign_pyc", str(pyc)])
            continue
        if source not in sources:
            problems.append(["orphan_pyc", str(pyc)])
            continue
        data = pyc.read_bytes()
        if data[:4] != importlib.util.MAGIC_NUMBER:
            problems.append(["wrong_magic", str(pyc)])
            continue
        if int.from_bytes(data[4:8], "little") != UNCHECKED_HASH:
            problems.append(["not_unchecked_hash", str(pyc)])
            continue
        if data[8:16] != _imp.source_hash(importlib.util._RAW_MAGIC_NUMBER, source.read_bytes()):  # type: ignore[attr-defined]
            problems.append(["stale_hash", str(pyc)])
            continue
        expected = f"{lambda_path}/{source.relative_to(root).as_posix()}"
        if marshal.loads(data[16:]).co_filename != expected:
            problems.append(["wrong_path", str(pyc)])
    for source in sources:
        report["modules"] = int(report["modules"]) + 1  # type: ignore[call-overload]
        if not (source.parent / "__pycache__" / f"{source.stem}.{TAG}.pyc").is_file():
            problems.append(["missing_pyc", str(source)])


def main(argv: list[str]) -> int:
    report: dict[str, object] = {"tag": TAG, "modules": 0, "pycs": 0, "problems": []}
    for arg in argv:
        lambda_path, _, directory = arg.partition("=")
        check(lambda_path, Path(directory), report)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
