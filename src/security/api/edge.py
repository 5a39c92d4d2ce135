"""What the event must satisfy before Mangum reads it: one well-formed ``Host``, one port.

Mangum turns ``Host`` and ``X-Forwarded-Port`` into the ASGI ``server`` tuple with
``int(...)`` and ``split(":")`` before the app (and so the audit middleware) runs: a ``Host`` of
``a:b:c`` or ``h:x``, a port of ``80x`` or two ``Host`` headers raised inside Mangum, and the
caller got API Gateway's 502 with no audit record. ``screen`` finds those events first and
hands Mangum a copy it can read, marked so that ``AuditMiddleware`` answers 400
``malformed_header`` in the envelope with its one audit record. The mark is a top-level event
key: API Gateway builds the event, so no caller can set or clear it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MALFORMED_MARK = "mlmoat.malformed_header"
"""The event key ``screen`` sets (its value names the header) on an event it refuses."""

# A DNS name or an IPv4 address, an optional port: what API Gateway's own hosts look like.
_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})(?::[0-9]{1,5})?$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")
_SAFE_HOST = "invalid.mlmoat"
_SCREENED = ("host", "x-forwarded-port")


def _distinct(event: Mapping[str, Any], name: str) -> list[str]:
    # Multi-value lists are authoritative where they exist (REST); a value seen in both
    # ``headers`` and ``multiValueHeaders`` is one header, a second value is a second header.
    multi = event.get("multiValueHeaders")
    if isinstance(multi, Mapping):
        listed: list[str] = []
        for key, value in multi.items():
            if isinstance(key, str) and key.lower() == name:
                items = value if isinstance(value, list) else [value]
                listed.extend(str(item) for item in items if item is not None)
        if listed:
            return listed
    single = event.get("headers")
    values: list[str] = []
    if isinstance(single, Mapping):
        for key, value in single.items():
            if isinstance(key, str) and key.lower() == name and value is not None:
                values.append(str(value))
    return values


def problem(event: Mapping[str, Any]) -> str | None:
    """The header that makes ``event`` unreadable to Mangum or ambiguous, or ``None``."""
    hosts = _distinct(event, "host")
    if len(hosts) > 1 or any(not _HOST_RE.match(h) or not _port_ok(h) for h in hosts):
        return "host"
    ports = _distinct(event, "x-forwarded-port")
    if len(ports) > 1 or any(not _PORT_RE.match(p) or int(p) > 65535 for p in ports):
        return "x-forwarded-port"
    return None


def _port_ok(host: str) -> bool:
    _, sep, port = host.partition(":")
    return not sep or int(port) <= 65535


def screen(event: Any) -> Any:
    """``event`` itself when Mangum can read it; else a marked copy without the bad headers."""
    if not isinstance(event, Mapping):
        return event
    bad = problem(event)
    if bad is None:
        return event
    copy = dict(event)
    for field in ("headers", "multiValueHeaders"):
        holder = event.get(field)
        if isinstance(holder, Mapping):
            kept = {k: v for k, v in holder.items() if str(k).lower() not in _SCREENED}
            kept["host"] = [_SAFE_HOST] if field == "multiValueHeaders" else _SAFE_HOST
            copy[field] = kept
    copy[MALFORMED_MARK] = bad
    return copy
