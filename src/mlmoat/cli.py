"""The ``mlmoat`` command: dispatches to one module per sub-command.

Each sub-command module exposes ``main(argv: list[str]) -> int`` and owns its own argument
parser, so the tooling stays one concern per module and importing the CLI stays cheap.
"""

from __future__ import annotations

import importlib
import sys

_COMMANDS: dict[str, tuple[str, str]] = {
    "local": ("mlmoat.local.cli", "run locally with no AWS account and no Docker"),
    "keys": ("mlmoat.keys_cli", "create, list, show, revoke, rotate API keys; usage"),
    "config": ("mlmoat.config_cli", "get, set, unset the runtime defences (squeeze, extraction)"),
    "models": (
        "mlmoat.models_cli",
        "import a fitted model and its data; check, list, show, remove",
    ),
    "train": ("mlmoat.train", "train the models and export ONNX artifacts with manifests"),
    "openapi": ("mlmoat.openapi", "print the API's OpenAPI document"),
    "audit": ("mlmoat.audit_cli", "summarise audit records per principal"),
    "redteam": ("mlmoat.redteam.cli", "run the attacks through the real stack and write a report"),
    "bench": ("mlmoat.bench.cli", "benchmark mlmoat against the seed's recipe"),
}


def _usage() -> str:
    lines = ["usage: mlmoat COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in _COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the ``mlmoat`` command line."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in _COMMANDS:
        print(f"mlmoat: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(_COMMANDS[command][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
