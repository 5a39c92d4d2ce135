"""The FastAPI integration: the app factory, the request path, and the error-to-response table.

This is the only module of the security layer that imports FastAPI. ``create_app`` wires one
request through the layer (``docs/architecture.md``, "Request path")::

    credentials (auth, no I/O) -> model lookup -> body validation (no I/O)
      -> admission (one conditional DynamoDB write) -> squeezing defence -> predict
      -> output policy -> extraction queue -> response; one audit record whatever happened

Every response, including Starlette's own 404/405 and the 500 fallback, leaves in one envelope
``{"error": {"code", "message", "request_id"}}`` with an ``X-Request-Id`` header (API Gateway's
``requestContext.requestId`` when there is one). Refusals after authentication carry the
``RateLimit-Policy``/``RateLimit`` headers, 401 carries ``WWW-Authenticate`` and 429/503
``Retry-After``. The real reason of a refusal goes to the audit record, never to the client.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from security.audit import MONITOR_QUEUE_FAILED, AuditEvent, AuditLog, install_log_redaction
from security.errors import (
    AdversarialInputError,
    AuthenticationError,
    ConflictError,
    DependencyUnavailableError,
    ForbiddenError,
    InvalidPayloadError,
    MalformedBodyError,
    ModelIntegrityError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    SecretUnavailableError,
    SecurityError,
    StoreUnavailableError,
    UnsupportedMediaTypeError,
)
from security.policy import OutputPolicy
from security.sanitize import apply_output_policy
from security.validation import RULE_MESSAGES, FeatureSchema, parse_prediction_request

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from security.auth import Authenticator, Principal
    from security.defences import Squeezer
    from security.extraction import QuerySink
    from security.limits import Gatekeeper
    from security.settings import Settings
    from security.tokens import TokenVerifier

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_MAX_ROUTE_CHARS = 200


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """How one error class is answered: status, public code and one generic message."""

    status: int
    code: str
    message: str


#: Every ``SecurityError`` class, mapped to its response. A test pins that none is missing.
ERROR_RESPONSES: dict[type[SecurityError], ErrorResponse] = {
    SecurityError: ErrorResponse(500, "internal_error", "The request failed."),
    AuthenticationError: ErrorResponse(401, "unauthenticated", "Missing or invalid credentials."),
    ForbiddenError: ErrorResponse(
        403, "forbidden", "These credentials are not allowed to use this model."
    ),
    NotFoundError: ErrorResponse(404, "not_found", "No such model or route."),
    ConflictError: ErrorResponse(
        409, "conflict", "The change conflicts with the key's current state."
    ),
    RateLimitedError: ErrorResponse(
        429, "rate_limited", "The rate limit or query budget is exhausted."
    ),
    InvalidPayloadError: ErrorResponse(
        422, "invalid_features", "The features broke a validation rule."
    ),
    MalformedBodyError: ErrorResponse(
        400, "malformed_body", "The request body is not a well-formed JSON object."
    ),
    PayloadTooLargeError: ErrorResponse(
        413, "payload_too_large", "The request is larger than this API accepts."
    ),
    UnsupportedMediaTypeError: ErrorResponse(
        415, "unsupported_media_type", "The request body must be application/json."
    ),
    AdversarialInputError: ErrorResponse(422, "input_refused", "The input was refused."),
    DependencyUnavailableError: ErrorResponse(
        503, "service_unavailable", "The service is temporarily unavailable."
    ),
    StoreUnavailableError: ErrorResponse(
        503, "service_unavailable", "The service is temporarily unavailable."
    ),
    SecretUnavailableError: ErrorResponse(
        503, "service_unavailable", "The service is temporarily unavailable."
    ),
    ModelIntegrityError: ErrorResponse(
        503, "service_unavailable", "The service is temporarily unavailable."
    ),
}
_INTERNAL = ErrorResponse(500, "internal_error", "The request failed.")
#: Refusals answered in words of their own (reason -> response; used when the status agrees):
#: the spent budget, and the admin API's refusals. The reason itself stays in the log.
REASON_RESPONSES: dict[str, ErrorResponse] = {
    "budget_exhausted": ErrorResponse(
        429, "budget_exhausted", "The query budget of these credentials is used up."
    ),
    "admin_scope_required": ErrorResponse(
        403, "forbidden", "These credentials may not administer keys."
    ),
    "unknown_key": ErrorResponse(404, "not_found", "No such key."),
    "key_exists": ErrorResponse(409, "conflict", "A key with this id already exists."),
    "invalid_transition": ErrorResponse(
        409, "conflict", "The key's current status does not allow this change."
    ),
    **{
        reason: ErrorResponse(422, "invalid_request", message)
        for reason, message in {
            "invalid_admin_request": "The request body broke a rule of the admin API.",
            "invalid_owner": "The owner is not valid.",
            "invalid_scope": "A scope is not valid.",
            "invalid_rate_limit": "The rate limit is not valid.",
            "invalid_budget": "The budget is not valid.",
            "invalid_output_policy": "The output policy is not valid.",
            "invalid_duration": "The duration is not valid.",
            "invalid_key_id": "The key id is not valid.",
        }.items()
    },
}
_HTTP_RESPONSES = {
    404: ("route_not_found", ErrorResponse(404, "not_found", "No such model or route.")),
    405: (
        "method_not_allowed",
        ErrorResponse(405, "method_not_allowed", "This method is not allowed on this route."),
    ),
}


def error_response_for(exc: SecurityError) -> ErrorResponse:
    """The response of an error: its class's entry (nearest base), with the rule's message."""
    for cls in type(exc).__mro__:
        entry = ERROR_RESPONSES.get(cls)
        if entry is not None:
            break
    else:  # pragma: no cover - SecurityError itself is in the table
        entry = _INTERNAL
    own = REASON_RESPONSES.get(exc.reason)
    if own is not None and own.status == entry.status:
        return own
    if isinstance(exc, InvalidPayloadError) and exc.reason in RULE_MESSAGES:
        return ErrorResponse(entry.status, entry.code, RULE_MESSAGES[exc.reason])
    return entry


# --------------------------------------------------------------------------- collaborators


class ServedModelLike(Protocol):
    """What the request path needs of a loaded model (``security.model.ServedModel``)."""

    @property
    def name(self) -> str:
        """The model's name (its directory under ``models/``)."""

    @property
    def version(self) -> str:
        """The artifact's version, from the manifest."""

    @property
    def classes(self) -> Sequence[Any]:
        """Class labels, in the order of the probability columns."""

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities for each row."""


class RegistryLike(Protocol):
    """What the request path needs of the model registry (``security.model.ModelRegistry``)."""

    def get(self, name: str) -> ServedModelLike:
        """The loaded model called ``name``.

        Raises:
            NotFoundError: no such model.
        """


# --------------------------------------------------------------------------- API schemas


class Prediction(BaseModel):
    """One row's answer; ``probabilities`` only when the caller's output policy allows."""

    model_config = ConfigDict(extra="forbid")
    label: str | int
    probabilities: dict[str, float] | None = Field(
        default=None, description="Class probabilities, rounded and trimmed by the output policy"
    )


class PredictResponse(BaseModel):
    """The 200 answer of the predict routes."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str
    model_version: str
    predictions: list[Prediction]
    request_id: str


class ErrorBody(BaseModel):
    """The inside of the error envelope."""

    code: str
    message: str
    request_id: str


class ErrorEnvelope(BaseModel):
    """Every error response: one generic envelope."""

    error: ErrorBody


# --------------------------------------------------------------------------- helpers


def _aws_event(scope: Scope) -> Mapping[str, Any]:
    event = scope.get("aws.event")
    return event if isinstance(event, Mapping) else {}


def request_id_for(scope: Scope) -> str:
    """API Gateway's ``requestContext.requestId`` when well-formed, else a fresh UUID."""
    context = _aws_event(scope).get("requestContext")
    candidate = context.get("requestId") if isinstance(context, Mapping) else None
    if isinstance(candidate, str) and _REQUEST_ID_RE.match(candidate):
        return candidate
    return str(uuid.uuid4())


def source_ip_for(scope: Scope) -> str | None:
    """The caller's address as API Gateway saw it (REST v1 or HTTP API v2), else the socket's."""
    context = _aws_event(scope).get("requestContext")
    if isinstance(context, Mapping):
        identity = context.get("identity")
        http = context.get("http")
        for holder in (identity, http):
            if isinstance(holder, Mapping) and isinstance(holder.get("sourceIp"), str):
                return str(holder["sourceIp"])[:64]
    client = scope.get("client")
    if client:
        return str(client[0])[:64]
    return None


def _envelope(
    error: ErrorResponse, request_id: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": error.code, "message": error.message, "request_id": request_id}}
    return JSONResponse(body, status_code=error.status, headers=dict(headers or {}))


def _audit_event(request: Request) -> AuditEvent:
    event = getattr(request.state, "audit", None)
    if not isinstance(event, AuditEvent):  # pragma: no cover - the middleware always sets it
        raise RuntimeError("audit middleware is not installed")
    return event


# --------------------------------------------------------------------------- middleware


class AuditMiddleware:
    """Outermost ASGI middleware: request id, exactly one audit record, the 500 fallback."""

    def __init__(self, app: ASGIApp, *, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run one request; answer 500 in the envelope if anything unexpected escapes."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_for(scope)
        event = AuditEvent(
            request_id=request_id,
            route=str(scope.get("path", ""))[:_MAX_ROUTE_CHARS],
            method=str(scope.get("method", "")),
            source_ip=source_ip_for(scope),
        )
        scope.setdefault("state", {})["audit"] = event
        self.audit.begin(request_id)
        started: list[int] = []

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                # Predictions, refusals and admin views are per caller: no cache may keep them.
                headers["Cache-Control"] = "no-store"
                started.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        # The single 500 fallback: log the detail, answer generically.
        except Exception as exc:  # noqa: BLE001
            self.audit.error("unhandled_error", exc=exc)
            event.reason = "internal_error"
            if not started:
                await _envelope(_INTERNAL, request_id)(scope, receive, send_with_id)
        finally:
            event.finish(status=started[0] if started else 500)
            self.audit.emit(event)


# --------------------------------------------------------------------------- the app


class _PredictService:
    """The predict request path, with its collaborators bound once at cold start."""

    def __init__(
        self,
        *,
        settings: Settings,
        registry: RegistryLike,
        schemas: Mapping[str, FeatureSchema],
        authenticator: Authenticator,
        gatekeeper: Gatekeeper,
        squeezer: Squeezer | None,
        query_sink: QuerySink | None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.schemas = schemas
        self.authenticator = authenticator
        self.gatekeeper = gatekeeper
        self.squeezer = squeezer
        self.query_sink = query_sink
        self.default_policy = OutputPolicy.parse(settings.default_output_policy)

    async def predict(self, request: Request, model_name: str, route: str) -> Response:
        """Serve one prediction request, or raise the ``SecurityError`` that refuses it.

        Raises:
            SecurityError: any refusal; the exception handlers turn it into the envelope.
        """
        event = _audit_event(request)
        event.route = route
        event.model = model_name[:64]
        request_id = event.request_id
        source_ip = event.source_ip or "unknown"

        credentials = self.authenticator.read_credentials(
            request.headers, event=_aws_event(request.scope)
        )
        event.identify(credentials)

        schema = self.schemas.get(model_name)
        if schema is None:
            # Only authenticated callers learn that a model does not exist.
            principal, rate_headers = self.gatekeeper.authenticate_with_headers(
                credentials, model=model_name, source_ip=source_ip
            )
            event.identify(principal)
            missing = NotFoundError("unknown_model")
            missing.headers.update(rate_headers)
            raise missing
        model = self.registry.get(model_name)
        event.model_version = model.version

        body = await request.body()
        try:
            parsed = parse_prediction_request(
                body,
                request.headers.get("content-type"),
                schema,
                max_body_bytes=self.settings.max_body_bytes,
                max_rows=self.settings.max_rows,
            )
        except InvalidPayloadError as exc:
            # A refused body is never charged, and only real callers learn why it was refused.
            principal, rate_headers = self.gatekeeper.authenticate_with_headers(
                credentials, model=model_name, source_ip=source_ip
            )
            event.identify(principal)
            exc.headers.update(rate_headers)
            raise
        event.record_input(parsed.rows, raw=self.settings.audit_raw_features)

        admission = self.gatekeeper.admit(
            credentials,
            model=model_name,
            rows=parsed.n_rows,
            request_id=request_id,
            source_ip=source_ip,
        )
        principal = admission.principal
        event.identify(principal)
        rate_headers = admission.headers()

        probabilities = self._predict(model, parsed.rows, event, rate_headers)
        policy = self._policy(principal)
        event.output_policy = str(policy)
        predictions = apply_output_policy(policy, model.classes, probabilities)
        self._send_to_monitor(principal, model, parsed.rows, probabilities, request_id, event)

        body_out = {
            "model": model.name,
            "model_version": model.version,
            "predictions": predictions,
            "request_id": request_id,
        }
        return JSONResponse(body_out, status_code=200, headers=rate_headers)

    def _predict(
        self,
        model: ServedModelLike,
        rows: np.ndarray,
        event: AuditEvent,
        rate_headers: Mapping[str, str],
    ) -> np.ndarray:
        # The defences' single call site: squeeze and score between validation and prediction.
        if self.squeezer is None:
            return np.asarray(model.predict_proba(rows), dtype=np.float64)
        try:
            result = self.squeezer.check(model, rows)
        except AdversarialInputError as exc:
            exc.headers.update(rate_headers)
            raise
        if result.flagged:
            event.flags.append(f"squeeze_flagged:{result.flagged}")
        return result.probabilities

    def _policy(self, principal: Principal) -> OutputPolicy:
        text = principal.output_policy or self.settings.default_output_policy
        return OutputPolicy.parse(text)

    def _send_to_monitor(
        self,
        principal: Principal,
        model: ServedModelLike,
        rows: np.ndarray,
        probabilities: np.ndarray,
        request_id: str,
        event: AuditEvent,
    ) -> None:
        # The extraction queue's single call site: never raises. A query that did not reach the
        # queue is a gap in the monitor's view: the audit record says so and a metric counts it.
        if self.query_sink is None:
            return
        best = np.argmax(probabilities, axis=1)
        sent = self.query_sink.send(
            principal_id=principal.principal_id,
            model=model.name,
            request_id=request_id,
            rows=rows,
            labels=[str(model.classes[int(i)]) for i in best],
            confidences=probabilities[np.arange(len(best)), best],
        )
        if not sent:
            event.flags.append(MONITOR_QUEUE_FAILED)


def _www_authenticate(settings: Settings) -> str:
    challenges = ['ApiKey realm="mlmoat", header="X-API-Key"']
    if settings.jwt_enabled:
        challenges.append('Bearer realm="mlmoat"')
    return ", ".join(challenges)


def _install_error_handlers(app: FastAPI, settings: Settings) -> None:
    www_authenticate = _www_authenticate(settings)

    async def on_security_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, SecurityError):  # pragma: no cover - registered for it only
            raise exc
        event = _audit_event(request)
        event.reason = exc.reason
        if exc.detail:
            event.flags.append(f"detail:{exc.detail}"[:120])
        error = error_response_for(exc)
        headers = dict(exc.headers)
        if error.status == 401:
            headers["WWW-Authenticate"] = www_authenticate
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int) and error.status in (429, 503):
            headers["Retry-After"] = str(retry_after)
        return _envelope(error, event.request_id, headers)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
            raise exc
        event = _audit_event(request)
        reason, error = _HTTP_RESPONSES.get(exc.status_code, ("http_error", _INTERNAL))
        if exc.status_code not in _HTTP_RESPONSES:
            error = ErrorResponse(exc.status_code, "http_error", "The request failed.")
        event.reason = reason
        headers = {}
        if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
            headers["Allow"] = exc.headers["Allow"]
        return _envelope(error, event.request_id, headers)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        # FastAPI's own 422 echoes the input and pydantic's internals: never let it out.
        event = _audit_event(request)
        event.reason = "invalid_request"
        error = ErrorResponse(422, "invalid_request", "The request does not match the API.")
        return _envelope(error, event.request_id)

    app.add_exception_handler(SecurityError, on_security_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)


_ERROR_STATUSES = {
    "400": "Malformed JSON, duplicate keys, or nesting too deep",
    "401": "Missing or invalid credentials (with WWW-Authenticate)",
    "403": "Credentials without the model's scope",
    "404": "Unknown model",
    "413": "Body or batch too large",
    "415": "Content-Type is not application/json",
    "422": "A feature rule failed (the message names the rule, never a value)",
    "429": "Rate window (Retry-After) or query budget (budget_exhausted, no Retry-After) used up",
    "503": "A dependency failed; fail closed (with Retry-After)",
}


def _route_docs(schema_ref: str, *, models: list[str] | None = None) -> dict[str, Any]:
    text = {"schema": {"type": "string"}}
    request_id = {**text, "description": "API Gateway's request id (also in the body)"}
    rate_headers = {
        "RateLimit-Policy": {**text, "description": "draft-ietf-httpapi-ratelimit-headers"},
        "RateLimit": {**text, "description": "Rows left in the window and the budget"},
    }
    responses: dict[int | str, dict[str, Any]] = {
        200: {
            "model": PredictResponse,
            "description": "Predictions under the output policy",
            "headers": {REQUEST_ID_HEADER: request_id, **rate_headers},
        }
    }
    for status, description in _ERROR_STATUSES.items():
        headers: dict[str, Any] = {REQUEST_ID_HEADER: request_id}
        if status == "401":
            headers["WWW-Authenticate"] = text
        if status in ("429", "503"):
            headers["Retry-After"] = {"schema": {"type": "integer"}}
        responses[status] = {"model": ErrorEnvelope, "description": description, "headers": headers}
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


def create_app(
    *,
    settings: Settings,
    registry: RegistryLike,
    schemas: Mapping[str, FeatureSchema],
    authenticator: Authenticator,
    gatekeeper: Gatekeeper,
    audit: AuditLog,
    squeezer: Squeezer | None = None,
    query_sink: QuerySink | None = None,
    docs: bool = False,
) -> FastAPI:
    """Build the prediction API around the security layer.

    ``schemas`` maps each served model's name to its ``FeatureSchema`` (``schemas_for``).
    ``docs`` enables FastAPI's ``/docs`` and ``/openapi.json`` and the response models of the
    OpenAPI document: off in Lambda, where building those models (FastAPI imports
    ``pydantic.v1`` to inspect them) would cost about half a second of cold start for nothing.

    Raises:
        ValueError: the default model is not among ``schemas``.
    """
    if settings.default_model not in schemas:
        raise ValueError("the default model is not served")
    app = FastAPI(
        title="mlmoat",
        version="1.0.0",
        description="A moat around a machine-learning model: authenticated, counted, validated "
        "and audited predictions.",
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        # No redirects: a 307 for a trailing slash built its Location from Host and
        # X-Forwarded-Proto (caller-controlled); an unknown path is a 404 in the envelope.
        redirect_slashes=False,
    )
    service = _PredictService(
        settings=settings,
        registry=registry,
        schemas=schemas,
        authenticator=authenticator,
        gatekeeper=gatekeeper,
        squeezer=squeezer,
        query_sink=query_sink,
    )
    default_ref = f"#/components/schemas/PredictRequest_{settings.default_model}"
    any_ref = "#/components/schemas/PredictRequest"

    @app.post(
        "/predict",
        summary="Predict with the default model",
        operation_id="predict",
        **(_route_docs(default_ref) if docs else {}),
    )
    async def predict_default(request: Request) -> Response:
        return await service.predict(request, settings.default_model, "/predict")

    @app.post(
        "/models/{model}/predict",
        summary="Predict with a named model",
        operation_id="predict_model",
        **(_route_docs(any_ref, models=list(schemas)) if docs else {}),
    )
    async def predict_model(request: Request) -> Response:
        # Read from the path rather than as a typed parameter: FastAPI would build a pydantic
        # field for it at cold start, and the value is checked against the served models anyway.
        model = str(request.path_params["model"])
        return await service.predict(request, model, "/models/{model}/predict")

    _install_error_handlers(app, settings)
    app.add_middleware(AuditMiddleware, audit=audit)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app, schemas, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


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


def schemas_for(
    registry: RegistryLike, names: Sequence[str], *, margin: float
) -> dict[str, FeatureSchema]:
    """Build each served model's request schema from its manifest.

    Raises:
        NotFoundError: a name is not in the registry.
    """
    result: dict[str, FeatureSchema] = {}
    for name in names:
        model = registry.get(name)
        manifest = getattr(model, "manifest", None)
        feature_names = _manifest_value(manifest, "feature_names")
        envelope = _manifest_value(manifest, "envelope")
        result[name] = FeatureSchema.from_manifest(name, feature_names, envelope, margin=margin)
    return result


def _manifest_value(manifest: Any, key: str) -> Any:
    if isinstance(manifest, Mapping):
        return manifest[key]
    return getattr(manifest, key)


def build_app(
    settings: Settings,
    *,
    dynamodb_client: Any,
    sqs_client: Any | None = None,
    ssm_client: Any | None = None,
    audit: AuditLog | None = None,
    docs: bool = False,
) -> FastAPI:
    """Wire the whole layer from settings and clients (what a handler does once at init).

    Loads and verifies every model under ``settings.model_dir``, builds their request schemas,
    the squeezing defence, the authenticator (with JWT verification when configured), the
    gatekeeper over ``PrincipalStore``, the extraction queue sink when a queue is configured,
    and the audit log.

    Raises:
        ModelIntegrityError: an artifact or its defences file does not match its manifest.
    """
    from security.auth import Authenticator
    from security.defences import Squeezer
    from security.extraction import QuerySink
    from security.limits import Gatekeeper
    from security.model import ModelRegistry
    from security.store import PrincipalStore

    install_log_redaction()
    registry = ModelRegistry.load(settings.model_dir)
    verifier: TokenVerifier | None = None
    if settings.jwt_enabled:
        # Imported only when configured: PyJWT and cryptography cost ~80 ms of cold start.
        from security.tokens import TokenVerifier

        verifier = TokenVerifier(settings=settings, ssm_client=ssm_client)
    sink = (
        QuerySink(client=sqs_client, queue_url=settings.extraction_queue_url)
        if settings.extraction_queue_url and sqs_client is not None
        else None
    )
    squeezer = Squeezer.from_manifest(
        settings.model_dir,
        [(model.name, model.version) for model in registry],
        policy=settings.squeeze_policy,
    )
    return create_app(
        settings=settings,
        registry=registry,
        schemas=schemas_for(registry, registry.names, margin=settings.envelope_margin),
        authenticator=Authenticator(settings=settings, token_verifier=verifier),
        gatekeeper=Gatekeeper(
            store=PrincipalStore(client=dynamodb_client, table_name=settings.table_name),
            settings=settings,
        ),
        audit=audit or AuditLog(service=settings.service_name),
        squeezer=None if settings.squeeze_policy == "off" else squeezer,
        query_sink=sink,
        docs=docs,
    )


def create_admin_app(*, settings: Settings, router: APIRouter, audit: AuditLog) -> FastAPI:
    """The admin API (AdminFunction): ``router``'s routes behind the same envelope, error table,
    request ids and audit records as the prediction API. Docs routes are off."""
    app = FastAPI(
        title="mlmoat admin",
        version="1.0.0",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    app.include_router(router)
    _install_error_handlers(app, settings)
    app.add_middleware(AuditMiddleware, audit=audit)
    return app
