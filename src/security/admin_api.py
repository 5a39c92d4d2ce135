"""The admin API's routes, as a FastAPI ``APIRouter`` (mounted by ``integration.create_admin_app``).

Every route requires credentials carrying the ``admin`` scope, authenticated with one consistent
read (``Gatekeeper.authenticate``; nothing is charged). The routes are thin: every rule lives in
``admin.KeyAdmin``. Responses that contain a secret (create, rotate) are marked ``no-store``.
Errors are ``SecurityError`` subclasses, answered by the app's error table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from security.audit import AuditEvent
from security.errors import (
    ForbiddenError,
    InvalidPayloadError,
    MalformedBodyError,
    PayloadTooLargeError,
)

if TYPE_CHECKING:
    from security.admin import KeyAdmin
    from security.auth import Authenticator, Principal
    from security.limits import Gatekeeper

_NO_STORE = {"Cache-Control": "no-store"}


class CreateKeyBody(BaseModel):
    """``POST /admin/keys``: what the new key may do."""

    model_config = ConfigDict(extra="forbid")

    owner: str = Field(min_length=1, max_length=128)
    scopes: list[str] = Field(default_factory=list, max_length=32)
    rate_limit: str | None = Field(default=None, max_length=32)
    budget: int | None = Field(default=None, ge=1, le=10**12)
    output_policy: str | None = Field(default=None, max_length=64)
    expires_in: str | None = Field(default=None, max_length=16)


class RotateKeyBody(BaseModel):
    """``POST /admin/keys/{key_id}/rotate``: how long the old secret stays valid."""

    model_config = ConfigDict(extra="forbid")

    grace: str = Field(default="1h", max_length=16)


_MAX_BODY_BYTES = 4096
_M = TypeVar("_M", bound=BaseModel)


async def _parse_body(request: Request, model: type[_M]) -> _M:
    # Parsed here, after authentication, so an anonymous caller learns nothing about the schema.
    raw = await request.body()
    if len(raw) > _MAX_BODY_BYTES:
        raise PayloadTooLargeError("payload_too_large")
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        kinds = {error.get("type") for error in exc.errors()}
        if "json_invalid" in kinds or "model_type" in kinds:
            raise MalformedBodyError("malformed_body") from exc
        raise InvalidPayloadError("invalid_admin_request") from exc


def _source_ip(request: Request) -> str:
    event = request.scope.get("aws.event") or {}
    identity = (event.get("requestContext") or {}).get("identity") or {}
    http = (event.get("requestContext") or {}).get("http") or {}
    ip = identity.get("sourceIp") or http.get("sourceIp")
    if isinstance(ip, str) and ip:
        return ip
    return request.client.host if request.client else "unknown"


def create_admin_router(
    *, admin: KeyAdmin, authenticator: Authenticator, gatekeeper: Gatekeeper
) -> APIRouter:
    """Routes under ``/admin/keys`` behind the ``admin`` scope."""
    def require_admin(request: Request) -> Principal:
        credentials = authenticator.read_credentials(
            request.headers, event=request.scope.get("aws.event")
        )
        event = getattr(request.state, "audit", None)
        if isinstance(event, AuditEvent):
            event.identify(credentials)
        principal = gatekeeper.authenticate(credentials, model=None, source_ip=_source_ip(request))
        if not principal.is_admin:
            raise ForbiddenError("admin_scope_required")
        return principal

    # One router-level dependency: no route under /admin/keys can forget the admin check.
    router = APIRouter(prefix="/admin/keys", dependencies=[Depends(require_admin)])

    @router.post("", status_code=201, summary="Create an API key (the secret is shown once)")
    async def create_key(request: Request) -> JSONResponse:
        body = await _parse_body(request, CreateKeyBody)
        created = admin.create(
            owner=body.owner,
            scopes=body.scopes,
            rate_limit=body.rate_limit,
            budget=body.budget,
            output_policy=body.output_policy,
            expires_in=body.expires_in,
        )
        return JSONResponse(created, status_code=201, headers=_NO_STORE)

    @router.get("", summary="List API keys")
    async def list_keys(owner: str | None = None) -> dict[str, Any]:
        return {"keys": admin.list(owner=owner)}

    @router.get("/{key_id}", summary="Show one API key")
    async def show_key(key_id: str) -> dict[str, Any]:
        return admin.show(key_id)

    @router.get("/{key_id}/usage", summary="Usage counters of one API key")
    async def key_usage(key_id: str) -> dict[str, Any]:
        return admin.usage(key_id)

    @router.post("/{key_id}/revoke", summary="Revoke an API key for good")
    async def revoke_key(key_id: str) -> dict[str, Any]:
        return admin.revoke(key_id)

    @router.post("/{key_id}/suspend", summary="Suspend an API key")
    async def suspend_key(key_id: str) -> dict[str, Any]:
        return admin.suspend(key_id)

    @router.post("/{key_id}/reinstate", summary="Reinstate a suspended API key")
    async def reinstate_key(key_id: str) -> dict[str, Any]:
        return admin.reinstate(key_id)

    @router.post("/{key_id}/rotate", summary="Rotate an API key's secret (shown once)")
    async def rotate_key(request: Request, key_id: str) -> JSONResponse:
        body = await _parse_body(request, RotateKeyBody)
        rotated = admin.rotate(key_id, grace=body.grace)
        return JSONResponse(rotated, headers=_NO_STORE)

    return router
