"""The admin API's routes (``/admin/keys``, ``/admin/subjects``), as a FastAPI ``APIRouter``.

Every route requires the IAM identity API Gateway verified with SigV4 (``RequireIamCaller``;
``AWS_IAM`` on the routes in template.yaml): no API key or token is ever read here. The routes
are thin: every rule lives in ``security.admin.KeyAdmin``. Errors are ``SecurityError``
subclasses, answered by the error table in admin wording
(``security.api.errors.ADMIN_REASON_RESPONSES``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from security.api.deps import RequireIamCaller
from security.errors import InvalidPayloadError, MalformedBodyError, PayloadTooLargeError

if TYPE_CHECKING:
    from security.admin import KeyAdmin

ADMIN_PREFIX = "/admin/keys"
SUBJECTS_PREFIX = "/admin/subjects"
_MAX_BODY_BYTES = 4096
_M = TypeVar("_M", bound=BaseModel)


class CreateKeyBody(BaseModel):
    """``POST /admin/keys``: what the new key may do."""

    model_config = ConfigDict(extra="forbid")

    owner: str = Field(min_length=1, max_length=128)
    scopes: list[str] = Field(default_factory=list, max_length=32)
    rate_limit: str | None = Field(default=None, max_length=32)
    budget: int | None = Field(default=None, ge=1, le=10**12)
    output_policy: str | None = Field(default=None, max_length=64)
    expires_in: str | None = Field(default=None, max_length=16)
    shards: int = Field(default=1, ge=1, le=64)


class RotateKeyBody(BaseModel):
    """``POST /admin/keys/{key_id}/rotate``: how long the old secret stays valid."""

    model_config = ConfigDict(extra="forbid")

    grace: str = Field(default="1h", max_length=16)


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


def admin_router(admin: KeyAdmin, *, docs: bool = False) -> APIRouter:
    """Routes under ``/admin/keys`` and ``/admin/subjects``, behind the IAM identity.

    ``docs`` adds each route's OpenAPI extras (request body, responses, the SigV4 scheme).
    """
    # One router-level dependency: no admin route can forget the IAM check.
    router = APIRouter(dependencies=[Depends(RequireIamCaller())])

    def doc(status: int, description: str, body: type[BaseModel] | None = None) -> dict[str, Any]:
        if not docs:
            return {}
        from security.api.openapi import admin_route_docs

        return admin_route_docs(status=status, description=description, body=body)

    @router.post(
        ADMIN_PREFIX,
        status_code=201,
        summary="Create an API key (the secret is shown once)",
        **doc(201, "The new key's record and its secret (shown once)", CreateKeyBody),
    )
    async def create_key(request: Request) -> JSONResponse:
        body = await _parse_body(request, CreateKeyBody)
        created = admin.create(
            owner=body.owner,
            scopes=body.scopes,
            rate_limit=body.rate_limit,
            budget=body.budget,
            output_policy=body.output_policy,
            expires_in=body.expires_in,
            shards=body.shards,
        )
        return JSONResponse(created, status_code=201)

    @router.get(ADMIN_PREFIX, summary="List API keys", **doc(200, "The keys (no secrets)"))
    async def list_keys(owner: str | None = None) -> dict[str, Any]:
        return {"keys": admin.list(owner=owner)}

    @router.get(
        ADMIN_PREFIX + "/{key_id}", summary="Show one API key", **doc(200, "The key's record")
    )
    async def show_key(key_id: str) -> dict[str, Any]:
        return admin.show(key_id)

    @router.get(
        ADMIN_PREFIX + "/{key_id}/usage",
        summary="Usage counters of one API key",
        **doc(200, "Rows used in the window and of the budget"),
    )
    async def key_usage(key_id: str) -> dict[str, Any]:
        return admin.usage(key_id)

    @router.post(
        ADMIN_PREFIX + "/{key_id}/revoke",
        summary="Revoke an API key for good",
        **doc(200, "The key's record, revoked"),
    )
    async def revoke_key(key_id: str) -> dict[str, Any]:
        return admin.revoke(key_id)

    @router.post(
        ADMIN_PREFIX + "/{key_id}/suspend",
        summary="Suspend an API key",
        **doc(200, "The key's record, suspended"),
    )
    async def suspend_key(key_id: str) -> dict[str, Any]:
        return admin.suspend(key_id)

    @router.post(
        ADMIN_PREFIX + "/{key_id}/reinstate",
        summary="Reinstate a suspended API key",
        **doc(200, "The key's record, active again"),
    )
    async def reinstate_key(key_id: str) -> dict[str, Any]:
        return admin.reinstate(key_id)

    @router.post(
        ADMIN_PREFIX + "/{key_id}/rotate",
        summary="Rotate an API key's secret (shown once)",
        **doc(200, "The new secret (shown once) and when the old one stops", RotateKeyBody),
    )
    async def rotate_key(request: Request, key_id: str) -> JSONResponse:
        body = await _parse_body(request, RotateKeyBody)
        return JSONResponse(admin.rotate(key_id, grace=body.grace))

    @router.get(
        SUBJECTS_PREFIX + "/{subject}",
        summary="Show a JWT subject",
        **doc(200, "The subject's status and counters"),
    )
    async def show_subject(subject: str, issuer: str | None = None) -> dict[str, Any]:
        return admin.show_subject(subject, issuer=issuer)

    @router.post(
        SUBJECTS_PREFIX + "/{subject}/suspend",
        summary="Suspend a JWT subject",
        **doc(200, "The subject, suspended"),
    )
    async def suspend_subject(subject: str, issuer: str | None = None) -> dict[str, Any]:
        return admin.suspend_subject(subject, issuer=issuer)

    @router.post(
        SUBJECTS_PREFIX + "/{subject}/reinstate",
        summary="Reinstate a JWT subject",
        **doc(200, "The subject, active again"),
    )
    async def reinstate_subject(subject: str, issuer: str | None = None) -> dict[str, Any]:
        return admin.reinstate_subject(subject, issuer=issuer)

    return router
