"""mlmoat as the benchmark runs it: the ``sam build`` output, a local DynamoDB, a key to call with.

The function process gets exactly what ``mlmoat local invoke`` gives it (``FunctionLayout``):
the function's code directory, each layer's ``python/`` directory (``/opt/python`` in Lambda),
the standard library and the runtime's boto3; the environment is the template's, with
``/opt/...`` paths mapped to the layer that provides them and the AWS endpoints pointed at the
local server.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlmoat.bench.runner import FunctionSpec

FUNCTION = "PredictFunction"


class StackError(RuntimeError):
    """The build output, the local DynamoDB or the key setup is not usable."""


@dataclass(frozen=True)
class BuiltFunction:
    """A function of a ``sam build`` output: its code directory and its layers' directories."""

    code_dir: Path
    layer_dirs: tuple[Path, ...]
    handler: str
    environment: dict[str, str]
    memory_mb: int

    def package_dirs(self) -> tuple[Path, ...]:
        """Everything Lambda unzips for this function: its code and each whole layer."""
        return (self.code_dir, *self.layer_dirs)


def tree_bytes(root: Path) -> int:
    """Bytes of every regular file under ``root`` (what Lambda counts as unzipped size)."""
    if not root.exists():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def built_function(root: Path, build_dir: Path, logical_id: str = FUNCTION) -> BuiltFunction:
    """Locate ``logical_id`` and its layers in a ``sam build`` output.

    Raises:
        StackError: the build output lacks the function or one of its layers.
    """
    from mlmoat.local.template import Template

    built_template = build_dir / "template.yaml"
    if not built_template.is_file():
        raise StackError(f"{build_dir} has no template.yaml: run `make build` first")
    spec = Template(root / "template.yaml").function(logical_id)
    code_dir = build_dir / logical_id
    layer_dirs = tuple(build_dir / layer for layer in spec.layers)
    missing = [str(p) for p in (code_dir, *layer_dirs) if not p.is_dir()]
    if missing:
        raise StackError(f"missing from the build output: {', '.join(missing)}")
    return BuiltFunction(
        code_dir=code_dir,
        layer_dirs=layer_dirs,
        handler=spec.handler,
        environment=dict(spec.environment),
        memory_mb=spec.memory_size,
    )


def function_spec(
    root: Path, build_dir: Path, *, aws_env: dict[str, str], label: str = "mlmoat"
) -> FunctionSpec:
    """How ``mlmoat local invoke`` starts the built function: the same path and environment."""
    from mlmoat.local.template import Template
    from mlmoat.local.workers import FunctionLayout

    template = Template(
        root / "template.yaml",
        endpoint=aws_env["AWS_ENDPOINT_URL_DYNAMODB"],
        region=aws_env["AWS_DEFAULT_REGION"],
    )
    layout = FunctionLayout(template, build_dir, FUNCTION, host_environ=aws_env)
    return FunctionSpec(
        label=label,
        paths=tuple(layout.paths()),
        handler=layout.spec.handler,
        env=layout.environment(),
        hooks=True,
        function_name=FUNCTION,
        memory_mb=layout.spec.memory_size,
        workdir=str(layout.code_dir),
    )


def without_bytecode(spec: FunctionSpec, into: Path, *, keep: tuple[Path, ...]) -> FunctionSpec:
    """``spec`` run from copies of its trees with no byte-code (but ``keep``, copied as they are).

    The cold start without byte-code is what a package that ships none costs on Lambda, whose
    code is read-only: every import compiles. ``keep`` is the runtime's own boto3, which Lambda
    ships compiled.
    """
    kept = {str(path) for path in keep}
    paths = []
    for index, path in enumerate(spec.paths):
        if path in kept or not Path(path).is_dir():
            paths.append(path)
            continue
        copy = into / f"{index}-{Path(path).name}"
        shutil.copytree(
            path, copy, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        paths.append(str(copy))
    workdir = spec.workdir
    if workdir in spec.paths:
        workdir = paths[spec.paths.index(workdir)]
    return replace(spec, paths=tuple(paths), workdir=workdir)


@dataclass
class BenchStack:
    """The local DynamoDB (``mlmoat.local.stack.LocalStack``'s), bootstrapped from
    template.yaml, and a key to call with."""

    endpoint: str
    aws_env: dict[str, str]
    environment: dict[str, str]
    api_key: str
    key_id: str
    admin: Any
    client: Any
    table_name: str

    def key_item_bytes(self) -> int:
        """The size of the key's DynamoDB item as DynamoDB counts it (names plus values)."""
        response = self.client.get_item(
            TableName=self.table_name, Key={"pk": {"S": f"key#{self.key_id}"}}, ConsistentRead=True
        )
        item = response["Item"]
        return sum(len(name.encode()) + _value_bytes(value) for name, value in item.items())


def _value_bytes(value: dict[str, Any]) -> int:
    # DynamoDB item size rules: strings by UTF-8 length, numbers ~ digits/2 + 1, sets summed.
    ((kind, payload),) = value.items()
    if kind == "S":
        return len(payload.encode())
    if kind == "N":
        return len(payload.lstrip("-").replace(".", "")) // 2 + 1
    if kind == "SS":
        return sum(len(item.encode()) for item in payload)
    if kind == "NS":
        return sum(len(item) // 2 + 1 for item in payload)
    if kind == "BOOL" or kind == "NULL":
        return 1
    if kind == "L":
        return 3 + sum(1 + _value_bytes(item) for item in payload)
    if kind == "M":
        return 3 + sum(len(k.encode()) + 1 + _value_bytes(v) for k, v in payload.items())
    return len(str(payload))


@contextmanager
def local_stack(root: Path, *, log_dir: Path) -> Iterator[BenchStack]:
    """Start the local DynamoDB (``mlmoat.local.stack.LocalStack``: its own process, tables and
    queues bootstrapped from the template) and make a key.

    The server is its own process, so its CPU time never counts inside the function process.

    Raises:
        StackError: the server did not start.
    """
    from mlmoat.local import stack as local
    from mlmoat.local.awsenv import exports
    from mlmoat.local.template import DEFAULT_REGION, Template
    from security.settings import Settings

    log_dir.mkdir(parents=True, exist_ok=True)
    dynamodb = local.LocalStack(work_dir=log_dir, instances=0)
    try:
        try:
            dynamodb.start_dynamodb()
        except (RuntimeError, subprocess.SubprocessError) as exc:
            raise StackError("the local DynamoDB did not start or bootstrap") from exc
        endpoint = dynamodb.endpoint
        template = Template(root / "template.yaml", endpoint=endpoint, region=DEFAULT_REGION)
        aws_env = exports(endpoint, DEFAULT_REGION)
        environment = dict(template.function(FUNCTION).environment)
        settings = Settings.from_env(environment)
        admin = local.key_admin(aws_env, settings=settings)
        # Limits far above what the benchmark sends: it measures the cost of counting, not refusals.
        created = admin.create(
            owner="bench",
            rate_limit="100000000/minute",
            budget=10**12,
            output_policy=settings.default_output_policy,
        )
        yield BenchStack(
            endpoint=endpoint,
            aws_env=aws_env,
            environment=environment,
            api_key=created["api_key"],
            key_id=created["key_id"],
            admin=admin,
            client=local.dynamodb_client(aws_env),
            table_name=settings.table_name,
        )
    finally:
        dynamodb.stop()
