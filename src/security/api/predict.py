"""The prediction API: ``POST /predict`` and ``POST /models/{model}/predict``.

One request goes through the layer (``docs/architecture.md``, "Request path")::

    credentials (auth, no I/O) -> model lookup -> body validation (no I/O)
      -> admission (one conditional DynamoDB write) -> squeezing + smoothing defences -> predict
      -> output policy -> extraction queue -> response; one audit record whatever happened

Refusals after authentication carry the ``RateLimit-Policy``/``RateLimit`` headers. The real
reason of a refusal goes to the audit record, never to the client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from security.api.shell import audit_event, aws_event
from security.audit import MONITOR_QUEUE_FAILED, AuditEvent
from security.errors import (
    AdversarialInputError,
    AuthenticationError,
    InvalidPayloadError,
    ModelIntegrityError,
    ModelUnavailableError,
    NotFoundError,
    RateLimitedError,
    SecurityError,
)
from security.limits import NEVER_FITS
from security.model_settings import ModelSettings
from security.policy import OutputPolicy
from security.regression import ServedValues, apply_value_policy, serve_values
from security.sanitize import apply_output_policy
from security.smoothing import Served, serve
from security.validation import FeatureSchema, parse_prediction_request

_NO_SETTINGS = ModelSettings()

if TYPE_CHECKING:
    from security.auth import Authenticator, Credentials, Principal
    from security.defences import Squeezer
    from security.extraction import QuerySink
    from security.extraction.sink import Delivery
    from security.limits import Gatekeeper
    from security.regression import ValueModel
    from security.runtime_config import RuntimeConfigSource
    from security.settings import Settings
    from security.smoothing import Smoother


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
            ModelUnavailableError: the model failed verification at init.
            NotFoundError: no such model.
        """


def schemas_for(
    registry: RegistryLike, names: Sequence[str], *, margin: float
) -> dict[str, FeatureSchema]:
    """Build each served model's request schema from its manifest.

    Raises:
        NotFoundError: a name is not in the registry.
    """
    result: dict[str, FeatureSchema] = {}
    for name in names:
        manifest = getattr(registry.get(name), "manifest", None)
        feature_names = _manifest_value(manifest, "feature_names")
        envelope = _manifest_value(manifest, "envelope")
        categories = getattr(manifest, "categories", None)
        result[name] = FeatureSchema.from_manifest(
            name, feature_names, envelope, margin=margin, categories=categories
        )
    return result


def _manifest_value(manifest: Any, key: str) -> Any:
    if isinstance(manifest, Mapping):
        return manifest[key]
    return getattr(manifest, key)


class PredictService:
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
        smoother: Smoother | None = None,
        runtime_config: RuntimeConfigSource | None = None,
        model_settings: Mapping[str, ModelSettings] | None = None,
    ) -> None:
        self.settings = settings
        self.model_settings = model_settings or {}
        self.smoother = smoother
        self.registry = registry
        self.schemas = schemas
        self.authenticator = authenticator
        self.gatekeeper = gatekeeper
        self.squeezer = squeezer
        self.query_sink = query_sink
        self.runtime_config = runtime_config

    async def predict(self, request: Request, model_name: str, route: str) -> Response:
        """Serve one prediction request, or raise the ``SecurityError`` that refuses it.

        Raises:
            SecurityError: any refusal; the exception handlers turn it into the envelope.
        """
        event = audit_event(request)
        event.route = route
        event.model = model_name[:64]
        request_id = event.request_id
        source_ip = event.source_ip or "unknown"

        try:
            credentials = self.authenticator.read_credentials(
                request.headers, event=aws_event(request.scope)
            )
        except AuthenticationError as exc:
            # A token with a bad signature is a guess: the guessing throttle counts it.
            raise self.gatekeeper.credential_failure(exc, source_ip=source_ip) from exc
        event.identify(credentials)

        schema = self.schemas.get(model_name)
        if schema is None:
            raise self._not_served(credentials, model_name, request_id, source_ip)
        model = self.registry.get(model_name)
        event.model_version = model.version
        own = self.model_settings.get(model_name, _NO_SETTINGS)

        body = await request.body()
        try:
            parsed = parse_prediction_request(
                body,
                request.headers.get("content-type"),
                schema,
                max_body_bytes=self.settings.max_body_bytes,
                max_rows=min(self.settings.max_rows, own.max_rows or self.settings.max_rows),
            )
        except InvalidPayloadError as exc:
            # A refused body costs one of the caller's refusals (no rows), and only real callers
            # learn why it was refused: probing the schema is not free (docs/limits.md).
            exc.headers.update(
                self.gatekeeper.refuse(
                    credentials, model=model_name, request_id=request_id, source_ip=source_ip
                )
            )
            self._report_refusal(credentials.principal_id, model_name, event, exc.reason)
            raise
        event.record_input(parsed.rows, raw=self.settings.audit_raw_features)
        # Before admission: a request refused for an unreadable runtime document costs nothing.
        squeezer = self._squeezer_for(model_name)

        try:
            admission = self.gatekeeper.admit(
                credentials,
                model=model_name,
                rows=parsed.n_rows,
                request_id=request_id,
                source_ip=source_ip,
            )
        except RateLimitedError as exc:
            if exc.detail == NEVER_FITS:  # a batch larger than any window: a counted refusal
                self._report_refusal(credentials.principal_id, model_name, event, exc.reason)
            raise
        principal = admission.principal
        event.identify(principal)
        rate_headers = admission.headers()

        target_range = _regressor_range(model)
        try:
            served = self._predict(model, parsed.rows, event, rate_headers, squeezer, target_range)
        except AdversarialInputError as exc:
            # Its rows were charged by the admission; the refusal is counted too, so squeezing
            # refusals spend the same allowance as any other.
            self.gatekeeper.refuse(
                credentials, model=model_name, request_id=request_id, source_ip=source_ip
            )
            self._report_refusal(principal.principal_id, model_name, event, exc.reason)
            raise
        policy = own.narrowed(
            OutputPolicy.parse(principal.output_policy or self.settings.default_output_policy)
        )
        if isinstance(served, ServedValues):
            event.output_policy = str(policy.for_regressor())
            predictions = apply_value_policy(policy, served.values, served.target_range)
            self._send_to_monitor(principal, model, parsed.rows, None, request_id, event)
        else:
            event.output_policy = str(policy)
            predictions = apply_output_policy(
                policy, model.classes, served.probabilities, served.labels
            )
            self._send_to_monitor(principal, model, parsed.rows, served, request_id, event)

        body_out = {
            "model": model.name,
            "model_version": model.version,
            "predictions": predictions,
            "request_id": request_id,
        }
        return JSONResponse(body_out, status_code=200, headers=rate_headers)

    def _not_served(
        self, credentials: Credentials, model_name: str, request_id: str, source_ip: str
    ) -> SecurityError:
        """The refusal of a request for a model that is not served, once the caller is known.

        Only authenticated callers learn that a model does not exist (404, one of their
        refusals) or that it failed verification at init (503 ``model_unavailable``: one read
        authenticates them and checks the model's scope; nothing is charged, it is not their
        fault).
        """
        try:
            self.registry.get(model_name)
        except ModelUnavailableError as exc:
            _, headers = self.gatekeeper.authenticate_with_headers(
                credentials, model=model_name, source_ip=source_ip
            )
            exc.headers.update(headers)
            return exc
        except NotFoundError:
            pass
        missing = NotFoundError("unknown_model")
        missing.headers.update(
            self.gatekeeper.refuse(
                credentials, model=model_name, request_id=request_id, source_ip=source_ip
            )
        )
        return missing

    def _predict(
        self,
        model: ServedModelLike,
        rows: np.ndarray,
        event: AuditEvent,
        rate_headers: Mapping[str, str],
        squeezer: Squeezer | None,
        target_range: tuple[float, float] | None,
    ) -> Served | ServedValues:
        # The defences' single call site, between validation and prediction: squeeze and score
        # (under the policy in effect now), smooth (one batched model call either way); a
        # regressor is squeezed by value and not smoothed (security.regression). The radii go
        # to the audit record only.
        served: Served | ServedValues
        try:
            if target_range is not None:
                values_model = cast("ValueModel", model)
                served = serve_values(
                    values_model, rows, squeezer=squeezer, target_range=target_range
                )
            else:
                served = serve(model, rows, squeezer=squeezer, smoother=self.smoother)
        except AdversarialInputError as exc:
            exc.headers.update(rate_headers)
            raise
        if served.flagged:
            event.flags.append(f"squeeze_flagged:{served.flagged}")
        if isinstance(served, Served) and served.radii is not None:
            event.certified_radius = [round(float(r), 4) for r in served.radii]
        return served

    def _squeezer_for(self, model_name: str) -> Squeezer | None:
        """The squeezer under the policy in effect for ``model_name`` now.

        Raises:
            RuntimeConfigUnavailableError: the runtime document is malformed or unreadable.
            ModelIntegrityError: a runtime policy turns squeezing on for a deployment that
                loaded no calibration.
        """
        own = self.model_settings.get(model_name, _NO_SETTINGS).squeeze_policy
        default = own or self.settings.squeeze_policy
        if self.runtime_config is None:
            if self.squeezer is None or own is None:
                return self.squeezer
            return self.squeezer.with_policy(own)
        policy = self.runtime_config.current().value(
            "squeeze_policy", model=model_name, default=default
        )
        if self.squeezer is None:
            if policy == "off":
                return None
            raise ModelIntegrityError("defences_missing", detail=f"model={model_name}")
        return self.squeezer.with_policy(policy)

    def _report_refusal(
        self, principal_id: str, model: str, event: AuditEvent, reason: str
    ) -> None:
        # Sustained refusals are a signal of their own to the extraction monitor (probing the
        # envelope or the decision boundary through refusals); never raises.
        if self.query_sink is not None:
            delivery = self.query_sink.send_refusal(
                principal_id=principal_id, model=model, request_id=event.request_id, reason=reason
            )
            _record_delivery(event, delivery)

    def _send_to_monitor(
        self,
        principal: Principal,
        model: ServedModelLike,
        rows: np.ndarray,
        served: Served | None,
        request_id: str,
        event: AuditEvent,
    ) -> None:
        # The extraction queue's single call site for served queries: never raises. The sink
        # buffers and sends in batches; a query that did not reach the queue is a gap in the
        # monitor's view: the audit record of the request whose send found out names it and a
        # metric counts it (docs/audit.md).
        if self.query_sink is None:
            return
        if served is None:  # a regressor: its rows alone (off-manifold and PRADA detectors)
            delivery = self.query_sink.send(
                principal_id=principal.principal_id,
                model=model.name,
                request_id=request_id,
                rows=rows,
            )
            _record_delivery(event, delivery)
            return
        best = served.labels
        delivery = self.query_sink.send(
            principal_id=principal.principal_id,
            model=model.name,
            request_id=request_id,
            rows=rows,
            labels=[str(model.classes[int(i)]) for i in best],
            confidences=served.probabilities[np.arange(len(best)), best],
        )
        _record_delivery(event, delivery)


def _regressor_range(model: ServedModelLike) -> tuple[float, float] | None:
    """A regressor's training target range (``security.manifest``); None for a classifier."""
    manifest = getattr(model, "manifest", None)
    if getattr(manifest, "kind", "classifier") != "regressor":
        return None
    low, high = manifest.target_range  # type: ignore[union-attr]
    return float(low), float(high)


def _record_delivery(event: AuditEvent, delivery: Delivery) -> None:
    event.monitor_queue = delivery.position()
    if delivery.lost:
        event.flags.append(MONITOR_QUEUE_FAILED)
        event.monitor_queue_lost = list(delivery.lost)


def predict_router(service: PredictService, *, docs: bool = False) -> APIRouter:
    """The two predict routes over ``service``; ``docs`` adds their OpenAPI response tables."""
    settings = service.settings
    router = APIRouter()
    default_docs: dict[str, Any] = {}
    named_docs: dict[str, Any] = {}
    if docs:
        from security.api.openapi import predict_route_docs

        default_docs = predict_route_docs(
            f"#/components/schemas/PredictRequest_{settings.default_model}"
        )
        named_docs = predict_route_docs(
            "#/components/schemas/PredictRequest", models=list(service.schemas)
        )

    @router.post(
        "/predict", summary="Predict with the default model", operation_id="predict", **default_docs
    )
    async def predict_default(request: Request) -> Response:
        return await service.predict(request, settings.default_model, "/predict")

    @router.post(
        "/models/{model}/predict",
        summary="Predict with a named model",
        operation_id="predict_model",
        **named_docs,
    )
    async def predict_model(request: Request) -> Response:
        # Read from the path rather than as a typed parameter: FastAPI would build a pydantic
        # field for it at cold start, and the value is checked against the served models anyway.
        model = str(request.path_params["model"])
        return await service.predict(request, model, "/models/{model}/predict")

    return router
