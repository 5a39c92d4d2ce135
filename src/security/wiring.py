"""The composition root: the one place that builds clients and assembles each function.

Each handler reads its settings and calls one function here (``predict_function``,
``admin_function``, ``monitor_function``); everything a function needs is built once at init
(cold start) the same way for all three: named client configurations, the audit log, the
root-logger leg of log redaction, the token verifier (PyJWT and cryptography imported only when
JWT is on: ~80 ms of cold start), and the SnapStart hooks (each client is a
``RefreshableClient`` rebuilt after a restore; without SnapStart the hooks are never called).
``mlmoat openapi`` builds its document from the same ``build_predict_app``. The clients are
botocore's (``botocore_client``): the functions never import boto3.

Tracing: ``security.tracing.install_tracing`` runs first in each function's assembly.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import botocore.session
from botocore.config import Config

from security.audit import AuditLog, install_log_redaction
from security.errors import ModelIntegrityError
from security.snapstart import RefreshableClient, SnapStartHooks
from security.tracing import install_tracing

if TYPE_CHECKING:
    from fastapi import FastAPI

    from security.auth import Authenticator
    from security.extraction import ExtractionMonitor
    from security.limits import Gatekeeper
    from security.model_settings import ModelSettings
    from security.runtime_config import RuntimeConfigSource
    from security.settings import Settings
    from security.store import PrincipalStore

#: Request path: a slow DynamoDB fails the request closed (503) quickly.
DYNAMODB_FAST = Config(
    connect_timeout=1, read_timeout=2, retries={"mode": "standard", "total_max_attempts": 3}
)
#: Request path: with the SDK defaults (60 s timeouts, 5 attempts) a hanging SSM ran the
#: function into its 10 s timeout, a 502 with no audit record (tests/faults).
SSM_FAST = Config(
    connect_timeout=1, read_timeout=2, retries={"mode": "standard", "total_max_attempts": 2}
)
#: The extraction queue's producer: short timeouts, one retry (a lost packet becomes a
#: delivered message rather than a monitor gap), TCP keepalive for the warm pool.
SQS_SINK = Config(
    connect_timeout=0.3,
    read_timeout=0.5,
    retries={"mode": "standard", "total_max_attempts": 2},
    tcp_keepalive=True,
)
#: The monitor works off a queue (a failed record is redelivered): patient, standard retries.
DYNAMODB_MONITOR = Config(
    connect_timeout=2, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 5}
)

ClientFactory = Callable[..., Any]
_SESSION: list[botocore.session.Session] = []


def botocore_client(service: str, *, config: Config) -> Any:
    """A client from the function's one botocore session (region, credentials, endpoints from
    the environment, as boto3's default session reads them).

    botocore, not boto3: these functions use only clients, and the boto3 package (with
    s3transfer) costs about 30 ms of import on top of botocore under CPython 3.13 here (median
    of 9 runs with byte-code; ``-X importtime`` charges botocore's own modules to whichever
    package imports them first, which made boto3 look ten times dearer).
    """
    if not _SESSION:
        _SESSION.append(botocore.session.get_session())
    return _SESSION[0].create_client(service, config=config)


@dataclass(frozen=True, slots=True)
class Clients:
    """The AWS clients of one function (``None`` where the function does not use the service)."""

    dynamodb: Any
    sqs: Any | None = None
    ssm: Any | None = None

    def all(self) -> list[Any]:
        """The clients that exist."""
        return [client for client in (self.dynamodb, self.sqs, self.ssm) if client is not None]


def sink_client_config() -> Config:
    """The botocore ``Config`` of the extraction queue's SQS client (``SQS_SINK``)."""
    return SQS_SINK


def clients_for(
    settings: Settings,
    *,
    sqs: bool,
    ssm: bool,
    dynamodb_config: Config = DYNAMODB_FAST,
    factory: ClientFactory | None = None,
) -> Clients:
    """Build a function's clients, each behind a ``RefreshableClient`` (SnapStart)."""

    def refreshable(service: str, config: Config) -> RefreshableClient:
        return RefreshableClient(lambda: (factory or botocore_client)(service, config=config))

    return Clients(
        dynamodb=refreshable("dynamodb", dynamodb_config),
        sqs=refreshable("sqs", SQS_SINK) if sqs else None,
        ssm=refreshable("ssm", SSM_FAST) if ssm else None,
    )


@dataclass(frozen=True, slots=True)
class ApiFunction:
    """An assembled API function: the app its handler serves, and what a restore refreshes."""

    settings: Settings
    clients: Clients
    hooks: SnapStartHooks
    audit: AuditLog
    app: FastAPI

    def lambda_handler(self) -> Any:
        """The Lambda entry point: Mangum adapting API Gateway events to ``app``.

        Mangum asks ``asyncio.get_event_loop()`` for the loop it runs the app on; with none set,
        CPython 3.12 and 3.13 (the Lambda runtime) warn that this is deprecated and 3.14 raises.
        The loop is therefore set here first, once per thread. Every event passes
        ``security.api.edge.screen`` first: one Mangum cannot read (a malformed or repeated
        ``Host`` or ``X-Forwarded-Port``) reaches the app marked, and is refused there with
        its audit record instead of raising inside Mangum.
        """
        from mangum import Mangum

        from security.api.edge import screen

        _ensure_event_loop()
        adapter = Mangum(self.app, lifespan="off")

        def handler(event: Any, context: Any) -> Any:
            return adapter(screen(event), context)

        return handler


def _ensure_event_loop() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            asyncio.get_event_loop()
            return
        except (DeprecationWarning, RuntimeError):
            pass
    asyncio.set_event_loop(asyncio.new_event_loop())


@dataclass(frozen=True, slots=True)
class MonitorFunction:
    """The assembled monitor: the detectors its handler feeds, and what a restore refreshes."""

    settings: Settings
    clients: Clients
    hooks: SnapStartHooks
    audit: AuditLog
    monitor: ExtractionMonitor


def _hooks_for(clients: Clients) -> SnapStartHooks:
    hooks = SnapStartHooks()
    for client in clients.all():
        hooks.after_restore(client.refresh)
    hooks.install()
    return hooks


def _store(settings: Settings, client: Any) -> PrincipalStore:
    from security.store import PrincipalStore

    return PrincipalStore(client=client, table_name=settings.table_name)


def _authenticator(settings: Settings, ssm_client: Any | None) -> Authenticator:
    from security.auth import Authenticator

    verifier = None
    if settings.jwt_enabled:
        # Imported only when configured: PyJWT and cryptography cost ~80 ms of cold start.
        from security.tokens import TokenVerifier

        verifier = TokenVerifier(settings=settings, ssm_client=ssm_client)
    return Authenticator(settings=settings, token_verifier=verifier)


def runtime_config_source(settings: Settings, ssm_client: Any | None) -> RuntimeConfigSource | None:
    """The runtime defences document's reader, when a parameter is configured.

    Raises:
        ValueError: a parameter is configured and no SSM client was built (serving without the
            document would silently use the deploy-time values).
    """
    if settings.runtime_config_parameter is None:
        return None
    if ssm_client is None:
        raise ValueError("SECURITY_RUNTIME_CONFIG_PARAMETER is set but no SSM client was built")
    from security.runtime_config import RuntimeConfigSource

    return RuntimeConfigSource(
        client=ssm_client,
        parameter_name=settings.runtime_config_parameter,
        max_age_seconds=settings.runtime_config_max_age_seconds,
    )


def _action_for(settings: Settings, source: RuntimeConfigSource) -> Callable[[str], str]:
    def action_for(model: str) -> str:
        return source.current().value(
            "extraction_action", model=model, default=settings.extraction_action
        )

    return action_for


def _needs_ssm(settings: Settings) -> bool:
    return settings.jwt_enabled or settings.runtime_config_parameter is not None


def _gatekeeper(
    settings: Settings, store: PrincipalStore, clock: Callable[[], float]
) -> Gatekeeper:
    from security.limits import Gatekeeper

    return Gatekeeper(store=store, settings=settings, clock=clock)


def build_predict_app(
    settings: Settings,
    clients: Clients,
    *,
    audit: AuditLog | None = None,
    docs: bool = False,
    clock: Callable[[], float] = time.time,
    gatekeeper: Gatekeeper | None = None,
) -> FastAPI:
    """The prediction app from settings and clients.

    Verifies every model under ``settings.model_dir`` on its own, with its defences file: a model
    that fails is not served (503 ``model_unavailable``, one ``model_unavailable`` log line at
    init) and the others are. Builds the served models' request schemas, the squeezing and
    smoothing defences, the authenticator, the gatekeeper over ``PrincipalStore`` and the
    extraction queue sink when a queue is configured. ``clock`` is the gatekeeper's and the
    sink's time (the functions use the default; ``mlmoat bench --capacity`` replays simulated
    seconds through it, and its own ``gatekeeper`` standing for many execution environments).

    Raises:
        ModelIntegrityError: ``docs`` (the OpenAPI tooling) and a model is unavailable.
    """
    from security.api import create_app
    from security.api.predict import schemas_for
    from security.defences import Squeezer
    from security.extraction import QuerySink
    from security.model import ModelRegistry
    from security.model_settings import load_settings
    from security.smoothing import Smoother

    install_log_redaction()
    audit = audit or AuditLog(service=settings.service_name)
    registry = ModelRegistry.load(settings.model_dir, expected=(settings.default_model,))
    sink = (
        QuerySink(
            client=clients.sqs,
            queue_url=settings.extraction_queue_url,
            clock=clock,
            max_delay=settings.extraction_send_max_delay,
        )
        if settings.extraction_queue_url and clients.sqs is not None
        else None
    )
    runtime_config = runtime_config_source(settings, clients.ssm)
    served = [(model.name, model.version) for model in registry]
    failures: dict[str, ModelIntegrityError] = {}
    model_settings = load_settings(settings.model_dir, registry.names, failures=failures)
    policies = {settings.squeeze_policy} | {
        s.squeeze_policy or "off" for s in model_settings.values()
    }
    # With a runtime document the policy can change after init: the calibrations are loaded
    # even when the deploy-time policy is off (a model without one is then refused, 503).
    squeezer = (
        None
        if policies == {"off"} and runtime_config is None
        else Squeezer.from_manifest(
            settings.model_dir, served, policy=settings.squeeze_policy, failures=failures
        )
    )
    smoother = Smoother.from_manifest(
        settings.model_dir, served, secret=settings.smoothing_secret, failures=failures
    )
    registry = registry.without(failures)
    for refused in registry.unavailable.values():
        audit.model_unavailable(refused.name, reason=refused.reason, detail=refused.detail)
    if docs and registry.unavailable:
        first = next(iter(registry.unavailable.values()))
        raise ModelIntegrityError(first.reason, detail=f"model={first.name}: {first.detail}")
    return create_app(
        settings=settings,
        registry=registry,
        schemas={
            name: schema
            for name in registry.names
            for schema in schemas_for(
                registry, [name], margin=_margin(settings, model_settings.get(name))
            ).values()
        },
        authenticator=_authenticator(settings, clients.ssm),
        gatekeeper=gatekeeper or _gatekeeper(settings, _store(settings, clients.dynamodb), clock),
        audit=audit,
        squeezer=squeezer,
        query_sink=sink,
        docs=docs,
        smoother=smoother,
        runtime_config=runtime_config,
        model_settings=model_settings,
    )


def _margin(settings: Settings, own: ModelSettings | None) -> float:
    if own is None or own.envelope_margin is None:
        return settings.envelope_margin
    return own.envelope_margin


def build_admin_app(
    settings: Settings, clients: Clients, *, audit: AuditLog | None = None, docs: bool = False
) -> FastAPI:
    """The admin app (``/admin/keys``, ``/admin/subjects``) from settings and clients.

    It reads no API key or token (the admin plane authorises with IAM), so it needs no
    authenticator, gatekeeper or JWT key.
    """
    from security.admin import KeyAdmin
    from security.api import create_admin_app

    install_log_redaction()
    return create_admin_app(
        settings=settings,
        admin=KeyAdmin(store=_store(settings, clients.dynamodb), settings=settings),
        audit=audit or AuditLog(service=settings.service_name),
        docs=docs,
    )


def predict_function(settings: Settings, *, factory: ClientFactory | None = None) -> ApiFunction:
    """PredictFunction, assembled."""
    install_tracing(settings.service_name)
    clients = clients_for(
        settings, sqs=bool(settings.extraction_queue_url), ssm=_needs_ssm(settings), factory=factory
    )
    audit = AuditLog(service=settings.service_name)
    app = build_predict_app(settings, clients, audit=audit)
    hooks = _hooks_for(clients)
    # Restored environments share the snapshot's memory: each draws its own writer lanes.
    hooks.after_restore(app.state.gate.gatekeeper.after_restore)
    sink = app.state.query_sink
    if sink is not None:  # the buffered queries leave before a snapshot and at shutdown
        from security.extraction.sink import flush_at_shutdown

        hooks.before_snapshot(sink.flush)
        hooks.after_restore(sink.new_environment)
        flush_at_shutdown(sink, lambda done: audit.queue_flushed(done.lost, done.position()))
    return ApiFunction(settings, clients, hooks, audit, app)


def admin_function(settings: Settings, *, factory: ClientFactory | None = None) -> ApiFunction:
    """AdminFunction, assembled."""
    install_tracing(settings.service_name)
    clients = clients_for(settings, sqs=False, ssm=False, factory=factory)
    audit = AuditLog(service=settings.service_name)
    app = build_admin_app(settings, clients, audit=audit)
    return ApiFunction(settings, clients, _hooks_for(clients), audit, app)


def monitor_function(
    settings: Settings,
    *,
    factory: ClientFactory | None = None,
    clock: Callable[[], float] = time.time,
) -> MonitorFunction:
    """MonitorFunction (the extraction queue's consumer), assembled: its write-behind buffer
    flushed at shutdown (atexit, SIGTERM) and before a snapshot, each batch logging its position
    (``monitor_buffer``). ``clock``: the monitor's time (``mlmoat bench --capacity`` simulates)."""
    from security.extraction import (
        ExtractionMonitor,
        flag_audit_sink,
        load_monitor_references,
    )

    install_log_redaction()
    install_tracing(settings.service_name)
    clients = clients_for(
        settings,
        sqs=False,
        ssm=settings.runtime_config_parameter is not None,
        dynamodb_config=DYNAMODB_MONITOR,
        factory=factory,
    )
    audit = AuditLog(service=settings.service_name)
    runtime_config = runtime_config_source(settings, clients.ssm)
    # Each model's reference on its own: one that fails is logged once here, and its messages
    # are acknowledged and audited (``unmonitored``) while every other model is monitored.
    failures: dict[str, ModelIntegrityError] = {}
    references = load_monitor_references(settings.model_dir, unavailable=failures)
    for name, error in failures.items():
        audit.model_unavailable(
            name, reason=error.reason, detail=error.detail, message="monitor_reference_unavailable"
        )
    monitor = ExtractionMonitor(
        store=_store(settings, clients.dynamodb),
        references=references,
        action=settings.extraction_action,
        audit=flag_audit_sink(audit, service=settings.service_name),
        action_for=None if runtime_config is None else _action_for(settings, runtime_config),
        unavailable={name: error.reason for name, error in failures.items()},
        clock=clock,
        flush_seconds=settings.monitor_flush_seconds,
        flush_messages=settings.monitor_flush_messages,
        max_pending_bytes=settings.monitor_max_pending_bytes,
        report=audit.monitor_buffer,
    )
    hooks = _hooks_for(clients)
    if settings.monitor_flush_seconds > 0:  # with none, nothing stays pending between batches
        from security.extraction.sink import at_shutdown

        hooks.before_snapshot(monitor.flush)
        hooks.after_restore(monitor.buffer.new_environment)
        at_shutdown(monitor.flush)
    return MonitorFunction(settings, clients, hooks, audit, monitor)
