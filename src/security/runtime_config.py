"""Defences changeable at run time: one JSON document in SSM Parameter Store, cached per instance.

The squeeze policy, the extraction action and their per-model overrides are deploy-time settings
(``SECURITY_SQUEEZE_POLICY``, ``SECURITY_EXTRACTION_ACTION``) that an operator can override at
run time by writing one String parameter (``mlmoat config set squeeze_policy refuse``)::

    {"squeeze_policy": "refuse", "extraction_action": "suspend",
     "models": {"breast-cancer-forest": {"squeeze_policy": "refuse"}}}

A model's own value wins over the document's, which wins over the deploy-time setting; ``{}``
(or no parameter at all) means "no runtime value": the deploy-time settings apply. Each
function instance reads the parameter at most once per ``max_age`` seconds
(``SECURITY_RUNTIME_CONFIG_MAX_AGE_SECONDS``, default 30), so every instance follows a change
within that age without a restart.

Fail closed. A document that does not parse strictly (not JSON, an unknown key, a value outside
its choices, a bad model name) is never read as "unset": ``RuntimeConfigSource.current`` raises
``RuntimeConfigUnavailableError`` (503, reason ``runtime_config_invalid``) until the parameter is
fixed, because a mistyped ``refuse`` must not be served as the weaker deploy-time ``flag``. A read
that fails (timeout, throttling, access denied) keeps the last document read, if any, and tries
again after ``RETRY_AFTER_FAILURE_S`` (not on every request: a hanging SSM would add its timeouts
to each one); with nothing read yet it raises (503, ``runtime_config_unavailable``).

Why not Powertools Parameters (``SSMProvider``): its module imports boto3, which these functions
never import (``security.wiring.botocore_client``); measured under CPython 3.13 against the
Lambda build it added ~100 ms to a cold start. This module reads with the botocore client the
wiring builds (``SSM_FAST``) and caches the same way (a value and its expiry), in a few lines.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from security.errors import RuntimeConfigUnavailableError

#: The settings a runtime document may set, and the values each accepts.
RUNTIME_CHOICES: dict[str, tuple[str, ...]] = {
    "squeeze_policy": ("off", "flag", "refuse"),
    "extraction_action": ("flag", "suspend"),
}
MODELS_KEY = "models"
#: SSM's limit for a standard parameter.
MAX_DOCUMENT_BYTES = 4096
#: After a failed read with a document in hand: how long that document is used before trying again.
RETRY_AFTER_FAILURE_S = 5.0
_MODEL_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_NOT_FOUND = "ParameterNotFound"


class RuntimeConfigError(ValueError):
    """A runtime document is malformed (the message names the rule, never the value)."""


def _values(data: Any, where: str) -> dict[str, str]:
    if not isinstance(data, dict):
        raise RuntimeConfigError(f"{where} must be an object")
    values: dict[str, str] = {}
    for key, value in data.items():
        choices = RUNTIME_CHOICES.get(key)
        if choices is None:
            raise RuntimeConfigError(f"{where}: unknown setting")
        if not isinstance(value, str) or value not in choices:
            raise RuntimeConfigError(f"{where}.{key} must be one of {', '.join(choices)}")
        values[key] = value
    return values


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """One parsed runtime document: global values and per-model values (absent: not set)."""

    values: Mapping[str, str] = field(default_factory=dict)
    models: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> RuntimeConfig:
        """Parse a document strictly; an empty string is the empty document.

        Raises:
            RuntimeConfigError: not a JSON object of known settings with allowed values.
        """
        if len(text.encode("utf-8")) > MAX_DOCUMENT_BYTES:
            raise RuntimeConfigError("document is larger than 4 KB")
        if not text.strip():
            return cls()

        def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            keys = [key for key, _ in pairs]
            if len(set(keys)) != len(keys):
                raise RuntimeConfigError("document repeats a key")
            return dict(pairs)

        try:
            data = json.loads(text, object_pairs_hook=no_duplicates)
        except ValueError as exc:
            if isinstance(exc, RuntimeConfigError):
                raise
            raise RuntimeConfigError("document is not JSON") from exc
        if not isinstance(data, dict):
            raise RuntimeConfigError("document must be a JSON object")
        models_raw = data.pop(MODELS_KEY, {})
        values = _values(data, "document")
        if not isinstance(models_raw, dict):
            raise RuntimeConfigError("models must be an object")
        models: dict[str, dict[str, str]] = {}
        for name, section in models_raw.items():
            if not isinstance(name, str) or _MODEL_RE.match(name) is None:
                raise RuntimeConfigError("models: a model name is malformed")
            models[name] = _values(section, "models.<model>")
        return cls(values, models)

    def to_json(self) -> str:
        """The document, compact and sorted (what ``mlmoat config set`` writes)."""
        document: dict[str, Any] = dict(self.values)
        models = {name: dict(values) for name, values in self.models.items() if values}
        if models:
            document[MODELS_KEY] = models
        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    def value(self, key: str, *, model: str | None, default: str) -> str:
        """The effective ``key`` for ``model``: the model's value, the global one, ``default``."""
        if model is not None and key in self.models.get(model, {}):
            return self.models[model][key]
        return self.values.get(key, default)

    def with_value(self, key: str, value: str, *, model: str | None = None) -> RuntimeConfig:
        """A copy with ``key`` set (globally, or for ``model``).

        Raises:
            RuntimeConfigError: the key, value or model name is not allowed.
        """
        checked = _values({key: value}, "value")
        if model is None:
            return RuntimeConfig({**self.values, **checked}, self.models)
        if _MODEL_RE.match(model) is None:
            raise RuntimeConfigError("models: a model name is malformed")
        models = {name: dict(values) for name, values in self.models.items()}
        models.setdefault(model, {}).update(checked)
        return RuntimeConfig(self.values, models)

    def without(self, key: str | None, *, model: str | None = None) -> RuntimeConfig:
        """A copy with ``key`` unset (every key when ``None``), globally or for ``model``.

        Raises:
            RuntimeConfigError: the key is not a runtime setting.
        """
        if key is not None and key not in RUNTIME_CHOICES:
            raise RuntimeConfigError("unknown setting")
        if model is None:
            if key is None:
                return RuntimeConfig()
            return RuntimeConfig({k: v for k, v in self.values.items() if k != key}, self.models)
        models = {name: dict(values) for name, values in self.models.items()}
        if key is None:
            models.pop(model, None)
        else:
            models.get(model, {}).pop(key, None)
        return RuntimeConfig(self.values, {name: v for name, v in models.items() if v})


@dataclass(slots=True)
class _Cached:
    config: RuntimeConfig | None
    error: RuntimeConfigUnavailableError | None
    expires: float


class RuntimeConfigSource:
    """The runtime document of one parameter, read through ``client`` at most once per max age."""

    def __init__(
        self,
        *,
        client: Any,
        parameter_name: str,
        max_age_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._name = parameter_name
        self._max_age = float(max_age_seconds)
        self._clock = clock
        self._cached: _Cached | None = None
        self._last_good: RuntimeConfig | None = None

    @property
    def parameter_name(self) -> str:
        """The SSM parameter read."""
        return self._name

    def current(self) -> RuntimeConfig:
        """The document in effect now.

        Raises:
            RuntimeConfigUnavailableError: the parameter holds a malformed document
                (``runtime_config_invalid``), or it could not be read and nothing was read
                before (``runtime_config_unavailable``).
        """
        now = self._clock()
        cached = self._cached
        if cached is None or now >= cached.expires:
            cached = self._cached = self._refresh(now)
        if cached.error is not None:
            raise cached.error
        assert cached.config is not None
        return cached.config

    def _refresh(self, now: float) -> _Cached:
        try:
            text = self._read()
        except RuntimeConfigUnavailableError as exc:
            retry = now + min(self._max_age, RETRY_AFTER_FAILURE_S)
            if self._last_good is not None:
                return _Cached(self._last_good, None, retry)
            return _Cached(None, exc, retry)
        try:
            config = RuntimeConfig.parse(text)
        except RuntimeConfigError as exc:
            # The operator's intent is unknown: no document (not even the last one) is used.
            self._last_good = None
            error = RuntimeConfigUnavailableError("runtime_config_invalid", detail=str(exc))
            error.__cause__ = exc
            return _Cached(None, error, now + self._max_age)
        self._last_good = config
        return _Cached(config, None, now + self._max_age)

    def _read(self) -> str:
        # The one botocore translation of this module: a missing parameter is "no runtime value";
        # anything else we do not recognise as an answer is unavailable (fail closed).
        try:
            answer = self._client.get_parameter(Name=self._name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == _NOT_FOUND:
                return ""
            raise RuntimeConfigUnavailableError(detail=type(exc).__name__) from exc
        except BotoCoreError as exc:
            raise RuntimeConfigUnavailableError(detail=type(exc).__name__) from exc
        value = answer.get("Parameter", {}).get("Value")
        if not isinstance(value, str):
            raise RuntimeConfigUnavailableError("runtime_config_invalid", detail="no value")
        return value
