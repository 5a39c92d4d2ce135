"""The OpenAPI document: routes, per-model request schemas, response envelopes, security schemes.

Built only when asked (``mlmoat openapi``, or an app made with ``docs=True``): the Lambda app
declares no response models, since building them (FastAPI imports ``pydantic.v1`` to inspect
them) would cost about half a second of cold start for nothing. Each route's table of error
statuses is generated from the error table (``security.api.errors``), so it cannot drift from
what the API answers. The training envelope is not published.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from security.api.errors import (
    ADMIN_REASON_RESPONSES,
    ERROR_RESPONSES,
    HTTP_RESPONSES,
    PREDICT_REASON_RESPONSES,
    REQUEST_MISMATCH,
    ErrorResponse,
)
from security.api.shell import REQUEST_ID_HEADER
from security.errors import (
    ConflictError,
    MalformedBodyError,
    PayloadTooLargeError,
    SecurityError,
    StoreUnavailableError,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from security.settings import Settings
    from security.validation import FeatureSchema


class Prediction(BaseModel):
    """One row's answer; ``probabilities`` only when the caller's output policy allows."""

    model_config = ConfigDict(extra="forbid")
    label: str | int
    probabilities: dict[str, float] | None = Field(
        default=None, description="Class probabilities, rounded and trimmed by the output policy"
    )


class Bucket(BaseModel):
    """A regressor's value as the bounds of one of ``buckets:K``'s buckets over the training
    target range (``label``: the range itself)."""

    model_config = ConfigDict(extra="forbid")
    low: float
    high: float


class ValuePrediction(BaseModel):
    """One row's answer from a regressor: ``value`` (``value:N``, and a classifier's
    ``probabilities:N`` as ``value:max(N, 1)``) or ``bucket`` (``buckets:K``, ``label``)."""

    model_config = ConfigDict(extra="forbid")
    value: float | None = Field(
        default=None, description="Rounded at the N-th significant digit of the target range"
    )
    bucket: Bucket | None = None


class PredictResponse(BaseModel):
    """The 200 answer of the predict routes: a classifier's labels, or a regressor's values."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str
    model_version: str
    predictions: list[Prediction] | list[ValuePrediction]
    request_id: str


class ErrorBody(BaseModel):
    """The inside of the error envelope."""

    code: str
    message: str
    request_id: str


class ErrorEnvelope(BaseModel):
    """Every error response: one generic envelope."""

    error: ErrorBody


#: Error classes the predict routes never raise (a key's state changes only through the admin API).
_NOT_FROM_PREDICT: frozenset[type[SecurityError]] = frozenset({ConflictError})


def status_table(
    *,
    exclude: Iterable[type[SecurityError]] = (),
    reasons: Mapping[str, ErrorResponse] | None = None,
) -> dict[str, str]:
    """Status -> description, from the error table: each public code with its message."""
    excluded = set(exclude)
    entries = [entry for cls, entry in ERROR_RESPONSES.items() if cls not in excluded]
    entries += list((reasons or {}).values())
    by_status: dict[int, dict[str, str]] = {}
    for entry in entries:
        by_status.setdefault(entry.status, {}).setdefault(entry.code, entry.message)
    return {
        str(status): "; ".join(f"`{code}`: {message}" for code, message in sorted(codes.items()))
        for status, codes in sorted(by_status.items())
    }


#: The error classes the admin routes answer with their class's words (every other admin refusal
#: has admin wording of its own: ``ADMIN_REASON_RESPONSES``).
_ADMIN_CLASSES: tuple[type[SecurityError], ...] = (
    MalformedBodyError,
    PayloadTooLargeError,
    StoreUnavailableError,
    SecurityError,
)


def admin_status_table() -> dict[str, str]:
    """Status -> description of the admin API's refusals, admin wording first."""
    entries = [
        *ADMIN_REASON_RESPONSES.values(),
        *(ERROR_RESPONSES[cls] for cls in _ADMIN_CLASSES),
        *(response for _, response in HTTP_RESPONSES.values()),
        REQUEST_MISMATCH,
    ]
    by_status: dict[int, dict[tuple[str, str], None]] = {}
    for entry in entries:
        by_status.setdefault(entry.status, {})[(entry.code, entry.message)] = None
    return {
        str(status): "; ".join(f"`{code}`: {message}" for code, message in pairs)
        for status, pairs in sorted(by_status.items())
    }


def _error_responses(table: Mapping[str, str]) -> dict[int | str, dict[str, Any]]:
    text = {"schema": {"type": "string"}}
    responses: dict[int | str, dict[str, Any]] = {}
    for status, description in table.items():
        headers: dict[str, Any] = {
            REQUEST_ID_HEADER: {**text, "description": "The request id (also in the body)"}
        }
        if status == "401":
            headers["WWW-Authenticate"] = text
        if status in ("429", "503"):
            headers["Retry-After"] = {
                "schema": {"type": "integer"},
                "description": "Seconds until a rate window reopens or a dependency is retried "
                "(not sent for budget_exhausted: a budget never refills; nor for "
                "model_unavailable: a refused model stays so until it is redeployed)",
            }
        responses[status] = {"model": ErrorEnvelope, "description": description, "headers": headers}
    return responses


def predict_route_docs(schema_ref: str, *, models: list[str] | None = None) -> dict[str, Any]:
    """The OpenAPI extras of one predict route (``APIRouter.post`` keyword arguments)."""
    text = {"schema": {"type": "string"}}
    responses = {
        200: {
            "model": PredictResponse,
            "description": "Predictions under the output policy",
            "headers": {
                REQUEST_ID_HEADER: {**text, "description": "The request id (also in the body)"},
                "RateLimit-Policy": {**text, "description": "draft-ietf-httpapi-ratelimit-headers"},
                "RateLimit": {**text, "description": "Rows left in the window and the budget"},
            },
        },
        **_error_responses(
            status_table(exclude=_NOT_FROM_PREDICT, reasons=PREDICT_REASON_RESPONSES)
        ),
    }
    extra: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": schema_ref}}},
        },
        "security": [{"ApiKey": []}, {"BearerJWT": []}],
    }
    if models is not None:
        extra["parameters"] = [
            {
                "name": "model",
                "in": "path",
                "required": True,
                "description": "A served model",
                "schema": {"type": "string", "enum": sorted(models)},
            }
        ]
    return {"responses": responses, "openapi_extra": extra}


def admin_route_docs(
    *, status: int, description: str, body: type[BaseModel] | None = None
) -> dict[str, Any]:
    """The OpenAPI extras of one admin route (``APIRouter`` route keyword arguments)."""
    text = {"schema": {"type": "string"}}
    responses: dict[int | str, dict[str, Any]] = {
        status: {
            "description": description,
            "content": {"application/json": {"schema": {"type": "object"}}},
            "headers": {
                REQUEST_ID_HEADER: {**text, "description": "The request id (also in the body)"}
            },
        },
        **_error_responses(admin_status_table()),
    }
    extra: dict[str, Any] = {"security": [{"SigV4": []}]}
    if body is not None:
        extra["requestBody"] = {
            "required": body.__name__ == "CreateKeyBody",
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}
            },
        }
    return {"responses": responses, "openapi_extra": extra}


#: The admin API's authorisation: API Gateway ``AWS_IAM`` (SigV4), in API Gateway's own
#: OpenAPI extension (``x-amazon-apigateway-authtype``).
SIGV4_SCHEME = {
    "type": "apiKey",
    "name": "Authorization",
    "in": "header",
    "x-amazon-apigateway-authtype": "awsSigv4",
    "description": "A SigV4-signed request of an IAM identity allowed execute-api:Invoke on "
    "the admin routes (curl --aws-sigv4, awscurl, botocore's SigV4Auth). No API key or token.",
}


def admin_openapi_document(app: FastAPI, bodies: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """The admin API's OpenAPI document: routes, request bodies, the SigV4 scheme."""
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = document.setdefault("components", {})
    component_schemas = components.setdefault("schemas", {})
    for body in bodies:
        component_schemas[body.__name__] = body.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
    components["securitySchemes"] = {"SigV4": SIGV4_SCHEME}
    return document


def openapi_document(
    app: FastAPI, schemas: Mapping[str, FeatureSchema], settings: Settings
) -> dict[str, Any]:
    """The API's OpenAPI document: routes, per-model request schemas, security schemes."""
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = document.setdefault("components", {})
    component_schemas = components.setdefault("schemas", {})
    for name, schema in schemas.items():
        component_schemas[f"PredictRequest_{name}"] = {
            **schema.json_schema(),
            "title": f"PredictRequest_{name}",
            "description": f"A request for model '{name}' ({schema.n_features} features).",
        }
    component_schemas["PredictRequest"] = {
        "title": "PredictRequest",
        "description": 'One row ({"features": [...]}) or a batch ({"instances": [[...]]}) '
        f"of at most {settings.max_rows} rows; the row length is the model's feature count.",
        "oneOf": [{"$ref": f"#/components/schemas/PredictRequest_{name}"} for name in schemas],
    }
    components["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "BearerJWT": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    }
    return document
