"""The echo fixture application (fixtures/echo) laid out as a SAM build in a temp dir."""

from __future__ import annotations

import shutil
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "echo"


def lay_out_echo_app(root: Path) -> Path:
    """Copy the fixture template to ``root``; its code and layers to its build dir."""
    shutil.copy(FIXTURE / "template.yaml", root / "template.yaml")
    build = root / ".aws-sam" / "build"
    for function in ("EchoFunction", "SlowFunction", "SinkFunction"):
        shutil.copytree(FIXTURE / "src", build / function)
    shutil.copytree(FIXTURE / "layer", build / "EchoLayer")
    shutil.copytree(FIXTURE / "data", build / "DataLayer")
    shutil.copy(FIXTURE / "template.yaml", build / "template.yaml")
    return root / "template.yaml"
