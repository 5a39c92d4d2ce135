"""The Lambda build ships CPython 3.13 byte-code for every module, the same bytes every build.

`make build` compiles the functions (as ``/var/task``) and the layers' ``python/`` dirs (as
``/opt/python``) with the interpreter of `make python313` into unchecked hash-based pycs, so a
cold start on Lambda (read-only code, no compiler cache) never compiles. The check itself runs
under that interpreter (bytecode_check.py): only it knows 3.13's magic number and source hash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mlmoat import python313

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / ".aws-sam" / "build"
CHECK = Path(__file__).with_name("bytecode_check.py")
PYTHON = python313.interpreter()

pytestmark = pytest.mark.skipif(
    not (BUILD / "template.yaml").is_file(), reason="no Lambda build: `make build` makes it"
)


def _trees(build: Path) -> list[str]:
    functions = [f"/var/task={d}" for d in sorted(build.glob("*Function"))]
    layers = [f"/opt/python={d}" for d in sorted(build.glob("*Layer/python"))]
    return functions + layers


def _check(trees: list[str]) -> dict[str, Any]:
    done = subprocess.run(  # noqa: S603 - the project's interpreter and script
        [str(PYTHON), "-I", str(CHECK), *trees], capture_output=True, text=True, check=True
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_every_module_in_the_build_has_unchecked_cp313_bytecode_and_nothing_else() -> None:
    # given the Lambda build, when its trees are checked under CPython 3.13
    trees = _trees(BUILD)
    assert len(trees) == 5, trees  # three functions, the deps and security layers
    report = _check(trees)
    # then every module has its pyc and every pyc is 3.13's, unchecked, current and mapped
    assert report["tag"] == "cpython-313"
    assert report["modules"] > 900
    assert report["problems"] == []
    assert report["pycs"] == report["modules"]


def test_the_check_finds_missing_foreign_stale_and_unmapped_bytecode(tmp_path: Path) -> None:
    # given a copy of the security layer's tree, damaged four ways
    tree = tmp_path / "python"
    shutil.copytree(BUILD / "SecurityLayer" / "python", tree)
    cache = tree / "security" / "__pycache__"
    (cache / "policy.cpython-313.pyc").unlink()
    shutil.copy(cache / "errors.cpython-313.pyc", cache / "errors.cpython-311.pyc")
    with (tree / "security" / "errors.py").open("a") as source:
        source.write("\n# edited after the build\n")
    # when it is checked (settings.py against the wrong Lambda path too)
    report = _check([f"/opt/python={tree}"])
    kinds = {(kind, Path(path).name) for kind, path in report["problems"]}
    # then each damage is reported
    assert ("missing_pyc", "policy.py") in kinds
    assert ("foreign_pyc", "errors.cpython-311.pyc") in kinds
    assert ("stale_hash", "errors.cpython-313.pyc") in kinds
    wrong = _check([f"/var/task={tree}"])
    assert {kind for kind, _ in wrong["problems"]} == {"wrong_path", "missing_pyc", "stale_hash",
                                                       "foreign_pyc"}  # fmt: skip


def test_compiling_the_same_sources_again_gives_the_same_bytes(tmp_path: Path) -> None:
    # given the security layer's sources without their byte-code
    tree = tmp_path / "python"
    shutil.copytree(
        BUILD / "SecurityLayer" / "python", tree, ignore=shutil.ignore_patterns("__pycache__")
    )
    # when they are compiled again the way `make build` compiles them
    recipe = subprocess.run(  # noqa: S603, S607
        ["make", "-s", "--no-print-directory", "-C", str(REPO), "print-compile313",
         f"DIR={tree}", "LAMBDA_PATH=/opt/python"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    subprocess.run(recipe, shell=True, check=True, env={**os.environ, "PYTHONHASHSEED": "random"})  # noqa: S602 - the Makefile's own recipe
    # then every pyc is byte for byte the one in the build
    built = sorted((BUILD / "SecurityLayer" / "python").rglob("*.pyc"))
    assert built
    for pyc in built:
        again = tree / pyc.relative_to(BUILD / "SecurityLayer" / "python")
        assert again.read_bytes() == pyc.read_bytes(), pyc.name
