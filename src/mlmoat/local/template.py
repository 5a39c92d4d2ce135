"""template.yaml as the local tools see it: functions, layers, routes, tables, queues, env.

The template is the one source of truth: table key schemas, queue settings, routes and
environment variables are read from it, never duplicated. Intrinsic functions are resolved to
local values: a parameter to its default (or an override), a table to its local name, a queue
to its URL on the local endpoint, ``AWS::*`` pseudo parameters to fixed local values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LOCAL_STACK_NAME = "mlmoat-local"
LOCAL_ACCOUNT_ID = "123456789012"  # moto's default account
DEFAULT_REGION = "us-east-1"

_FUNCTION = "AWS::Serverless::Function"
_LAYER = "AWS::Serverless::LayerVersion"
_TABLE = "AWS::DynamoDB::Table"
_QUEUE = "AWS::SQS::Queue"
_PARAMETER = "AWS::SSM::Parameter"


class TemplateError(ValueError):
    """template.yaml is missing something the local tools need, or uses an unsupported form."""


class _CfnLoader(yaml.SafeLoader):
    """A safe YAML loader that turns CloudFormation short-form tags into their long form."""


def _construct_tag(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path) -> dict[str, Any]:
    """Parse a CloudFormation/SAM template (short-form tags become long-form dicts).

    Raises:
        TemplateError: the file is not a mapping with ``Resources``.
    """
    # What yaml.load does, with our SafeLoader subclass (no arbitrary object construction).
    loader = _CfnLoader(path.read_text(encoding="utf-8"))
    try:
        document = loader.get_single_data()
    finally:
        loader.dispose()
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise TemplateError(f"{path}: not a template with Resources")
    return document


@dataclass(frozen=True, slots=True)
class Route:
    """One API event of a function: a method and a resource path (``/models/{model}/predict``)."""

    function: str
    method: str
    resource: str
    #: The event's ``Auth.Authorizer`` (``AWS_IAM`` for the admin routes), ``NONE`` if unset.
    authorizer: str = "NONE"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """Path parameters when ``method``/``path`` hit this route, else ``None``."""
        if self.method not in ("ANY", method.upper()):
            return None
        pattern = "^"
        names: list[str] = []
        for part in re.split(r"(\{[^}]+\})", self.resource):
            if part.startswith("{") and part.endswith("}"):
                name = part[1:-1]
                greedy = name.endswith("+")
                name = name.rstrip("+")
                names.append(name)
                pattern += f"(?P<{name}>.+)" if greedy else f"(?P<{name}>[^/]+)"
            else:
                pattern += re.escape(part)
        found = re.match(pattern + "/?$", path)
        if found is None:
            return None
        return {name: found[name] for name in names}


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A function as the local runtime needs it."""

    logical_id: str
    handler: str
    code_uri: str
    layers: tuple[str, ...]
    environment: dict[str, str]
    timeout: int
    memory_size: int
    routes: tuple[Route, ...] = field(default=())


class Template:
    """A parsed template with intrinsic functions resolved to local values."""

    def __init__(
        self,
        path: Path,
        *,
        endpoint: str | None = None,
        region: str = DEFAULT_REGION,
        parameter_overrides: Mapping[str, str] | None = None,
    ) -> None:
        self.path = path
        self.root = path.parent
        self.document = load_template(path)
        self.endpoint = (endpoint or "http://127.0.0.1:8000").rstrip("/")
        self.region = region
        self._overrides = dict(parameter_overrides or {})

    # ------------------------------------------------------------------ resources
    def resources(self, type_name: str) -> dict[str, dict[str, Any]]:
        """Resources of one type, by logical id, in template order."""
        return {
            logical_id: resource
            for logical_id, resource in self.document["Resources"].items()
            if isinstance(resource, dict) and resource.get("Type") == type_name
        }

    def physical_name(self, logical_id: str) -> str:
        """The local name of a table or queue (the same for every local command)."""
        return f"{LOCAL_STACK_NAME}-{logical_id}"

    def queue_url(self, logical_id: str) -> str:
        """The URL the local endpoint (moto) gives the queue."""
        return f"{self.endpoint}/{LOCAL_ACCOUNT_ID}/{self.physical_name(logical_id)}"

    def arn(self, logical_id: str) -> str:
        """A local ARN for a resource (used in env values and redrive policies)."""
        resource = self.document["Resources"].get(logical_id, {})
        kind = resource.get("Type", "")
        name = self.physical_name(logical_id)
        if kind == _QUEUE:
            return f"arn:aws:sqs:{self.region}:{LOCAL_ACCOUNT_ID}:{name}"
        if kind == _TABLE:
            return f"arn:aws:dynamodb:{self.region}:{LOCAL_ACCOUNT_ID}:table/{name}"
        if kind == _FUNCTION:
            return f"arn:aws:lambda:{self.region}:{LOCAL_ACCOUNT_ID}:function:{name}"
        return f"arn:aws:cloudformation:{self.region}:{LOCAL_ACCOUNT_ID}:{logical_id}/{name}"

    def table_definitions(self) -> dict[str, dict[str, Any]]:
        """Each table's CreateTable arguments and TTL attribute, by logical id.

        Raises:
            TemplateError: a table's key schema uses an intrinsic function.
        """
        tables: dict[str, dict[str, Any]] = {}
        for logical_id, resource in self.resources(_TABLE).items():
            props = resource.get("Properties", {})
            key_schema = props.get("KeySchema")
            attributes = props.get("AttributeDefinitions")
            if not _is_literal(key_schema) or not _is_literal(attributes):
                raise TemplateError(f"{logical_id}: key schema must be literal (no intrinsics)")
            ttl = props.get("TimeToLiveSpecification") or {}
            tables[logical_id] = {
                "TableName": self.physical_name(logical_id),
                "KeySchema": key_schema,
                "AttributeDefinitions": attributes,
                "BillingMode": "PAY_PER_REQUEST",
                "ttl_attribute": ttl.get("AttributeName") if ttl.get("Enabled") else None,
            }
        return tables

    def queue_definitions(self) -> dict[str, dict[str, str]]:
        """Each queue's local name and CreateQueue attributes (dead-letter queues first)."""
        queues: dict[str, dict[str, str]] = {}
        pending = list(self.resources(_QUEUE).items())
        # A queue's redrive target must exist before it: order dead-letter queues first.
        pending.sort(key=lambda item: "RedrivePolicy" in item[1].get("Properties", {}))
        for logical_id, resource in pending:
            props = resource.get("Properties", {})
            attributes: dict[str, str] = {}
            for name in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds"):
                if name in props:
                    attributes[name] = str(self.resolve(props[name]))
            redrive = props.get("RedrivePolicy")
            if redrive:
                resolved = self.resolve(redrive)
                attributes["RedrivePolicy"] = _json(
                    {
                        "deadLetterTargetArn": resolved["deadLetterTargetArn"],
                        "maxReceiveCount": str(resolved["maxReceiveCount"]),
                    }
                )
            queues[logical_id] = {"QueueName": self.physical_name(logical_id), **attributes}
        return queues

    def parameter_definitions(self) -> dict[str, dict[str, str]]:
        """Each SSM parameter's PutParameter arguments (``Name``, ``Type``, ``Value``), by id."""
        parameters: dict[str, dict[str, str]] = {}
        for logical_id, resource in self.resources(_PARAMETER).items():
            props = resource.get("Properties", {})
            parameters[logical_id] = {
                "Name": str(self._ref(logical_id)),
                "Type": str(self.resolve(props.get("Type", "String"))),
                "Value": str(self.resolve(props.get("Value", ""))),
            }
        return parameters

    def layers(self) -> dict[str, dict[str, Any]]:
        """Layer resources by logical id."""
        return self.resources(_LAYER)

    # ------------------------------------------------------------------ functions
    def functions(self) -> dict[str, FunctionSpec]:
        """Every function with its handler, layers, resolved environment and routes."""
        globals_ = (self.document.get("Globals") or {}).get("Function") or {}
        specs: dict[str, FunctionSpec] = {}
        for logical_id, resource in self.resources(_FUNCTION).items():
            props = resource.get("Properties", {})
            merged_env: dict[str, Any] = {}
            for source in (globals_, props):
                variables = (source.get("Environment") or {}).get("Variables") or {}
                merged_env.update(variables)
            environment = {
                name: _env_text(self.resolve(value)) for name, value in merged_env.items()
            }
            layers = props.get("Layers", globals_.get("Layers", []))
            layer_ids = tuple(_ref_target(layer) for layer in layers)
            routes = tuple(
                Route(
                    logical_id,
                    str(event["Properties"]["Method"]).upper(),
                    str(event["Properties"]["Path"]),
                    str((event["Properties"].get("Auth") or {}).get("Authorizer") or "NONE"),
                )
                for event in (props.get("Events") or {}).values()
                if event.get("Type") == "Api"
            )
            specs[logical_id] = FunctionSpec(
                logical_id=logical_id,
                handler=str(props.get("Handler", globals_.get("Handler", ""))),
                code_uri=str(props.get("CodeUri", globals_.get("CodeUri", ""))),
                layers=layer_ids,
                environment=environment,
                timeout=int(self.resolve(props.get("Timeout", globals_.get("Timeout", 3)))),
                memory_size=int(
                    self.resolve(props.get("MemorySize", globals_.get("MemorySize", 128)))
                ),
                routes=routes,
            )
        return specs

    def queue_sources(self) -> list[tuple[str, str, int]]:
        """``(function, queue, batch size)`` for each SQS event source mapping or SQS event."""
        sources: list[tuple[str, str, int]] = []
        for resource in self.resources("AWS::Lambda::EventSourceMapping").values():
            props = resource.get("Properties", {})
            queue = props.get("EventSourceArn", {}).get("Fn::GetAtt", [None])[0]
            function = props.get("FunctionName", {}).get("Ref")
            if queue in self.resources(_QUEUE) and function in self.resources(_FUNCTION):
                sources.append((str(function), str(queue), int(props.get("BatchSize", 10))))
        for logical_id, resource in self.resources(_FUNCTION).items():
            for event in (resource.get("Properties", {}).get("Events") or {}).values():
                if event.get("Type") != "SQS":
                    continue
                queue = event["Properties"].get("Queue", {}).get("Fn::GetAtt", [None])[0]
                if queue in self.resources(_QUEUE):
                    sources.append(
                        (logical_id, str(queue), int(event["Properties"].get("BatchSize", 10)))
                    )
        return sources

    def function(self, logical_id: str) -> FunctionSpec:
        """One function by logical id.

        Raises:
            TemplateError: no function has that logical id.
        """
        specs = self.functions()
        if logical_id not in specs:
            raise TemplateError(
                f"no function {logical_id!r} in {self.path.name} (have: {', '.join(specs)})"
            )
        return specs[logical_id]

    def routes(self) -> list[Route]:
        """All API routes, literal paths before parameterised ones (as API Gateway prefers)."""
        routes = [route for spec in self.functions().values() for route in spec.routes]
        return sorted(routes, key=lambda route: (route.resource.count("{"), -len(route.resource)))

    # ------------------------------------------------------------------ intrinsics
    def parameter(self, name: str) -> str:
        """A parameter's local value: the override, else its default.

        Raises:
            TemplateError: the parameter has neither.
        """
        if name in self._overrides:
            return self._overrides[name]
        declared = (self.document.get("Parameters") or {}).get(name)
        if declared is None or "Default" not in declared:
            raise TemplateError(f"parameter {name!r} has no default and no override")
        return str(declared["Default"])

    def resolve(self, value: Any) -> Any:
        """Resolve intrinsic functions in ``value`` to local values.

        Raises:
            TemplateError: an unsupported intrinsic function.
        """
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {key: self.resolve(item) for key, item in value.items()}
        ((key, arg),) = value.items()
        if key == "Ref":
            return self._ref(str(arg))
        if key == "Fn::GetAtt":
            target, attribute = arg if isinstance(arg, list) else str(arg).split(".", 1)
            return self._get_att(str(target), str(attribute))
        if key == "Fn::Sub":
            return self._sub(arg)
        if key == "Fn::If":
            condition, when_true, when_false = arg
            return self.resolve(when_true if self.condition(str(condition)) else when_false)
        if key == "Fn::Join":
            separator, items = arg
            return str(separator).join(str(self.resolve(item)) for item in self.resolve(items))
        if key == "Fn::Select":
            index, items = arg
            return self.resolve(items)[int(self.resolve(index))]
        if key.startswith("Fn::") or key == "Condition":
            raise TemplateError(f"unsupported intrinsic {key} for local runs")
        return {key: self.resolve(arg)}

    def condition(self, name: str) -> bool:
        """Evaluate a named condition.

        Raises:
            TemplateError: the condition is unknown or uses an unsupported function.
        """
        conditions = self.document.get("Conditions") or {}
        if name not in conditions:
            raise TemplateError(f"unknown condition {name!r}")
        return self._truth(conditions[name])

    def _truth(self, expression: Any) -> bool:
        ((key, arg),) = expression.items()
        if key == "Fn::Equals":
            left, right = (str(self.resolve(item)) for item in arg)
            return left == right
        if key == "Fn::Not":
            return not self._truth(arg[0])
        if key == "Fn::And":
            return all(self._truth(item) for item in arg)
        if key == "Fn::Or":
            return any(self._truth(item) for item in arg)
        if key == "Condition":
            return self.condition(str(arg))
        raise TemplateError(f"unsupported condition function {key}")

    def _ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": LOCAL_ACCOUNT_ID,
            "AWS::StackName": LOCAL_STACK_NAME,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": None,
        }
        if name in pseudo:
            return pseudo[name]
        if name in (self.document.get("Parameters") or {}):
            return self.parameter(name)
        resource = self.document["Resources"].get(name)
        if resource is None:
            raise TemplateError(f"Ref to unknown {name!r}")
        if resource.get("Type") == _QUEUE:
            return self.queue_url(name)
        if resource.get("Type") in (_LAYER, "AWS::Lambda::LayerVersion"):
            return self.arn(name)
        if resource.get("Type") == _PARAMETER and "Name" in resource.get("Properties", {}):
            # Ref of a parameter is its name: the template's, resolved for the local stack.
            return str(self.resolve(resource["Properties"]["Name"]))
        return self.physical_name(name)

    def _get_att(self, target: str, attribute: str) -> str:
        if target not in self.document["Resources"]:
            raise TemplateError(f"GetAtt on unknown {target!r}")
        if attribute == "Arn":
            return self.arn(target)
        if attribute == "QueueName":
            return self.physical_name(target)
        if attribute == "QueueUrl":
            return self.queue_url(target)
        return f"{self.physical_name(target)}.{attribute}"

    def _sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, variables = str(arg[0]), {k: self.resolve(v) for k, v in arg[1].items()}
        else:
            text, variables = str(arg), {}

        def replace(found: re.Match[str]) -> str:
            name = found[1]
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name:
                target, attribute = name.split(".", 1)
                return self._get_att(target, attribute)
            return str(self._ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)


def _is_literal(value: Any) -> bool:
    if isinstance(value, dict):
        if any(key == "Ref" or key.startswith("Fn::") for key in value):
            return False
        return all(_is_literal(item) for item in value.values())
    if isinstance(value, list):
        return all(_is_literal(item) for item in value)
    return True


def _ref_target(value: Any) -> str:
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    raise TemplateError(f"layer reference {value!r} is not a Ref to a layer in this template")


def _env_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def find_template(start: Path | None = None) -> Path:
    """The nearest ``template.yaml`` at or above ``start`` (default: the working directory).

    Raises:
        TemplateError: none was found.
    """
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "template.yaml"
        if candidate.is_file():
            return candidate
    raise TemplateError("template.yaml not found here or in a parent directory (use --template)")
