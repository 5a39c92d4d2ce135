"""The extraction queue's wire format: ``QueryMessage`` and its packed floats.

Version 1 (``MESSAGE_VERSION``) carries rows and confidences as JSON numbers; version 2
(``PACKED_VERSION``, what ``QuerySink`` sends) packs them as little-endian float64, base64: the
same bits as served (exact), encoded in one call instead of a Python loop per value. Both parse.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

MESSAGE_VERSION = 1
# Version 2 (what QuerySink sends): rows and confidences packed as little-endian float64,
# base64. The same bits as served (exact), encoded in one call instead of a Python loop per value.
PACKED_VERSION = 2
#: A refused request (``"kind": "refusal"``): no rows, only the refusal's reason.
REFUSAL_KIND = "refusal"
_FLOAT = np.dtype("<f8")

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class QueryMessage:
    """One served request (or one part of a very large one) as the monitor receives it."""

    principal_id: str
    model: str
    request_id: str
    ts: float
    rows: tuple[tuple[float, ...], ...]
    labels: tuple[str, ...] = ()
    confidences: tuple[float, ...] = ()
    part: int = 0
    refusal: str = ""

    def to_json(self) -> str:
        """The SQS message body."""
        return json.dumps(
            {
                "v": MESSAGE_VERSION,
                "principal_id": self.principal_id,
                "model": self.model,
                "request_id": self.request_id,
                "ts": self.ts,
                "rows": [list(r) for r in self.rows],
                "labels": list(self.labels),
                "confidences": list(self.confidences),
                "part": self.part,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, body: str) -> QueryMessage:
        """Parse and validate an SQS message body (version 1, JSON numbers, or 2, packed).

        Raises:
            ValueError: the body is not a well-formed query message.
        """
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or data.get("v") not in (MESSAGE_VERSION, PACKED_VERSION):
                raise ValueError("unknown message version")
            if data.get("kind") == REFUSAL_KIND:
                return cls(
                    principal_id=str(data["principal_id"]),
                    model=str(data["model"]),
                    request_id=str(data["request_id"]),
                    ts=float(data["ts"]),
                    rows=(),
                    refusal=str(data["refusal"])[:64] or "refused",
                )
            if data["v"] == PACKED_VERSION:
                count, width = (int(v) for v in data["shape"])
                packed = unpack_floats(data["rows"])
                if count < 1 or width < 1 or packed.size != count * width:
                    raise ValueError("rows do not match their shape")
                rows = tuple(tuple(row) for row in packed.reshape(count, width).tolist())
                confidences = tuple(unpack_floats(data.get("confidences", "")).tolist())
            else:
                rows = tuple(tuple(float(v) for v in row) for row in data["rows"])
                confidences = tuple(float(v) for v in data.get("confidences", []))
            labels = tuple(str(v) for v in data.get("labels", []))
            message = cls(
                principal_id=str(data["principal_id"]),
                model=str(data["model"]),
                request_id=str(data["request_id"]),
                ts=float(data["ts"]),
                rows=rows,
                labels=labels,
                confidences=confidences,
                part=int(data.get("part", 0)),
            )
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"malformed query message: {exc}") from exc
        if not message.rows or len({len(r) for r in message.rows}) != 1:
            raise ValueError("rows must be a non-empty list of equal-length rows")
        if not all(math.isfinite(v) for r in message.rows for v in r):
            raise ValueError("rows must be finite")
        if message.labels and len(message.labels) != len(message.rows):
            raise ValueError("labels must match rows")
        if message.confidences and len(message.confidences) != len(message.rows):
            raise ValueError("confidences must match rows")
        return message


def pack_floats(values: npt.NDArray[Any]) -> str:
    """Values as little-endian float64 bytes, base64 (the packed message's encoding)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=_FLOAT).tobytes()).decode("ascii")


def unpack_floats(text: str) -> FloatArray:
    """Inverse of ``pack_floats``.

    Raises:
        binascii.Error: the text is not base64.
        ValueError: the bytes do not hold a whole number of float64 values.
    """
    raw = base64.b64decode(text, validate=True)
    if len(raw) % _FLOAT.itemsize:
        raise ValueError("packed floats have a partial value")
    return np.frombuffer(raw, dtype=_FLOAT).astype(np.float64)
