"""The Lambda build, (re)built through the Makefile when missing or stale."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

BUILD_DIR = ".aws-sam/build"


class BuildError(RuntimeError):
    """The build failed or cannot be made here."""


def ensure_build(root: Path, *, build: bool = True) -> Path:
    """The Lambda build dir under ``root``; ``make build`` runs first (make skips it when fresh).

    ``make build`` also installs CPython 3.13 and the runtime's boto3, which run the build.

    Raises:
        BuildError: make is missing or the build failed, or ``build`` is off and there is none.
    """
    build_dir = root / BUILD_DIR
    if build:
        make = shutil.which("make")
        if make is None:
            raise BuildError("make is not installed: cannot build")
        result = subprocess.run(  # noqa: S603 - fixed arguments, our own Makefile
            [make, "--no-print-directory", "-s", "-C", str(root), "build"],
            check=False,
            stdout=sys.stderr,  # stdout carries the command's own output (the response JSON)
        )
        if result.returncode != 0:
            raise BuildError(f"`make build` failed (exit {result.returncode})")
    if not (build_dir / "template.yaml").is_file():
        raise BuildError(f"no build at {build_dir}: run `make build`")
    return build_dir
