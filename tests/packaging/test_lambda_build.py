"""The Lambda build (`make build`), checked statically: wheels, layout, byte-code and size.

Every compiled extension must come from a wheel tagged for CPython 3.13 (or a stable-ABI wheel
for an older 3.x) and a manylinux x86_64 platform Amazon Linux 2023 runs (glibc <= 2.34); each
function plus its layers must stay under the size goal (Lambda's hard limit is 250 MB unzipped).
Every module ships its CPython 3.13 byte-code (tests/packaging/test_bytecode.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlmoat.local.template import Template

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / ".aws-sam" / "build"
SIZE_GOAL_MB = 180
AL2023_GLIBC = (2, 34)

pytestmark = pytest.mark.skipif(
    not (BUILD / "template.yaml").is_file(), reason="no Lambda build: `make build` makes it"
)


def _wheel_tags(dist_info: Path) -> list[str]:
    return [
        line.split(":", 1)[1].strip()
        for line in (dist_info / "WHEEL").read_text().splitlines()
        if line.startswith("Tag:")
    ]


def _tag_fits_lambda(tag: str) -> bool:
    python, abi, platform = tag.split("-")
    if python == "cp313" and abi == "cp313":
        python_ok = True
    else:
        found = re.fullmatch(r"cp3(\d+)", python)
        python_ok = abi == "abi3" and found is not None and int(found[1]) <= 13
    if platform in ("manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"):
        return python_ok
    glibc = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", platform)
    return python_ok and glibc is not None and (int(glibc[1]), int(glibc[2])) <= AL2023_GLIBC


def _owners(site: Path) -> dict[str, Path]:
    """Installed file (relative to ``site``) -> the .dist-info that installed it (from RECORD)."""
    owners: dict[str, Path] = {}
    for dist_info in site.glob("*.dist-info"):
        for line in (dist_info / "RECORD").read_text().splitlines():
            path = line.rsplit(",", 2)[0]
            if path:
                owners[path] = dist_info
    return owners


def test_every_compiled_file_comes_from_a_cp313_manylinux_x86_64_wheel() -> None:
    site = BUILD / "DepsLayer" / "python"
    owners = _owners(site)
    compiled = sorted(
        p for p in site.rglob("*") if p.is_file() and re.search(r"\.so(\.|$)", p.name)
    )
    assert len(compiled) > 10, "numpy, onnxruntime, pydantic-core and cryptography ship .so files"
    for path in compiled:
        relative = path.relative_to(site).as_posix()
        assert relative in owners, f"{relative}: no wheel RECORD lists it"
        tags = _wheel_tags(owners[relative])
        assert any(_tag_fits_lambda(tag) for tag in tags), f"{relative}: wheel tags {tags}"
        if path.name.endswith(".so") and "cpython-" in path.name:
            assert "cpython-313-x86_64-linux-gnu" in path.name, relative


def test_the_build_is_pruned() -> None:
    site = BUILD / "DepsLayer" / "python"
    for pruned in ("onnxruntime/transformers", "onnxruntime/quantization", "onnxruntime/tools",
                   "numpy/f2py", "numpy/_core/tests"):  # fmt: skip
        assert not (site / pruned).exists(), pruned
    assert (site / "onnxruntime" / "capi").is_dir(), "pruning must keep the inference runtime"


def test_layers_carry_the_security_package_and_every_model() -> None:
    security = BUILD / "SecurityLayer" / "python" / "security"
    source = REPO / "src" / "security"
    # rglob: subpackages (security/extraction/) ship too
    shipped = {p.relative_to(security).as_posix() for p in security.rglob("*.py")}
    assert shipped == {p.relative_to(source).as_posix() for p in source.rglob("*.py")}
    assert "extraction/__init__.py" in shipped
    models = BUILD / "ModelLayer" / "models"
    trained = {p.parent.name for p in (REPO / "models").glob("*/manifest.json")}
    assert trained, "mlmoat train has produced models/<name>/"
    for name in trained:
        for source in (REPO / "models" / name).iterdir():
            if source.is_file() and not source.name.startswith("."):
                shipped_file = models / name / source.name
                assert shipped_file.read_bytes() == source.read_bytes(), f"{name}/{source.name}"


def test_each_function_has_its_handler_module() -> None:
    template = Template(REPO / "template.yaml")
    for name, spec in template.functions().items():
        module = spec.handler.rpartition(".")[0]
        assert (BUILD / name / f"{module}.py").is_file(), f"{name}: {spec.handler}"


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def test_each_function_with_its_layers_is_under_the_size_goal() -> None:
    template = Template(REPO / "template.yaml")
    sizes = {}
    for name, spec in template.functions().items():
        total = _size_mb(BUILD / name) + sum(_size_mb(BUILD / layer) for layer in spec.layers)
        sizes[name] = total
        print(f"\n{name} + {', '.join(spec.layers)}: {total:.1f} MB unzipped (goal {SIZE_GOAL_MB})")
        assert total < SIZE_GOAL_MB, f"{name}: {total:.1f} MB"
    assert sizes
