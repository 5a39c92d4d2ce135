"""Runtime configuration: the frozen ``Settings`` and ``from_env``.

This is the only module that knows environment variable names. Every variable shares the
``SECURITY_`` prefix. ``from_env`` validates everything, so a missing or malformed variable
fails at cold start with a message that names the variable (and never its value).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from security.policy import is_output_policy

_PREFIX = "SECURITY_"
_RATE_RE = re.compile(r"^(?P<count>[1-9][0-9]{0,8})/(?P<unit>second|minute|hour|day)$")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class SettingsError(ValueError):
    """A configuration variable is missing or malformed (raised at cold start)."""


@dataclass(frozen=True, slots=True)
class RateSpec:
    """A rate limit: ``count`` rows per ``window_seconds``."""

    count: int
    window_seconds: int

    @classmethod
    def parse(cls, text: str) -> RateSpec:
        """Parse ``"60/minute"``-style text.

        Raises:
            ValueError: the text is not ``<count>/<second|minute|hour|day>``.
        """
        match = _RATE_RE.match(text.strip())
        if match is None:
            raise ValueError("expected <count>/<second|minute|hour|day>")
        return cls(int(match["count"]), _UNIT_SECONDS[match["unit"]])

    def __str__(self) -> str:
        unit = {v: k for k, v in _UNIT_SECONDS.items()}.get(self.window_seconds)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.window_seconds}s"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the security layer is configured with, read once at cold start."""

    table_name: str
    model_dir: str
    default_model: str = "iris"
    max_rows: int = 100
    max_body_bytes: int = 65536
    envelope_margin: float = 0.1
    default_output_policy: str = "probabilities:2"
    default_rate_limit: RateSpec = RateSpec(60, 60)
    default_budget: int = 10000
    auth_failure_limit: RateSpec = RateSpec(20, 60)
    auth_failure_key_limit: RateSpec = RateSpec(20, 60)
    auth_failure_global_limit: RateSpec = RateSpec(1000, 60)
    refusal_limit: RateSpec = RateSpec(100, 3600)
    key_max_rate: RateSpec = RateSpec(100_000, 60)
    key_max_budget: int = 100_000_000
    key_max_lifetime_seconds: int = 366 * 86400
    key_max_output_policy: str = "probabilities:4"
    key_grantable_scopes: tuple[str, ...] = ("predict:*",)
    audit_raw_features: bool = False
    squeeze_policy: str = "flag"
    #: The SSM parameter holding the runtime defences document (security.runtime_config); None:
    #: the deploy-time squeeze policy and extraction action are final.
    runtime_config_parameter: str | None = None
    runtime_config_max_age_seconds: int = 30
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_public_key_parameter: str | None = None
    jwt_algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwt_leeway_seconds: int = 30
    jwt_max_lifetime_seconds: int = 86400
    jwt_secret_max_age_seconds: int = 300
    extraction_queue_url: str | None = None
    #: The extraction queue sink's buffer: a served query waits at most this long for others
    #: of the same execution environment (while it serves requests) before they are sent
    #: together; 0 sends each request's query as it is served (``security.extraction.sink``).
    extraction_send_max_delay: float = 1.0
    service_name: str = "mlmoat"
    extraction_action: str = "flag"
    #: The monitor's write-behind buffer (``security.extraction.buffer``): a principal's
    #: messages wait in the execution environment until this many are pending, its oldest is
    #: this old (checked at each invocation; 0: every batch is applied at once, no buffer), or
    #: the pending messages' estimated memory passes the bound.
    monitor_flush_messages: int = 8
    monitor_flush_seconds: float = 30.0
    monitor_max_pending_bytes: int = 64 * 1024 * 1024
    # The HMAC key of input smoothing's noise (security.smoothing). Unset: a random key per
    # process (safe, but answers repeat only within one warm instance); never in repr or logs.
    smoothing_secret: bytes = field(default_factory=lambda: os.urandom(32), repr=False)

    @property
    def jwt_enabled(self) -> bool:
        """JWT bearer tokens are accepted only when issuer, audience and key are configured."""
        return bool(self.jwt_issuer and self.jwt_audience and self.jwt_public_key_parameter)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from ``SECURITY_*`` variables.

        Raises:
            SettingsError: a required variable is missing or a value is malformed; the
                message names the variable.
        """
        reader = _Reader(environ)
        settings = cls(
            table_name=reader.required("TABLE_NAME"),
            model_dir=reader.required("MODEL_DIR"),
            default_model=reader.text(
                "DEFAULT_MODEL", "iris", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$"
            ),
            max_rows=reader.integer("MAX_ROWS", 100, low=1, high=10000),
            max_body_bytes=reader.integer("MAX_BODY_BYTES", 65536, low=256, high=6 * 1024 * 1024),
            envelope_margin=reader.number("ENVELOPE_MARGIN", 0.1, low=0.0, high=10.0),
            default_output_policy=reader.output_policy("DEFAULT_OUTPUT", "probabilities:2"),
            default_rate_limit=reader.rate("DEFAULT_RATE_LIMIT", "60/minute"),
            default_budget=reader.integer("DEFAULT_BUDGET", 10000, low=1, high=10**12),
            auth_failure_limit=reader.rate("AUTH_FAILURE_LIMIT", "20/minute"),
            auth_failure_key_limit=reader.rate("AUTH_FAILURE_KEY_LIMIT", "20/minute"),
            auth_failure_global_limit=reader.rate("AUTH_FAILURE_GLOBAL_LIMIT", "1000/minute"),
            refusal_limit=reader.rate("REFUSAL_LIMIT", "100/hour"),
            key_max_rate=reader.rate("KEY_MAX_RATE", "100000/minute"),
            key_max_budget=reader.integer("KEY_MAX_BUDGET", 100_000_000, low=1, high=10**12),
            key_max_lifetime_seconds=reader.integer(
                "KEY_MAX_LIFETIME_SECONDS", 366 * 86400, low=3600, high=10 * 366 * 86400
            ),
            key_max_output_policy=reader.output_policy("KEY_MAX_OUTPUT", "probabilities:4"),
            key_grantable_scopes=reader.scopes("KEY_GRANTABLE_SCOPES", ("predict:*",)),
            audit_raw_features=reader.boolean("AUDIT_RAW_FEATURES", False),
            squeeze_policy=reader.choice("SQUEEZE_POLICY", "flag", ("off", "flag", "refuse")),
            runtime_config_parameter=reader.parameter_name("RUNTIME_CONFIG_PARAMETER"),
            runtime_config_max_age_seconds=reader.integer(
                "RUNTIME_CONFIG_MAX_AGE_SECONDS", 30, low=1, high=3600
            ),
            jwt_issuer=reader.optional("JWT_ISSUER"),
            jwt_audience=reader.optional("JWT_AUDIENCE"),
            jwt_public_key_parameter=reader.optional("JWT_PUBLIC_KEY_PARAMETER"),
            jwt_algorithms=reader.algorithms("JWT_ALGORITHMS", ("RS256", "ES256")),
            jwt_leeway_seconds=reader.integer("JWT_LEEWAY_SECONDS", 30, low=0, high=300),
            jwt_max_lifetime_seconds=reader.integer(
                "JWT_MAX_LIFETIME_SECONDS", 86400, low=60, high=30 * 86400
            ),
            jwt_secret_max_age_seconds=reader.integer(
                "JWT_KEY_MAX_AGE_SECONDS", 300, low=0, high=86400
            ),
            extraction_queue_url=reader.optional("EXTRACTION_QUEUE_URL"),
            extraction_send_max_delay=reader.number(
                "EXTRACTION_SEND_MAX_DELAY", 1.0, low=0.0, high=60.0
            ),
            service_name=reader.text("SERVICE_NAME", "mlmoat", pattern=r"^[A-Za-z0-9_-]{1,64}$"),
            extraction_action=reader.choice("EXTRACTION_ACTION", "flag", ("flag", "suspend")),
            monitor_flush_messages=reader.integer("MONITOR_FLUSH_MESSAGES", 8, low=1, high=1000),
            monitor_flush_seconds=reader.number("MONITOR_FLUSH_SECONDS", 30.0, low=0.0, high=900.0),
            monitor_max_pending_bytes=1024
            * 1024
            * reader.integer("MONITOR_MAX_PENDING_MB", 64, low=1, high=4096),
            smoothing_secret=reader.secret("SMOOTHING_SECRET", minimum=32),
        )
        configured = [settings.jwt_issuer, settings.jwt_audience, settings.jwt_public_key_parameter]
        if any(configured) and not all(configured):
            raise SettingsError(
                "SECURITY_JWT_ISSUER, SECURITY_JWT_AUDIENCE and SECURITY_JWT_PUBLIC_KEY_PARAMETER "
                "must be set together"
            )
        return settings


# SSM's rule for a parameter name (letters, digits, ``_.-/``; at most 1,011 characters).
_PARAMETER_NAME_RE = re.compile(r"^/?[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")
_GRANTABLE_SCOPE_RE = re.compile(r"^predict:(\*|[a-z0-9][a-z0-9-]{0,62})$")
_ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA"}
)


class _Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def _raw(self, name: str) -> str | None:
        value = self._environ.get(_PREFIX + name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _fail(self, name: str, why: str) -> SettingsError:
        return SettingsError(f"{_PREFIX}{name}: {why}")

    def required(self, name: str) -> str:
        value = self._raw(name)
        if value is None:
            raise self._fail(name, "is required")
        return value

    def optional(self, name: str) -> str | None:
        return self._raw(name)

    def text(self, name: str, default: str, *, pattern: str) -> str:
        value = self._raw(name) or default
        if re.match(pattern, value) is None:
            raise self._fail(name, "is malformed")
        return value

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        value = self._raw(name)
        if value is None:
            return default
        if not re.fullmatch(r"-?[0-9]+", value):
            raise self._fail(name, "must be an integer")
        number = int(value)
        if not low <= number <= high:
            raise self._fail(name, f"must be between {low} and {high}")
        return number

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError as exc:
            raise self._fail(name, "must be a number") from exc
        if not low <= number <= high:  # also rejects NaN
            raise self._fail(name, f"must be between {low} and {high}")
        return number

    def boolean(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise self._fail(name, "must be true or false")

    def parameter_name(self, name: str) -> str | None:
        value = self._raw(name)
        if value is not None and (len(value) > 1011 or _PARAMETER_NAME_RE.match(value) is None):
            raise self._fail(name, "is not an SSM parameter name")
        return value

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        value = self._raw(name) or default
        if value not in options:
            raise self._fail(name, f"must be one of {', '.join(options)}")
        return value

    def rate(self, name: str, default: str) -> RateSpec:
        try:
            return RateSpec.parse(self._raw(name) or default)
        except ValueError as exc:
            raise self._fail(name, str(exc)) from exc

    def output_policy(self, name: str, default: str) -> str:
        value = self._raw(name) or default
        if not is_output_policy(value):
            raise self._fail(name, "is not an output policy")
        return value

    def secret(self, name: str, *, minimum: int) -> bytes:
        # The error names the variable and the rule, never the value.
        value = self._raw(name)
        if value is None:
            return os.urandom(32)
        if len(value) < minimum:
            raise self._fail(name, f"must be at least {minimum} characters")
        return value.encode("utf-8")

    def scopes(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._raw(name)
        if value is None:
            return default
        names = tuple(sorted({part.strip() for part in value.split(",") if part.strip()}))
        # ``admin`` is never grantable: the admin plane authorises with IAM, not with scopes.
        if not names or any(_GRANTABLE_SCOPE_RE.match(scope) is None for scope in names):
            raise self._fail(name, "lists a scope that is not predict:* or predict:<model>")
        return names

    def algorithms(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._raw(name)
        if value is None:
            return default
        names = tuple(part.strip() for part in value.split(",") if part.strip())
        if not names or any(alg not in _ALLOWED_ALGORITHMS for alg in names):
            raise self._fail(name, "lists an algorithm that is not allowed (asymmetric only)")
        return names
