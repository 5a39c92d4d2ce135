"""The HTTP package: the only part of the security layer that imports FastAPI.

* ``errors``: the error table (class and reason -> status, public code, generic message);
* ``shell``: what every API function shares (request id, source IP, one audit record per
  request, the envelope, the error handlers): ``new_app``;
* ``deps``: ``RequirePrincipal(scope=...)``, the authentication dependency for routers;
* ``predict`` and ``admin``: the routers of PredictFunction and AdminFunction;
* ``openapi``: the OpenAPI document, its status tables generated from the error table.

``create_app`` and ``create_admin_app`` assemble an app from already-built collaborators;
``security.wiring`` builds those collaborators from settings and is what the handlers call.
A new API function on the same layer is one router, one factory call in ``wiring`` and one
handler file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from security.api.deps import Gate
from security.api.predict import PredictService, RegistryLike, predict_router
from security.api.shell import new_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from security.admin import KeyAdmin
    from security.audit import AuditLog
    from security.auth import Authenticator
    from security.defences import Squeezer
    from security.extraction import QuerySink
    from security.limits import Gatekeeper
    from security.model_settings import ModelSettings
    from security.runtime_config import RuntimeConfigSource
    from security.settings import Settings
    from security.smoothing import Smoother
    from security.validation import FeatureSchema

_DESCRIPTION = (
    "A moat around a machine-learning model: authenticated, counted, validated and audited "
    "predictions."
)


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
    smoother: Smoother | None = None,
    runtime_config: RuntimeConfigSource | None = None,
    model_settings: Mapping[str, ModelSettings] | None = None,
) -> FastAPI:
    """Build the prediction API around the security layer.

    ``schemas`` maps each served model's name to its ``FeatureSchema`` (``schemas_for``).
    ``docs`` enables FastAPI's ``/docs`` and ``/openapi.json`` and the response models of the
    OpenAPI document: off in Lambda (cold start).

    Raises:
        ValueError: the default model is neither among ``schemas`` nor recorded by the registry
            as unavailable (then ``/predict`` answers 503 ``model_unavailable``).
    """
    if settings.default_model not in schemas and not _unavailable(registry, settings.default_model):
        raise ValueError("the default model is not served")
    app = new_app(
        settings=settings,
        audit=audit,
        title="mlmoat",
        description=_DESCRIPTION,
        docs=docs,
        # The sink is also the function's: it flushes its buffer at shutdown (security.wiring).
        state={
            "gate": Gate(authenticator=authenticator, gatekeeper=gatekeeper),
            "query_sink": query_sink,
        },
    )
    service = PredictService(
        settings=settings,
        registry=registry,
        schemas=schemas,
        authenticator=authenticator,
        gatekeeper=gatekeeper,
        squeezer=squeezer,
        query_sink=query_sink,
        smoother=smoother,
        runtime_config=runtime_config,
        model_settings=model_settings,
    )
    app.include_router(predict_router(service, docs=docs))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from security.api.openapi import openapi_document

            app.openapi_schema = openapi_document(app, schemas, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _unavailable(registry: RegistryLike, name: str) -> bool:
    from security.errors import ModelUnavailableError, NotFoundError

    try:
        registry.get(name)
    except ModelUnavailableError:
        return True
    except NotFoundError:
        return False
    return False


def create_admin_app(
    *, settings: Settings, admin: KeyAdmin, audit: AuditLog, docs: bool = False
) -> FastAPI:
    """The admin API (AdminFunction): ``/admin/keys`` and ``/admin/subjects`` behind the same
    shell, authorised by the caller's IAM identity alone. ``docs`` as for ``create_app``."""
    from security.api.admin import CreateKeyBody, RotateKeyBody, admin_router

    app = new_app(settings=settings, audit=audit, title="mlmoat admin", docs=docs)
    app.include_router(admin_router(admin, docs=docs))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from security.api.openapi import admin_openapi_document

            app.openapi_schema = admin_openapi_document(app, (CreateKeyBody, RotateKeyBody))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


__all__ = ["create_admin_app", "create_app"]
