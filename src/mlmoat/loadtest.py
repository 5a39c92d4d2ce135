"""``python -m mlmoat.loadtest``: the load test's old entry point (``make load`` runs it).

The load test lives in ``mlmoat.load`` (``plan``, ``traffic``, ``checks``, ``cli``) and its stack in
``mlmoat.local.stack``; this module only runs ``mlmoat.load.cli.main`` and keeps the old names
importable for callers that have not moved yet.
"""

from __future__ import annotations

from mlmoat.load.checks import Report, check_run
from mlmoat.load.cli import format_summary, main, run
from mlmoat.load.plan import (
    JWT_AUDIENCE,
    JWT_ISSUER,
    JWT_PARAMETER,
    KeyPlan,
    LoadConfig,
    LoadKey,
    jwt_subjects,
    plan_keys,
)
from mlmoat.load.traffic import Sample, drive, feature_envelope, warm_up
from mlmoat.local.processes import free_port, stop_process, wait_for_port
from mlmoat.local.stack import (
    SECURITY_TABLE,
    LocalStack,
    build,
    create_key,
    dynamodb_client,
    dynamodb_command,
    local_env,
    mlmoat_command,
    read_audit,
    read_items,
    read_key_items,
    send,
    table_name,
)

__all__ = [
    "JWT_AUDIENCE",
    "JWT_ISSUER",
    "JWT_PARAMETER",
    "SECURITY_TABLE",
    "KeyPlan",
    "LoadConfig",
    "LoadKey",
    "LocalStack",
    "Report",
    "Sample",
    "build",
    "check_run",
    "create_key",
    "drive",
    "dynamodb_client",
    "dynamodb_command",
    "feature_envelope",
    "format_summary",
    "free_port",
    "jwt_subjects",
    "local_env",
    "main",
    "mlmoat_command",
    "plan_keys",
    "read_audit",
    "read_items",
    "read_key_items",
    "run",
    "send",
    "stop_process",
    "table_name",
    "wait_for_port",
    "warm_up",
]

if __name__ == "__main__":
    raise SystemExit(main())
