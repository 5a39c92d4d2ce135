"""Build the seed's recipe as a Lambda function: ``bench/baseline/`` plus its locked dependencies.

The dependencies come from PyPI through ``requirements/bench-baseline.lock`` (hash-pinned,
constrained by the dev lock so the libraries both stacks share are the same versions), installed
into ``build/bench-baseline/python`` for the Lambda target as the deps layer is (``pip
--target``, cp313 manylinux wheels), then byte-compiled by the Lambda runtime's Python (CPython
3.13, ``make python313``) as ``pip install`` compiles for a user of the recipe. The scikit-learn
model is trained and joblib-dumped by the baseline's own scikit-learn under that Python. A stamp
of the inputs' hashes skips the rebuild when nothing changed.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mlmoat.bench.runner import FunctionSpec, lambda_python

BASELINE_KEY = "super-secret-key-stored-in-env"
# The tags the deps layer installs for (layers/deps/Makefile): what Amazon Linux 2023 runs.
PLATFORMS = (
    "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64",
    "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
)  # fmt: skip


class BaselineBuildError(RuntimeError):
    """Installing the baseline's dependencies or training its model failed."""


def _digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _run(argv: list[str], what: str) -> None:
    # Our own argv: this interpreter, pip or the baseline's training script, with our paths.
    done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise BaselineBuildError(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def _build_into(out: Path, source: Path, lock: Path) -> None:
    deps, function = out / "python", out / "function"
    function.mkdir(parents=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            "--no-deps",
            "--require-hashes",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            "3.13",
            *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
            "--target",
            str(deps),
            "-r",
            str(lock),
        ],
        "pip install of the baseline's dependencies",
    )
    shutil.rmtree(deps / "bin", ignore_errors=True)
    shutil.copy2(source / "app.py", function / "app.py")
    # Train with the baseline's own libraries only, so the pickle matches what loads it.
    _run(
        [
            str(lambda_python()),
            "-I",
            "-S",
            "-B",
            "-c",
            "import sys, runpy; sys.path[:0] = [sys.argv[1]]; sys.argv = sys.argv[2:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')",
            str(deps),
            str(source / "train.py"),
            str(function / "model.joblib"),
        ],
        "training the baseline model",
    )
    # Byte-code as `pip install` writes it for the recipe's user (timestamp pycs, this Python).
    for tree in (deps, function):
        _run(
            [str(lambda_python()), "-I", "-m", "compileall", "-q", str(tree)],
            f"byte-compiling {tree.name}",
        )


def build_baseline(root: Path, *, runtime_site: Path, log: bool = True) -> FunctionSpec:
    """Build (or reuse) the baseline function and say how to run it (boto3 from ``runtime_site``).

    Raises:
        BaselineBuildError: the dependency install or the model training failed.
    """
    root = root.resolve()
    source = root / "bench" / "baseline"
    lock = root / "requirements" / "bench-baseline.lock"
    out = root / "build" / "bench-baseline"
    deps, function = out / "python", out / "function"
    stamp = out / ".stamp"
    interpreter_lock = root / "requirements" / "python3.13.lock"
    inputs = _digest([lock, interpreter_lock, source / "app.py", source / "train.py"])
    if not (stamp.is_file() and stamp.read_text(encoding="utf-8") == inputs):
        if log:
            print("bench: building the baseline (seed recipe) from PyPI ...", file=sys.stderr)
        # Built aside and renamed into place, so a concurrent run never sees half a build.
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".bench-baseline-", dir=out.parent))
        try:
            _build_into(staging, source, lock)
            (staging / ".stamp").write_text(inputs, encoding="utf-8")
            if out.exists():
                shutil.rmtree(out)
            staging.rename(out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return FunctionSpec(
        label="baseline",
        paths=(str(function), str(deps), str(runtime_site)),
        workdir=str(function),
        handler="app.handler",
        env={
            "BASELINE_API_KEY": BASELINE_KEY,
            "BASELINE_MODEL_PATH": str(function / "model.joblib"),
        },
        function_name="BaselineFunction",
    )


def floor_spec(root: Path, baseline: FunctionSpec) -> FunctionSpec:
    """The framework floor (``bench/floor/app.py``) on the baseline's FastAPI and Mangum."""
    return FunctionSpec(
        label="floor",
        paths=(str(root.resolve() / "bench" / "floor"), *baseline.paths[1:]),
        handler="app.handler",
        function_name="FloorFunction",
    )
