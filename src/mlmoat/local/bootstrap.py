"""Create the template's tables (key schema, TTL) and queues at the local endpoint, idempotently."""

from __future__ import annotations

from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from mlmoat.local.awsenv import dynamodb_client, sqs_client, ssm_client
from mlmoat.local.template import Template


@dataclass
class BootstrapReport:
    """What bootstrap created and what already existed."""

    created_tables: list[str] = field(default_factory=list)
    existing_tables: list[str] = field(default_factory=list)
    queues: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)


def bootstrap(
    template: Template,
    *,
    dynamodb_endpoint: str | None = None,
    ssm_endpoint: str | None = None,
) -> BootstrapReport:
    """Create every table, queue and SSM parameter of ``template``; existing ones are kept.

    Queues go to the template's endpoint (the one its queue URLs name), tables to
    ``dynamodb_endpoint`` when given (DynamoDB Local beside ElasticMQ), else to the same one;
    parameters to ``ssm_endpoint``, else the DynamoDB one (as ``awsenv.passthrough`` points the
    functions). An existing parameter keeps its value: it may hold a runtime setting.

    Raises:
        botocore.exceptions.ClientError: the endpoint refused a definition.
    """
    report = BootstrapReport()
    dynamodb = dynamodb_client(dynamodb_endpoint or template.endpoint, template.region)
    for definition in template.table_definitions().values():
        name = definition["TableName"]
        try:
            dynamodb.create_table(
                TableName=name,
                KeySchema=definition["KeySchema"],
                AttributeDefinitions=definition["AttributeDefinitions"],
                BillingMode=definition["BillingMode"],
            )
            report.created_tables.append(name)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceInUseException":
                raise
            report.existing_tables.append(name)
        dynamodb.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
        )
        ttl_attribute = definition["ttl_attribute"]
        if ttl_attribute:
            current = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
            if current.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                dynamodb.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"AttributeName": ttl_attribute, "Enabled": True},
                )
    sqs = sqs_client(template.endpoint, template.region)
    for logical_id, definition in template.queue_definitions().items():
        attributes = {key: value for key, value in definition.items() if key != "QueueName"}
        # CreateQueue with the same name and attributes is idempotent in SQS (and moto).
        url = sqs.create_queue(QueueName=definition["QueueName"], Attributes=attributes)["QueueUrl"]  # type: ignore[arg-type]
        report.queues[logical_id] = url
    ssm = ssm_client(ssm_endpoint or dynamodb_endpoint or template.endpoint, template.region)
    for logical_id, definition in template.parameter_definitions().items():
        try:
            ssm.put_parameter(
                Name=definition["Name"],
                Type=definition["Type"],  # type: ignore[arg-type]
                Value=definition["Value"],
                Overwrite=False,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ParameterAlreadyExists":
                raise
        report.parameters[logical_id] = definition["Name"]
    return report
