"""The suite's log capture: every log line the tests produce, scanned for key material.

``tests/conftest.py``'s session fixture ``log_sink`` attaches a ``LineSink`` to the root logger
for the whole session; loggers that do not propagate (the audit logger) are attached by the
suites that create them. Suites that create API keys register them with ``remember_key``; at the
end of the session ``leaked_key_material`` looks for each one (whole, or its secret alone) and
for any well-formed ``mlmoat_`` key (valid checksum) at all.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

from security.keys import MalformedKeyError, parse_key

# Every key the suite created (whole ``mlmoat_...`` strings), for the session-level scan.
CREATED_SECRETS: list[str] = []

_KEY_SHAPE = re.compile(r"mlmoat_[0-9A-Za-z]{12}_[0-9A-Za-z]{49}")


def remember_key(api_key: str) -> str:
    """Register a key the suite created, so the session-level scan looks for it; returns it."""
    CREATED_SECRETS.append(api_key)
    return api_key


def leaked_key_material(text: str) -> list[str]:
    """What key material ``text`` holds, described without the secrets themselves."""
    leaked: list[str] = []
    for api_key in CREATED_SECRETS:
        parsed = parse_key(api_key)
        if api_key in text:
            leaked.append(f"key {parsed.key_id}")
        elif parsed.secret in text:
            leaked.append(f"secret of key {parsed.key_id}")
    for found in _KEY_SHAPE.findall(text):
        try:
            parsed = parse_key(found)
        except MalformedKeyError:
            continue
        leaked.append(f"well-formed key {parsed.key_id}")
    return sorted(set(leaked))


class LineSink(logging.Handler):
    """Collects every formatted log line it is given (thread-safe)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self._guard = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        # Powertools adds a SuppressFilter for its service to every root handler: a capture
        # sink must see everything, so filters others attach are ignored.
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a record that cannot be formatted is kept raw, for the scan
            line = f"{record.getMessage()} {record.exc_text or ''}"
        with self._guard:
            self.lines.append(line)

    def records(self) -> list[dict[str, Any]]:
        """Every captured line that is a JSON object, parsed."""
        with self._guard:
            lines = list(self.lines)
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                continue
        return parsed

    def audit_records(self) -> list[dict[str, Any]]:
        """The captured audit records of requests."""
        return [
            r for r in self.records() if r.get("message") == "audit" and r.get("event") == "request"
        ]
