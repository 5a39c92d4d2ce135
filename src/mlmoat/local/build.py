"""The host variant of the SAM build, (re)built through the Makefile when missing or stale."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HOST_BUILD_DIR = ".aws-sam/build-host"


class BuildError(RuntimeError):
    """The host build failed or cannot be made here."""


def ensure_host_build(root: Path, *, build: bool = True) -> Path:
    """The host build dir under ``root``; ``make build-host`` runs first (make skips it when fresh).

    Raises:
        BuildError: make is missing or the build failed, or ``build`` is off and there is none.
    """
    build_dir = root / HOST_BUILD_DIR
    if build:
        make = shutil.which("make")
        if make is None:
            raise BuildError("make is not installed: cannot build the host variant")
        result = subprocess.run(  # noqa: S603 - fixed arguments, our own Makefile
            [make, "--no-print-directory", "-s", "-C", str(root), "build-host"],
            check=False,
            stdout=sys.stderr,  # stdout carries the command's own output (the response JSON)
        )
        if result.returncode != 0:
            raise BuildError(f"`make build-host` failed (exit {result.returncode})")
    if not (build_dir / "template.yaml").is_file():
        raise BuildError(f"no host build at {build_dir}: run `make build-host`")
    return build_dir
