"""``mlmoat config``: get, set and unset the runtime defences (``security.runtime_config``).

``mlmoat config set squeeze_policy refuse`` writes the stack's runtime document (one SSM String
parameter, ``RuntimeConfigParameter`` in template.yaml); every PredictFunction and
MonitorFunction instance follows within its cache age (``RuntimeConfigMaxAge``, 30 s by
default), with no deployment and no restart. ``--model NAME`` sets or unsets a value for one
model only. ``unset KEY`` returns to the deploy-time value; ``unset`` alone clears every runtime
value (the document becomes ``{}``). Values are checked before anything is written, with the
same parser the functions use, so this command never writes a document they would refuse.

The parameter is ``--parameter``, else ``SECURITY_RUNTIME_CONFIG_PARAMETER``, else the
``RuntimeConfigParameter`` resource of ``--stack`` (CloudFormation), else, when
``AWS_ENDPOINT_URL_SSM`` (or ``AWS_ENDPOINT_URL_DYNAMODB``) is a loopback address, the local
stack's name from template.yaml (``/mlmoat-local/runtime-config``, which ``mlmoat local
bootstrap`` creates). Every command prints JSON on stdout; errors print ``{"error": ...}`` on
stderr. Two operators writing at once: the last write wins (Parameter Store has no conditional
put); ``get`` shows the version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from mlmoat.keys_cli import is_local_endpoint
from security.runtime_config import RUNTIME_CHOICES, RuntimeConfig, RuntimeConfigError

PARAMETER_RESOURCE = "RuntimeConfigParameter"


class ConfigCommandError(RuntimeError):
    """The command cannot go on; the message is safe to print (no secret, no value)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmoat config", description=__doc__.split("\n")[0])
    parser.add_argument("--parameter", help="the SSM parameter (default: see `mlmoat config -h`)")
    parser.add_argument("--stack", help="a deployed stack whose RuntimeConfigParameter to use")
    parser.add_argument("--template", type=Path, help="template.yaml (local stack only)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("get", help="print the runtime document and its version")
    setting = commands.add_parser("set", help="set a runtime value")
    setting.add_argument("key", choices=sorted(RUNTIME_CHOICES))
    setting.add_argument("value")
    setting.add_argument("--model", help="for this model only")
    unsetting = commands.add_parser("unset", help="back to the deploy-time value")
    unsetting.add_argument("key", nargs="?", choices=sorted(RUNTIME_CHOICES))
    unsetting.add_argument("--model", help="for this model only")
    return parser


def _local_endpoint(environ: dict[str, str]) -> str | None:
    for name in ("AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL_DYNAMODB"):
        if is_local_endpoint(environ.get(name)):
            return environ[name].strip().rstrip("/")
    return None


def _ssm_client(environ: dict[str, str]) -> Any:
    # boto3 reads AWS_ENDPOINT_URL_SSM itself; a local stack exported only the DynamoDB one.
    endpoint = None
    if not environ.get("AWS_ENDPOINT_URL_SSM"):
        endpoint = _local_endpoint(environ)
    return boto3.client("ssm", endpoint_url=endpoint)


def parameter_name(args: argparse.Namespace, environ: dict[str, str]) -> str:
    """The parameter this invocation works on.

    Raises:
        ConfigCommandError: none can be determined.
    """
    if args.parameter:
        return str(args.parameter)
    if environ.get("SECURITY_RUNTIME_CONFIG_PARAMETER"):
        return environ["SECURITY_RUNTIME_CONFIG_PARAMETER"]
    if args.stack:
        cloudformation = boto3.client("cloudformation")
        try:
            found = cloudformation.describe_stack_resource(
                StackName=args.stack, LogicalResourceId=PARAMETER_RESOURCE
            )
        except (ClientError, BotoCoreError) as exc:
            raise ConfigCommandError(
                f"stack {args.stack}: no {PARAMETER_RESOURCE} ({type(exc).__name__})"
            ) from exc
        return str(found["StackResourceDetail"]["PhysicalResourceId"])
    if _local_endpoint(environ) is not None:
        from mlmoat.local.template import Template, TemplateError, find_template

        try:
            template = Template(args.template or find_template())
            return template.parameter_definitions()[PARAMETER_RESOURCE]["Name"]
        except (TemplateError, KeyError) as exc:
            raise ConfigCommandError(f"template.yaml declares no {PARAMETER_RESOURCE}") from exc
    raise ConfigCommandError(
        "name the parameter: --parameter, SECURITY_RUNTIME_CONFIG_PARAMETER or --stack"
    )


def _read(client: Any, name: str) -> tuple[str, int | None]:
    try:
        parameter = client.get_parameter(Name=name)["Parameter"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return "", None
        raise
    return str(parameter.get("Value", "")), int(parameter["Version"])


def _write(client: Any, name: str, config: RuntimeConfig) -> int:
    answer = client.put_parameter(Name=name, Value=config.to_json(), Type="String", Overwrite=True)
    return int(answer["Version"])


def _document(config: RuntimeConfig) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(config.to_json())
    return loaded


def run(args: argparse.Namespace, client: Any, name: str) -> tuple[int, dict[str, Any]]:
    """Run one command; returns the exit status and the JSON to print.

    Raises:
        ConfigCommandError: the stored document is malformed (set/get), or a value is refused.
        botocore.exceptions.ClientError: SSM refused a call.
    """
    text, version = _read(client, name)
    try:
        current = RuntimeConfig.parse(text)
    except RuntimeConfigError as exc:
        if args.command == "unset" and args.key is None and args.model is None:
            current = RuntimeConfig()
        else:
            # The functions refuse requests (503) until it is fixed; `unset` clears it.
            status = {"parameter": name, "version": version, "valid": False, "error": str(exc)}
            if args.command == "get":
                return 1, status
            raise ConfigCommandError(
                f"{name} holds a malformed document ({exc}): `mlmoat config unset` clears it"
            ) from exc
    if args.command == "get":
        return 0, {"parameter": name, "version": version, "valid": True,
                   "document": _document(current)}  # fmt: skip
    try:
        if args.command == "set":
            updated = current.with_value(args.key, args.value, model=args.model)
        else:
            updated = current.without(args.key, model=args.model)
    except RuntimeConfigError as exc:
        raise ConfigCommandError(str(exc)) from exc
    new_version = _write(client, name, updated)
    return 0, {"parameter": name, "version": new_version, "valid": True,
               "document": _document(updated)}  # fmt: skip


def main(argv: list[str]) -> int:
    """Run ``mlmoat config ...``; returns the exit status."""
    args = _parser().parse_args(argv)
    environ = dict(os.environ)
    try:
        name = parameter_name(args, environ)
        status, output = run(args, _ssm_client(environ), name)
    except ConfigCommandError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 2
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "ClientError")
        print(json.dumps({"error": f"ssm: {code}"}), file=sys.stderr)
        return 1
    except BotoCoreError as exc:
        print(json.dumps({"error": f"ssm: {type(exc).__name__}"}), file=sys.stderr)
        return 1
    print(json.dumps(output, indent=2, sort_keys=True))
    return status
