"""``mlmoat keys``: create, list, show, revoke, suspend, reinstate, rotate API keys; usage;
show, suspend and reinstate JWT subjects (``mlmoat keys subject ...``).

Talks to the security table directly (no API needed): boto3 reads ``AWS_ENDPOINT_URL_DYNAMODB``,
``AWS_DEFAULT_REGION`` (or ``--region``) and credentials from the environment as usual; the table
is ``--table``, else the ``SecurityTableName`` output of the deployed stack ``--stack`` (read with
CloudFormation ``DescribeStacks``), else ``SECURITY_TABLE_NAME``, else, when
``AWS_ENDPOINT_URL_DYNAMODB`` is a loopback address, the local name every ``mlmoat local`` command
uses (``mlmoat-local-SecurityTable``). A table that does not exist is named in the error
(``table_not_found``). Defaults for the rate limit, budget and output policy come from the same
``SECURITY_*`` variables the functions read; with ``--stack``, from the stack's own parameters
(``DefaultRateLimit``, ``DefaultBudget``, ``DefaultOutputPolicy``, ``JwtIssuer``) unless the
variable is set.
Every command prints JSON on stdout; errors print ``{"error": reason}`` on stderr and exit 1.
``create`` and ``rotate`` are the only times a secret is ever shown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from mlmoat.local.template import LOCAL_STACK_NAME
from security.admin import KeyAdmin
from security.errors import SecurityError
from security.settings import Settings, SettingsError
from security.store import PrincipalStore

LOCAL_TABLE = f"{LOCAL_STACK_NAME}-SecurityTable"
_LOOPBACK = frozenset({"localhost", "::1"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmoat keys", description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--table",
        help=f"table name (default: $SECURITY_TABLE_NAME, or {LOCAL_TABLE} on a local endpoint)",
    )
    where.add_argument(
        "--stack",
        help="a deployed mlmoat stack (e.g. mlmoat-dev): its SecurityTableName output and defaults",
    )
    parser.add_argument("--region", help="AWS region (default: $AWS_DEFAULT_REGION, your profile)")
    commands = parser.add_subparsers(dest="command", required=True)

    create = commands.add_parser("create", help="create a key (prints the secret once)")
    create.add_argument("--owner", required=True)
    create.add_argument(
        "--scope",
        action="append",
        default=[],
        dest="scopes",
        help="predict:<model> or predict:*; repeatable (default predict:*)",
    )
    create.add_argument("--rate-limit", help="rows per window, e.g. 60/minute")
    create.add_argument("--budget", type=int, help="rows the key may ever predict")
    create.add_argument(
        "--output",
        dest="output_policy",
        help="label | probabilities:N[:topK][:minT] | value:N | buckets:K",
    )
    create.add_argument("--expires-in", help="e.g. 30d, 12h")
    create.add_argument(
        "--shards",
        type=int,
        default=1,
        help="count on N items (each a share of the rate and budget), for a key above "
        "~500 requests/s (docs/limits.md)",
    )

    listing = commands.add_parser("list", help="list keys")
    listing.add_argument("--owner")

    for name, help_ in (
        ("show", "show a key: status, configuration, counters, flags"),
        ("usage", "a key's usage counters"),
        ("revoke", "revoke a key for good"),
        ("suspend", "suspend a key"),
        ("reinstate", "reinstate a suspended key"),
    ):
        commands.add_parser(name, help=help_).add_argument("key_id")

    subject = commands.add_parser("subject", help="a JWT subject: show, suspend, reinstate")
    subject.add_argument("action", choices=("show", "suspend", "reinstate"))
    subject.add_argument("subject", help="the token's sub claim")
    subject.add_argument("--issuer", help="the token's iss (default: $SECURITY_JWT_ISSUER)")

    rotate = commands.add_parser("rotate", help="new secret; the old one works for --grace")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace", default="1h", help="e.g. 0s, 15m, 1h (default 1h, max 7d)")
    return parser


def is_local_endpoint(endpoint: str | None) -> bool:
    """Whether ``endpoint`` is a loopback URL (an ``mlmoat local`` DynamoDB or another)."""
    if not endpoint:
        return False
    host = urlsplit(endpoint.strip()).hostname or ""
    return host in _LOOPBACK or host.startswith("127.")


#: Stack parameters that are the functions' key defaults, and the variables they set.
STACK_PARAMETERS = {
    "DefaultRateLimit": "SECURITY_DEFAULT_RATE_LIMIT",
    "DefaultBudget": "SECURITY_DEFAULT_BUDGET",
    "DefaultOutputPolicy": "SECURITY_DEFAULT_OUTPUT",
    "JwtIssuer": "SECURITY_JWT_ISSUER",
}


class StackLookupError(RuntimeError):
    """The stack does not exist, or has no ``SecurityTableName`` output."""


def stack_environment(cloudformation: Any, stack: str) -> dict[str, str]:
    """The ``SECURITY_*`` variables a deployed stack implies: its table and key defaults.

    Raises:
        StackLookupError: no such stack, or no ``SecurityTableName`` output (not deployed yet).
    """
    try:
        (described,) = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ValidationError":
            raise StackLookupError(f"stack_not_found: {stack}") from exc
        raise
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    if "SecurityTableName" not in outputs:
        status = described.get("StackStatus", "unknown")
        raise StackLookupError(f"stack_output_missing: {stack} has no SecurityTableName ({status})")
    environment = {"SECURITY_TABLE_NAME": outputs["SecurityTableName"]}
    for parameter in described.get("Parameters", []):
        variable = STACK_PARAMETERS.get(parameter["ParameterKey"])
        if variable and parameter.get("ParameterValue"):
            environment[variable] = parameter["ParameterValue"]
    return environment


def _table_name(table: str | None, environ: dict[str, str]) -> str | None:
    if table or environ.get("SECURITY_TABLE_NAME"):
        return table or environ["SECURITY_TABLE_NAME"]
    return LOCAL_TABLE if is_local_endpoint(environ.get("AWS_ENDPOINT_URL_DYNAMODB")) else None


def _settings(table: str, defaults: dict[str, str]) -> Settings:
    environ = {**defaults, **os.environ}
    environ["SECURITY_TABLE_NAME"] = table
    environ.setdefault("SECURITY_MODEL_DIR", "models")
    return Settings.from_env(environ)


def _missing_table(client: Any, table: str) -> bool:
    # Asked only after the store failed, to tell a missing table from an unreachable endpoint.
    try:
        client.describe_table(TableName=table)
    except ClientError as exc:
        return bool(exc.response["Error"]["Code"] == "ResourceNotFoundException")
    except BotoCoreError:
        return False
    return False


def _run(admin: KeyAdmin, args: argparse.Namespace) -> Any:
    command = args.command
    if command == "create":
        return admin.create(
            owner=args.owner,
            scopes=args.scopes,
            rate_limit=args.rate_limit,
            budget=args.budget,
            output_policy=args.output_policy,
            expires_in=args.expires_in,
            shards=args.shards,
        )
    if command == "list":
        return admin.list(owner=args.owner)
    if command == "rotate":
        return admin.rotate(args.key_id, grace=args.grace)
    if command == "subject":
        act = {
            "show": admin.show_subject,
            "suspend": admin.suspend_subject,
            "reinstate": admin.reinstate_subject,
        }[args.action]
        return act(args.subject, issuer=args.issuer)
    action = {
        "show": admin.show,
        "usage": admin.usage,
        "revoke": admin.revoke,
        "suspend": admin.suspend,
        "reinstate": admin.reinstate,
    }[command]
    return action(args.key_id)


def main(argv: list[str]) -> int:
    """Run ``mlmoat keys ...``; returns the exit status."""
    args = _parser().parse_args(argv)
    defaults: dict[str, str] = {}
    if args.stack:
        try:
            cloudformation = boto3.client("cloudformation", region_name=args.region)
            defaults = stack_environment(cloudformation, args.stack)
        except StackLookupError as exc:
            print(json.dumps({"error": str(exc)}), file=sys.stderr)
            return 1
        except (NoRegionError, NoCredentialsError, ClientError) as exc:
            print(json.dumps({"error": type(exc).__name__, "detail": str(exc)}), file=sys.stderr)
            return 2
    table = args.table or defaults.get("SECURITY_TABLE_NAME")
    table = table or _table_name(None, dict(os.environ))
    if table is None:
        hint = "name the table: --stack, --table or SECURITY_TABLE_NAME"
        print(json.dumps({"error": "settings", "detail": hint}), file=sys.stderr)
        return 2
    try:
        settings = _settings(table, defaults)
    except SettingsError as exc:
        print(json.dumps({"error": "settings", "detail": str(exc)}), file=sys.stderr)
        return 2
    client = None
    try:
        client = boto3.client("dynamodb", region_name=args.region)
        store = PrincipalStore(client=client, table_name=settings.table_name)
        result = _run(KeyAdmin(store=store, settings=settings), args)
    except SecurityError as exc:
        if client is not None and _missing_table(client, table):
            where = client.meta.endpoint_url
            print(json.dumps({"error": f"table_not_found: {table} at {where}"}), file=sys.stderr)
            return 1
        print(json.dumps({"error": exc.reason}), file=sys.stderr)
        return 1
    except (NoRegionError, NoCredentialsError) as exc:
        hint = "set AWS_DEFAULT_REGION (or --region) and credentials (dummy ones if local)"
        print(json.dumps({"error": type(exc).__name__, "detail": hint}), file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
