"""The monitor's per-principal state: ``DetectorState`` and its compact binary layout.

One state per principal and model lives in one DynamoDB item (``security.monitor_state``), read
and written once per SQS batch, so its size is what every write and read costs (1 write unit per
KB, 1 strongly consistent read unit per 4 KB). The layout is fixed-width binary, bounded whatever
the model's feature count (``docs/ml-defences.md``, "State layout"):

- counters (rows seen, the flag, its row and reason) and the three bit windows (off-manifold,
  low-confidence, refusals) packed 8 to a byte: about 120 bytes;
- PRADA's distance window as float16 (800 bytes for 400 distances);
- per predicted class: its label, Welford's running statistics (float64) and its growing set as
  uint16 envelope coordinates on a fixed grid (``GRID_LOW`` to ``GRID_HIGH``, 4.6e-5 per step),
  capped so all sets together fit ``MonitorReference.prada_set_bytes`` (2,304 bytes by default:
  96 rows per class on iris, 19 on a two-class 30-feature model);
- the 64 most recent message tokens as 6-byte BLAKE2b digests (redelivery detection).

Values are stored already quantised in memory (``quantise_rows``, ``quantise_distance``), so a
state that is serialised after every message and one serialised once per batch hold the same
numbers: batching cannot change what the detectors decide. Version 1 (zlib-compressed JSON, the
previous layout) still parses; it is rewritten as version 2 on the next save.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from security.extraction.message import FloatArray

STATE_VERSION = 2
#: Envelope coordinates stored on a uint16 grid over this range (the envelope is 0..1; rows
#: outside it up to the validation margin, 0.1 by default, stay on the grid).
GRID_LOW, GRID_HIGH = -1.0, 2.0
_GRID_STEPS = 65535
_STEP = (GRID_HIGH - GRID_LOW) / _GRID_STEPS
#: Message tokens remembered (as digests) to recognise a redelivered message.
RECENT_TOKENS = 64
TOKEN_BYTES = 6
_HEADER = struct.Struct("<BBII")  # version, flags (bit 0: flagged), rows seen, flagged at row
_CLASS = struct.Struct("<Idd")  # Welford: count, mean, M2


def token_digest(token: str) -> bytes:
    """The digest a message token (``request_id/part``) is remembered by."""
    return hashlib.blake2b(token.encode("utf-8"), digest_size=TOKEN_BYTES).digest()


def quantise_rows(z: npt.ArrayLike) -> FloatArray:
    """Envelope coordinates as the state stores them (the uint16 grid's values, as float64)."""
    codes = _codes(np.asarray(z, dtype=np.float64))
    result: FloatArray = codes.astype(np.float64) * _STEP + GRID_LOW
    return result


def quantise_distance(distance: float) -> float:
    """A PRADA distance as the state stores it (float16)."""
    return float(np.float16(distance))


def _codes(z: npt.NDArray[Any]) -> npt.NDArray[np.uint16]:
    scaled = np.rint((np.clip(z, GRID_LOW, GRID_HIGH) - GRID_LOW) / _STEP)
    codes: npt.NDArray[np.uint16] = scaled.astype(np.uint16)
    return codes


@dataclass(slots=True)
class DetectorState:
    """Bounded per-principal, per-model detector state (serialised into one DynamoDB item)."""

    rows_seen: int = 0
    flagged: bool = False
    flag_reason: str = ""
    flagged_at_row: int = 0
    off_bits: list[int] = field(default_factory=list)
    low_bits: list[int] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)
    class_sets: dict[str, FloatArray] = field(default_factory=dict)
    class_stats: dict[str, list[float]] = field(default_factory=dict)
    #: Digests (``token_digest``) of the most recent message tokens, oldest first.
    recent_requests: list[bytes] = field(default_factory=list)
    #: The principal's last requests to this model: 1 refused, 0 served (``refusal_bits``).
    refusal_bits: list[int] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """The version 2 binary layout (see the module docstring).

        Raises:
            ValueError: the state cannot be laid out (a class set of another width).
        """
        widths = {s.shape[1] for s in self.class_sets.values() if s.size}
        if len(widths) > 1:
            raise ValueError("class sets of different widths")
        width = widths.pop() if widths else 0
        out = bytearray(_HEADER.pack(STATE_VERSION, int(self.flagged), self.rows_seen,
                                     self.flagged_at_row))  # fmt: skip
        _put_text(out, self.flag_reason)
        for bits in (self.off_bits, self.low_bits, self.refusal_bits):
            out += struct.pack("<H", len(bits)) + np.packbits(np.asarray(bits, np.uint8)).tobytes()
        out += struct.pack("<H", len(self.distances))
        out += np.asarray(self.distances, dtype="<f2").tobytes()
        labels = list(dict.fromkeys([*self.class_stats, *self.class_sets]))
        out += struct.pack("<HH", len(labels), width)
        for label in labels:
            _put_text(out, label)
            count, mean, m2 = self.class_stats.get(label, [0.0, 0.0, 0.0])
            out += _CLASS.pack(int(count), mean, m2)
            rows = self.class_sets.get(label, np.zeros((0, width)))
            out += struct.pack("<H", rows.shape[0])
            out += _codes(rows).astype("<u2").tobytes()
        out += struct.pack("<B", len(self.recent_requests)) + b"".join(self.recent_requests)
        return bytes(out)

    @classmethod
    def from_bytes(cls, blob: bytes) -> DetectorState:
        """Inverse of ``to_bytes`` (and of version 1's zlib-compressed JSON).

        Raises:
            ValueError: the blob is not a serialised state.
        """
        if blob[:1] == b"\x78":  # a zlib stream: version 1
            return _from_version_1(blob)
        try:
            return _Reader(blob).state()
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed detector state: {exc}") from exc


def _put_text(out: bytearray, text: str) -> None:
    raw = text.encode("utf-8")
    out += struct.pack("<H", len(raw)) + raw


class _Reader:
    def __init__(self, blob: bytes) -> None:
        self._blob = memoryview(blob)
        self._at = 0

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._blob):
            raise IndexError("truncated")
        chunk = bytes(self._blob[self._at : self._at + size])
        self._at += size
        return chunk

    def unpack(self, layout: str | struct.Struct) -> tuple[Any, ...]:
        layout = layout if isinstance(layout, struct.Struct) else struct.Struct(layout)
        return layout.unpack(self.take(layout.size))

    def text(self) -> str:
        (size,) = self.unpack("<H")
        return self.take(size).decode("utf-8")

    def bits(self) -> list[int]:
        (count,) = self.unpack("<H")
        packed = np.frombuffer(self.take((count + 7) // 8), dtype=np.uint8)
        return [int(v) for v in np.unpackbits(packed)[:count]]

    def state(self) -> DetectorState:
        version, flags, rows_seen, flagged_at_row = self.unpack(_HEADER)
        if version != STATE_VERSION:
            raise ValueError("unknown state version")
        state = DetectorState(rows_seen=rows_seen, flagged=bool(flags & 1),
                              flagged_at_row=flagged_at_row, flag_reason=self.text())  # fmt: skip
        state.off_bits, state.low_bits, state.refusal_bits = self.bits(), self.bits(), self.bits()
        (count,) = self.unpack("<H")
        state.distances = np.frombuffer(self.take(2 * count), dtype="<f2").tolist()
        classes, width = self.unpack("<HH")
        for _ in range(classes):
            label = self.text()
            n, mean, m2 = self.unpack(_CLASS)
            (rows,) = self.unpack("<H")
            codes = np.frombuffer(self.take(2 * rows * width), dtype="<u2")
            if n:
                state.class_stats[label] = [float(n), mean, m2]
            if rows:
                state.class_sets[label] = codes.reshape(rows, width) * _STEP + GRID_LOW
        (recent,) = self.unpack("<B")
        state.recent_requests = [self.take(TOKEN_BYTES) for _ in range(recent)]
        if self._at != len(self._blob):
            raise ValueError("trailing bytes after the state")
        return state


def _from_version_1(blob: bytes) -> DetectorState:
    """The previous layout: zlib-compressed JSON with base64 arrays (float32 sets)."""

    def unpack(text: str, dtype: type[np.generic]) -> npt.NDArray[Any]:
        return np.frombuffer(base64.b64decode(text), dtype=dtype).copy()

    try:
        doc = json.loads(zlib.decompress(blob).decode("utf-8"))
        if doc.get("v") != 1:
            raise ValueError("unknown state version")
        width = int(doc["width"])
        return DetectorState(
            rows_seen=int(doc["rows_seen"]),
            flagged=bool(doc["flagged"]),
            flag_reason=str(doc["flag_reason"]),
            flagged_at_row=int(doc["flagged_at_row"]),
            off_bits=[int(v) for v in unpack(doc["off_bits"], np.uint8)],
            low_bits=[int(v) for v in unpack(doc["low_bits"], np.uint8)],
            distances=[quantise_distance(v) for v in unpack(doc["distances"], np.float32)],
            class_sets={
                k: quantise_rows(unpack(v, np.float32).reshape(-1, width))
                for k, v in doc["class_sets"].items()
            },
            class_stats={k: [float(x) for x in v] for k, v in doc["class_stats"].items()},
            recent_requests=[token_digest(str(v)) for v in doc["recent_requests"]],
            refusal_bits=[int(v) for v in unpack(doc.get("refusal_bits", ""), np.uint8)],
        )
    except (zlib.error, KeyError, TypeError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"malformed detector state: {exc}") from exc
