"""The app shell every API function shares: request id, source IP, one audit record, envelopes.

``new_app`` builds a FastAPI app with the shell installed; routers (``security.api.predict``,
``security.api.admin``, or a function of your own) are mounted on it. Every response, including
Starlette's own 404/405 and the 500 fallback, leaves in one envelope
``{"error": {"code", "message", "request_id"}}`` with an ``X-Request-Id`` header (API Gateway's
``requestContext.requestId`` when there is one) and ``Cache-Control: no-store``. 401 carries
``WWW-Authenticate`` and 429/503 ``Retry-After`` when the error has one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from security.api.edge import MALFORMED_MARK
from security.api.errors import (
    HTTP_RESPONSES,
    INTERNAL,
    MALFORMED_HEADER,
    REQUEST_MISMATCH,
    ErrorResponse,
    error_response_for,
)
from security.audit import AuditEvent, AuditLog
from security.errors import SecurityError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from security.settings import Settings

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_MAX_ROUTE_CHARS = 200


def aws_event(scope: Scope) -> Mapping[str, Any]:
    """The API Gateway event Mangum put in the ASGI scope (empty outside Lambda)."""
    event = scope.get("aws.event")
    return event if isinstance(event, Mapping) else {}


def request_id_for(scope: Scope) -> str:
    """API Gateway's ``requestContext.requestId`` when well-formed, else a fresh UUID."""
    context = aws_event(scope).get("requestContext")
    candidate = context.get("requestId") if isinstance(context, Mapping) else None
    if isinstance(candidate, str) and _REQUEST_ID_RE.match(candidate):
        return candidate
    return str(uuid.uuid4())


def source_ip_for(scope: Scope) -> str | None:
    """The caller's address as API Gateway saw it (REST v1 or HTTP API v2), else the socket's."""
    context = aws_event(scope).get("requestContext")
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


def envelope(
    error: ErrorResponse, request_id: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The error envelope of ``error`` for one request."""
    body = {"error": {"code": error.code, "message": error.message, "request_id": request_id}}
    return JSONResponse(body, status_code=error.status, headers=dict(headers or {}))


def audit_event(request: Request) -> AuditEvent:
    """The request's audit record (set by ``AuditMiddleware``)."""
    event = getattr(request.state, "audit", None)
    if not isinstance(event, AuditEvent):  # pragma: no cover - the middleware always sets it
        raise RuntimeError("audit middleware is not installed")
    return event


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
        invocation = self.audit.enter(scope.get("aws.context"))
        event.function_request_id = invocation.function_request_id
        event.cold_start = invocation.cold_start
        scope.setdefault("state", {})["audit"] = event
        self.audit.begin(request_id)
        malformed = aws_event(scope).get(MALFORMED_MARK)
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
            if malformed:
                # Mangum could not have read this event as sent (``security.api.edge``).
                event.reason = "malformed_header"
                event.flags.append(f"detail:{malformed}"[:120])
                await envelope(MALFORMED_HEADER, request_id)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        # The single 500 fallback: log the detail, answer generically.
        except Exception as exc:  # noqa: BLE001
            self.audit.error("unhandled_error", exc=exc)
            event.reason = "internal_error"
            if not started:
                await envelope(INTERNAL, request_id)(scope, receive, send_with_id)
        finally:
            event.finish(status=started[0] if started else 500)
            self.audit.emit(event)


def www_authenticate(settings: Settings) -> str:
    """The 401 challenge: the API key header, and bearer tokens when JWT is on."""
    challenges = ['ApiKey realm="mlmoat", header="X-API-Key"']
    if settings.jwt_enabled:
        challenges.append('Bearer realm="mlmoat"')
    return ", ".join(challenges)


def install_error_handlers(app: FastAPI, settings: Settings) -> None:
    """Answer ``SecurityError``, Starlette's routing errors and FastAPI's 422 in the envelope."""
    challenge = www_authenticate(settings)

    async def on_security_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, SecurityError):  # pragma: no cover - registered for it only
            raise exc
        event = audit_event(request)
        event.reason = exc.reason
        if exc.detail:
            event.flags.append(f"detail:{exc.detail}"[:120])
        error = error_response_for(exc)
        headers = dict(exc.headers)
        if error.status == 401:
            headers["WWW-Authenticate"] = challenge
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int) and error.status in (429, 503):
            headers["Retry-After"] = str(retry_after)
        return envelope(error, event.request_id, headers)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
            raise exc
        event = audit_event(request)
        reason, error = HTTP_RESPONSES.get(exc.status_code, ("http_error", INTERNAL))
        if exc.status_code not in HTTP_RESPONSES:
            error = ErrorResponse(exc.status_code, "http_error", "The request failed.")
        event.reason = reason
        headers = {}
        if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
            headers["Allow"] = exc.headers["Allow"]
        return envelope(error, event.request_id, headers)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        # FastAPI's own 422 echoes the input and pydantic's internals: never let it out.
        event = audit_event(request)
        event.reason = "invalid_request"
        return envelope(REQUEST_MISMATCH, event.request_id)

    app.add_exception_handler(SecurityError, on_security_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)


def new_app(
    *,
    settings: Settings,
    audit: AuditLog,
    title: str,
    description: str = "",
    docs: bool = False,
    state: Mapping[str, Any] | None = None,
) -> FastAPI:
    """A FastAPI app with the shell installed; mount routers on it.

    ``state`` goes to ``app.state`` (``RequirePrincipal`` finds the authenticator and the
    gatekeeper there). ``docs`` enables ``/docs`` and ``/openapi.json``: off in Lambda.
    """
    app = FastAPI(
        title=title,
        version="1.0.0",
        description=description,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        # No redirects: a 307 for a trailing slash built its Location from Host and
        # X-Forwarded-Proto (caller-controlled); an unknown path is a 404 in the envelope.
        redirect_slashes=False,
    )
    for name, value in (state or {}).items():
        setattr(app.state, name, value)
    install_error_handlers(app, settings)
    app.add_middleware(AuditMiddleware, audit=audit)
    return app
