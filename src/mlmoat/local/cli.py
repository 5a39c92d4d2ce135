"""``mlmoat local``: dynamodb, bootstrap, invoke, start-api, up (see the package docstring)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from mlmoat.local.awsenv import (
    DEFAULT_PORT,
    LocalEnvironmentError,
    endpoint_from,
    exports,
    region_from,
)
from mlmoat.local.bootstrap import bootstrap
from mlmoat.local.build import BuildError, ensure_build
from mlmoat.local.template import Template, TemplateError, find_template
from mlmoat.local.workers import FunctionLayout, FunctionStartError, Worker, load_env_vars_file


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmoat local", description=__doc__)
    parser.add_argument("--template", type=Path, help="template.yaml (default: the nearest one)")
    sub = parser.add_subparsers(dest="command", required=True)

    dynamodb = sub.add_parser(
        "dynamodb", help="run an embedded DynamoDB (moto server) with the template's tables"
    )
    dynamodb.add_argument("--port", type=int, default=DEFAULT_PORT)
    dynamodb.add_argument("--host", default="127.0.0.1")

    sub.add_parser(
        "bootstrap", help="create the template's tables and queues at AWS_ENDPOINT_URL_DYNAMODB"
    )

    invoke = sub.add_parser(
        "invoke",
        help="invoke a function once from the Lambda build (CPython 3.13), like `sam local invoke`",
    )
    invoke.add_argument("function", help="the function's logical id, e.g. PredictFunction")
    invoke.add_argument(
        "-e", "--event", type=Path, required=True, help="event JSON file ('-' for stdin)"
    )
    _add_run_options(invoke)

    api = sub.add_parser(
        "start-api", help="serve the template's routes, like `sam local start-api`"
    )
    api.add_argument("--port", type=int, default=3000)
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--workers", type=int, default=1, help="warm instances per function")
    _add_run_options(api)

    up = sub.add_parser(
        "up", help="embedded DynamoDB + bootstrap + demo key + API (what `make local` runs)"
    )
    up.add_argument("--port", type=int, default=3000)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--dynamodb-port", type=int, default=0, help="default: a free port")
    up.add_argument("--workers", type=int, default=1)
    _add_run_options(up)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--env-vars", type=Path, help="SAM-style env vars JSON file")
    parser.add_argument(
        "--parameter-overrides",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="template parameters",
    )
    parser.add_argument(
        "--no-build", action="store_true", help="use the existing Lambda build as it is"
    )


def _template(args: argparse.Namespace, *, endpoint: str | None = None) -> Template:
    path = args.template or find_template()
    overrides = dict(item.split("=", 1) for item in getattr(args, "parameter_overrides", []) or [])
    if endpoint is None:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ.get(
            "AWS_ENDPOINT_URL_DYNAMODB"
        )
    return Template(
        path, endpoint=endpoint, region=region_from(os.environ), parameter_overrides=overrides
    )


def _layouts(
    template: Template, args: argparse.Namespace, functions: list[str]
) -> dict[str, FunctionLayout]:
    build_dir = ensure_build(template.root, build=not args.no_build)
    overrides = load_env_vars_file(args.env_vars) if args.env_vars else {}
    return {
        name: FunctionLayout(template, build_dir, name, env_overrides=overrides)
        for name in functions
    }


def _print_exports(values: dict[str, str]) -> None:
    for name, value in values.items():
        print(f"export {name}={value}")
    sys.stdout.flush()


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Short waits keep the main thread responsive to SIGINT/SIGTERM.
    with contextlib.suppress(KeyboardInterrupt):
        while not stop.wait(0.5):
            pass


def cmd_dynamodb(args: argparse.Namespace) -> int:
    """Serve an embedded DynamoDB with the template's tables until interrupted."""
    from mlmoat.local.server import EmbeddedDynamoDB

    with EmbeddedDynamoDB(host=args.host, port=args.port) as server:
        template = _template(args, endpoint=server.endpoint)
        report = bootstrap(template)
        print(
            f"# embedded DynamoDB (moto) at {server.endpoint}; "
            f"tables: {', '.join(report.created_tables + report.existing_tables)}"
        )
        _print_exports(exports(server.endpoint, template.region))
        print("# Ctrl-C to stop", flush=True)
        _wait_for_interrupt()
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    """Create the template's tables and queues at the configured endpoint (idempotent)."""
    endpoint = endpoint_from(os.environ)
    sqs_endpoint = (os.environ.get("AWS_ENDPOINT_URL_SQS") or endpoint).rstrip("/")
    template = _template(args, endpoint=sqs_endpoint)
    ssm_endpoint = (os.environ.get("AWS_ENDPOINT_URL_SSM") or endpoint).rstrip("/")
    report = bootstrap(template, dynamodb_endpoint=endpoint, ssm_endpoint=ssm_endpoint)
    print(
        json.dumps(
            {
                "endpoint": endpoint,
                "sqs_endpoint": sqs_endpoint,
                "created": report.created_tables,
                "existing": report.existing_tables,
                "queues": report.queues,
                "parameters": report.parameters,
            },
            indent=2,
        )
    )
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    """Invoke one function once; the response JSON on stdout, the REPORT line on stderr."""
    template = _template(args)
    layout = _layouts(template, args, [args.function])[args.function]
    text = sys.stdin.read() if str(args.event) == "-" else args.event.read_text(encoding="utf-8")
    event: Any = json.loads(text)
    worker = Worker(layout)
    try:
        invocation = worker.invoke(event, str(uuid.uuid4()))
    except FunctionStartError as exc:
        print(json.dumps(exc.error), flush=True)
        return 1
    finally:
        worker.stop()
    print(
        json.dumps(invocation.response if invocation.error is None else invocation.error),
        flush=True,
    )
    print(invocation.report_line(), file=sys.stderr, flush=True)
    return 0 if invocation.error is None else 1


def _start_api(template: Template, args: argparse.Namespace) -> Any:
    from mlmoat.local.api import LocalApi, QueuePoller

    functions = list(template.functions())
    layouts = _layouts(template, args, functions)
    served = {
        name: layout for name, layout in layouts.items() if layout.handler_module_file().is_file()
    }
    for name in sorted(set(layouts) - set(served)):
        print(
            f"# {name}: no {layouts[name].spec.handler} in the build yet; not served",
            file=sys.stderr,
        )
    api = LocalApi(template, served, host=args.host, port=args.port, workers=args.workers)
    if os.environ.get("AWS_ENDPOINT_URL_DYNAMODB"):
        for function, queue, batch_size in template.queue_sources():
            if function in api.pools:
                api.add_poller(
                    QueuePoller(template, api.pools[function], queue, batch_size=batch_size)
                )
    return api.start()


def _route_lines(api: Any) -> list[str]:
    return [
        f"# {route.method:<5} {api.url}{route.resource} -> {route.function}"
        for route in api.routes
        if route.function in api.pools
    ]


def _step(message: str) -> None:
    """Say what ``up`` is doing (stderr: stdout carries the exports and the curl)."""
    print(f"mlmoat local: {message}", file=sys.stderr, flush=True)


def cmd_start_api(args: argparse.Namespace) -> int:
    """Serve the template's routes until interrupted."""
    template = _template(args)
    api = _start_api(template, args)
    for line in _route_lines(api):
        print(line, file=sys.stderr)
    print(f"# serving {api.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        _wait_for_interrupt()
    finally:
        api.stop()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Embedded DynamoDB, bootstrap, a demo key, the API; serve until interrupted."""
    from mlmoat.local.demo import create_demo_key, sample_request
    from mlmoat.local.server import EmbeddedDynamoDB

    _step("starting the embedded DynamoDB (moto server, one DynamoDB call at a time)")
    with EmbeddedDynamoDB(port=args.dynamodb_port or None) as server:
        template = _template(args, endpoint=server.endpoint)
        os.environ.update(exports(server.endpoint, template.region))
        _step("creating the template's tables and queues")
        bootstrap(template)
        if not args.no_build:
            _step(
                "make build: the Lambda build and CPython 3.13 (the first time: virtualenv, "
                "interpreter and packages, a minute or two; then a no-op while nothing changed)"
            )
        api = _start_api(template, args)
        try:
            _step("creating a demo key")
            api_key = create_demo_key(template)
            body = sample_request(template)
            print(f"# embedded DynamoDB at {server.endpoint}; API at {api.url}")
            _print_exports(exports(server.endpoint, template.region))
            print("# routes (each function from the Lambda build under CPython 3.13):")
            for line in _route_lines(api):
                print(line)
            print(
                "# audit records: one JSON line per request on stderr (the functions' output, "
                "as Lambda sends it to CloudWatch Logs)"
            )
            print(
                "# the first request to each function is its cold start (about a second: "
                "imports, model load, clients), later ones are warm"
            )
            print("# a demo key (owner 'demo', scope predict:*) and a request that works:")
            print(
                f"curl -s -X POST {api.url}/predict -H 'Content-Type: application/json' "
                f"-H 'X-API-Key: {api_key}' -d '{json.dumps(body)}'"
            )
            print(
                "# admin routes take no key: they are AWS_IAM, a SigV4 signature made with the "
                f"local credentials ({api.access_key}/...), as API Gateway requires:"
            )
            print(
                f"curl -s {api.url}/admin/keys --aws-sigv4 'aws:amz:{api.region}:execute-api' "
                '--user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY"'
            )
            print("# Ctrl-C to stop", flush=True)
            _wait_for_interrupt()
        finally:
            api.stop()
    return 0


_COMMANDS = {
    "dynamodb": cmd_dynamodb,
    "bootstrap": cmd_bootstrap,
    "invoke": cmd_invoke,
    "start-api": cmd_start_api,
    "up": cmd_up,
}


def main(argv: list[str]) -> int:
    """Run ``mlmoat local ...``."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (TemplateError, BuildError, LocalEnvironmentError, FunctionStartError) as exc:
        print(f"mlmoat local {args.command}: {exc}", file=sys.stderr)
        return 2
