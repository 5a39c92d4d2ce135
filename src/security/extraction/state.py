"""The monitor's per-principal state: ``DetectorState`` and its compact binary layout.

One state per principal and model lives in one DynamoDB item (``security.monitor_state``), read
and written once per flush of that principal's messages, so its size is what every write and
read costs (1 write unit per KB, 1 strongly consistent read unit per 4 KB). The layout is
fixed-width binary and sized to keep the item under 1 KB, whatever the model's feature count
(``docs/ml-defences.md``, "State layout"):

- counters (rows seen, the flag, its row and its reason as detector bits) and the three bit
  windows (off-manifold, low-confidence, refusals) packed 8 to a byte: 79 bytes;
- PRADA's distance window as one byte each on a logarithmic scale (``DISTANCE_LOW`` to
  ``DISTANCE_HIGH``, 4.2% a step; 200 bytes for the default 200 distances);
- per predicted class: its label, Welford's running statistics (float64) and its growing set as
  uint8 envelope coordinates on a fixed grid (``GRID_LOW`` to ``GRID_HIGH``, 0.0059 a step),
  capped so the whole state fits ``MonitorReference.state_bytes`` (880 bytes by default: 34
  rows per class on iris, 7 on a two-class 30-feature model; ``plateau_bytes``);
- the 32 most recent message tokens as 4-byte digests (redelivery detection).

Values are stored already quantised in memory (``quantise_rows``, ``quantise_distance``), so a
state that is serialised after every message and one serialised once per flush hold the same
numbers: batching cannot change what the detectors decide. Versions 1 (zlib-compressed JSON) and
2 (uint16 coordinates, float16 distances, 6-byte tokens) still parse: their values are brought
onto this layout's grids, and the detector trims their windows and sets to the reference's
bounds on the next row (``fit_state``); the state is rewritten as version 3 on the next save.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from security.extraction.message import FloatArray

STATE_VERSION = 3
#: Envelope coordinates stored on a uint8 grid over this range (the envelope is 0..1; rows up to
#: the default validation margin, 0.1, and beyond it to 0.25 stay on the grid; farther ones are
#: stored at its edge, where PRADA's distances to them are smaller than the true ones).
GRID_LOW, GRID_HIGH = -0.25, 1.25
_STEP = (GRID_HIGH - GRID_LOW) / 255
#: PRADA distances (envelope units) stored as one byte on a log scale over this range: code 0
#: is ``DISTANCE_LOW`` or less (a repeated row), code 255 ``DISTANCE_HIGH`` or more (far beyond
#: a 100-feature envelope's diagonal); Shapiro-Wilk's W does not depend on the scale.
DISTANCE_LOW, DISTANCE_HIGH = 1e-3, 32.0
_LOG_STEP = math.log(DISTANCE_HIGH / DISTANCE_LOW) / 255
#: Message tokens remembered (as digests) to recognise a redelivered message.
RECENT_TOKENS = 32
TOKEN_BYTES = 4
#: The detectors a flag's reason names, in the order ``ExtractionDetector`` joins them.
REASONS = ("off_manifold", "low_confidence", "prada", "refusals")
#: The refusal window's length (``detectors.REFUSAL_WINDOW``; here for ``plateau_bytes``).
REFUSAL_BITS = 100
_HEADER = struct.Struct("<BBII")  # version, flags (bit 0 flagged, 1-4 REASONS), rows, at row
_CLASS = struct.Struct("<Idd")  # Welford: count, mean, M2
_V2_LOW, _V2_STEP = -1.0, 3.0 / 65535  # version 2's uint16 grid


def token_digest(token: str) -> bytes:
    """The digest a message token (``request_id/part``) is remembered by: the first bytes of its
    6-byte BLAKE2b digest, so version 2's remembered tokens carry over by truncation."""
    return hashlib.blake2b(token.encode("utf-8"), digest_size=6).digest()[:TOKEN_BYTES]


def quantise_rows(z: npt.ArrayLike) -> FloatArray:
    """Envelope coordinates as the state stores them (the uint8 grid's values, as float64)."""
    return _grid_values(_codes(np.asarray(z, dtype=np.float64)))


def quantise_distance(distance: float) -> float:
    """A PRADA distance as the state stores it (its log-scale byte's value)."""
    return float(_distance_values(_distance_codes(np.asarray([distance], dtype=np.float64)))[0])


def _codes(z: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    scaled = np.rint((np.clip(z, GRID_LOW, GRID_HIGH) - GRID_LOW) / _STEP)
    codes: npt.NDArray[np.uint8] = scaled.astype(np.uint8)
    return codes


def _grid_values(codes: npt.NDArray[Any]) -> FloatArray:
    result: FloatArray = codes.astype(np.float64) * _STEP + GRID_LOW
    return result


def _distance_codes(distances: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    ratio = np.clip(distances, DISTANCE_LOW, DISTANCE_HIGH) / DISTANCE_LOW
    codes: npt.NDArray[np.uint8] = np.clip(np.rint(np.log(ratio) / _LOG_STEP), 0, 255).astype(
        np.uint8
    )
    return codes


def _distance_values(codes: npt.NDArray[Any]) -> FloatArray:
    result: FloatArray = DISTANCE_LOW * np.exp(codes.astype(np.float64) * _LOG_STEP)
    return result


def plateau_bytes(*, window: int, prada_window: int, labels: Iterable[str]) -> int:
    """A state's size without its PRADA sets once every window is full: what the sets may add
    to it within a byte budget (``detectors.set_cap``)."""
    classes = sum(1 + len(label.encode("utf-8")) + _CLASS.size + 2 for label in labels)
    windows = 2 * (2 + (window + 7) // 8) + 2 + (REFUSAL_BITS + 7) // 8
    return (_HEADER.size + windows + 2 + prada_window + 4 + classes
            + 1 + RECENT_TOKENS * TOKEN_BYTES)  # fmt: skip


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
        """The version 3 binary layout (see the module docstring).

        Raises:
            ValueError: the state cannot be laid out (class sets of different widths, a reason
                that names no detector, a label over 255 bytes).
        """
        widths = {s.shape[1] for s in self.class_sets.values() if s.size}
        if len(widths) > 1:
            raise ValueError("class sets of different widths")
        width = widths.pop() if widths else 0
        flags = int(self.flagged) | _reason_bits(self.flag_reason)
        out = bytearray(_HEADER.pack(STATE_VERSION, flags, self.rows_seen, self.flagged_at_row))
        for bits in (self.off_bits, self.low_bits, self.refusal_bits):
            out += struct.pack("<H", len(bits)) + np.packbits(np.asarray(bits, np.uint8)).tobytes()
        out += struct.pack("<H", len(self.distances))
        out += _distance_codes(np.asarray(self.distances, dtype=np.float64)).tobytes()
        labels = list(dict.fromkeys([*self.class_stats, *self.class_sets]))
        out += struct.pack("<HH", len(labels), width)
        for label in labels:
            raw = label.encode("utf-8")
            if len(raw) > 255:
                raise ValueError("label over 255 bytes")
            out += struct.pack("<B", len(raw)) + raw
            count, mean, m2 = self.class_stats.get(label, [0.0, 0.0, 0.0])
            out += _CLASS.pack(int(count), mean, m2)
            rows = self.class_sets.get(label, np.zeros((0, width)))
            out += struct.pack("<H", rows.shape[0]) + _codes(rows).tobytes()
        out += struct.pack("<B", len(self.recent_requests)) + b"".join(self.recent_requests)
        return bytes(out)

    @classmethod
    def from_bytes(cls, blob: bytes) -> DetectorState:
        """Inverse of ``to_bytes`` (and of versions 1 and 2, brought onto this layout's grids).

        Raises:
            ValueError: the blob is not a serialised state.
        """
        if blob[:1] == b"\x78":  # a zlib stream: version 1
            return _from_version_1(blob)
        try:
            return _Reader(blob).state()
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed detector state: {exc}") from exc


def _reason_bits(reason: str) -> int:
    bits = 0
    for name in filter(None, reason.split("+")):
        if name not in REASONS:
            raise ValueError("a flag reason names no detector")
        bits |= 2 << REASONS.index(name)
    return bits


def _reason(flags: int) -> str:
    return "+".join(name for i, name in enumerate(REASONS) if flags & (2 << i))


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

    def text(self, length: str) -> str:
        (size,) = self.unpack(length)
        return self.take(size).decode("utf-8")

    def bits(self) -> list[int]:
        (count,) = self.unpack("<H")
        packed = np.frombuffer(self.take((count + 7) // 8), dtype=np.uint8)
        return [int(v) for v in np.unpackbits(packed)[:count]]

    def state(self) -> DetectorState:
        version, flags, rows_seen, flagged_at_row = self.unpack(_HEADER)
        if version not in (2, STATE_VERSION):
            raise ValueError("unknown state version")
        v2 = version == 2
        state = DetectorState(rows_seen=rows_seen, flagged=bool(flags & 1),
                              flagged_at_row=flagged_at_row)  # fmt: skip
        state.flag_reason = self.text("<H") if v2 else _reason(flags)
        state.off_bits, state.low_bits, state.refusal_bits = self.bits(), self.bits(), self.bits()
        (count,) = self.unpack("<H")
        if v2:
            distances = np.frombuffer(self.take(2 * count), dtype="<f2").astype(np.float64)
            codes = _distance_codes(distances)
        else:
            codes = np.frombuffer(self.take(count), dtype=np.uint8)
        state.distances = _distance_values(codes).tolist()
        classes, width = self.unpack("<HH")
        for _ in range(classes):
            label = self.text("<H" if v2 else "<B")
            n, mean, m2 = self.unpack(_CLASS)
            (rows,) = self.unpack("<H")
            if n:
                state.class_stats[label] = [float(n), mean, m2]
            if rows and v2:
                old = np.frombuffer(self.take(2 * rows * width), dtype="<u2")
                state.class_sets[label] = quantise_rows(old.reshape(rows, width) * _V2_STEP
                                                        + _V2_LOW)  # fmt: skip
            elif rows:
                grid = np.frombuffer(self.take(rows * width), dtype=np.uint8)
                state.class_sets[label] = _grid_values(grid.reshape(rows, width))
        (recent,) = self.unpack("<B")
        size = 6 if v2 else TOKEN_BYTES
        tokens = [self.take(size)[:TOKEN_BYTES] for _ in range(recent)]
        state.recent_requests = tokens[-RECENT_TOKENS:]
        if self._at != len(self._blob):
            raise ValueError("trailing bytes after the state")
        return state


def _from_version_1(blob: bytes) -> DetectorState:
    """The first layout: zlib-compressed JSON with base64 arrays (float32 sets)."""

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
            recent_requests=[token_digest(str(v)) for v in doc["recent_requests"]][-RECENT_TOKENS:],
            refusal_bits=[int(v) for v in unpack(doc.get("refusal_bits", ""), np.uint8)],
        )
    except (zlib.error, KeyError, TypeError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"malformed detector state: {exc}") from exc
