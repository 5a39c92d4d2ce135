"""The predict path's producer: ``QuerySink`` batches served requests for the extraction queue.

Each request's query (one entry; a request too large for one SQS message is split in parts) is
buffered in the execution environment and sent with ``SendMessageBatch``, up to 10 entries a
call, when the buffer is due: ``max_entries`` entries, ``max_rows`` rows, or its oldest entry
``max_delay`` seconds old when a request arrives (and on ``flush``: at shutdown, before a
snapshot). With ``max_delay=0`` every request is sent as it is served. A send never raises: the
queries it loses are returned to the request that flushed them, whose audit record names them
(``docs/audit.md``: ``monitor_queue_failed``, ``monitor_queue_lost``, ``MonitorQueueFailures``).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from botocore.exceptions import BotoCoreError, ClientError

from security.extraction.message import _FLOAT, PACKED_VERSION, REFUSAL_KIND, pack_floats

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

_LOG = logging.getLogger(__name__)

# SQS accepts 256 KiB per message and per SendMessageBatch call: a part stays under the first,
# a call's entries under the second.
_MAX_MESSAGE_BYTES = 200_000
_MAX_BATCH_BYTES = 250_000
#: SendMessageBatch's limit.
BATCH_ENTRIES = 10
#: The defaults (``Settings.extraction_send_max_delay`` sets the delay).
MAX_ROWS = 100
MAX_DELAY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a ``send`` (or ``flush``) found out: the request ids whose queries were lost, this
    request's or earlier ones' sent with it (true when none was), and where the execution
    environment's buffer stands: ``queued`` entries so far, ``flushed`` of them sent or lost.

    The audit record carries the last two with the environment's id (``monitor_queue``): the
    last record of an environment that ended with ``queued > flushed`` names a buffer that
    never left (docs/ml-defences.md, "Delivery").
    """

    lost: tuple[str, ...] = ()
    environment: str = ""
    queued: int = 0
    flushed: int = 0

    def __bool__(self) -> bool:
        return not self.lost

    def position(self) -> dict[str, str | int]:
        """The audit record's ``monitor_queue`` field."""
        return {"env": self.environment, "queued": self.queued, "flushed": self.flushed}


@dataclass(frozen=True, slots=True)
class _Entry:
    request_id: str
    body: str
    rows: int
    queued_at: float


class QuerySink:
    """Buffers served requests' queries and sends them in batches; never raises.

    Give it an SQS client built with ``security.wiring.SQS_SINK`` (short timeouts, one retry, TCP
    keepalive), so a failing queue costs the request that flushes at most two attempts (0.3 s
    connect, 0.5 s read) and one back-off, inside the function's timeout. A retried call that
    had in fact arrived is harmless: the monitor drops a repeated request id. Lost queries are
    logged (request ids and the reason, no payload), counted in ``failures``, and returned in
    the ``Delivery`` so the caller puts them in the request's audit record and metrics.
    """

    def __init__(
        self,
        *,
        client: SQSClient,
        queue_url: str,
        clock: Callable[[], float] = time.time,
        max_entries: int = BATCH_ENTRIES,
        max_rows: int = MAX_ROWS,
        max_delay: float = MAX_DELAY_SECONDS,
    ) -> None:
        """Bind the sink to an SQS client and the queue URL from settings, with its flush rule.

        Raises:
            ValueError: a bound is out of range (entries 1..10, rows >= 1, delay >= 0).
        """
        if not 1 <= max_entries <= BATCH_ENTRIES or max_rows < 1 or max_delay < 0:
            raise ValueError("sink bounds: 1..10 entries, at least 1 row, a delay >= 0")
        self._client = client
        self._queue_url = queue_url
        self._clock = clock
        self._max_entries = max_entries
        self._max_rows = max_rows
        self._max_delay = max_delay
        self._pending: list[_Entry] = []
        #: Queries lost so far (one per request).
        self.failures = 0
        #: SendMessageBatch calls made.
        self.calls = 0
        self.new_environment()

    def new_environment(self) -> None:
        """A new id for this execution environment's buffer, its counts from zero (at init, and
        after a SnapStart restore: restored environments must not share one)."""
        self.environment = secrets.token_hex(4)
        self.queued = 0
        self.flushed = 0

    @property
    def pending(self) -> int:
        """Entries buffered, not yet sent."""
        return len(self._pending)

    def send(
        self,
        *,
        principal_id: str,
        model: str,
        request_id: str,
        rows: Sequence[Sequence[float]] | npt.NDArray[Any],
        labels: Sequence[str] = (),
        confidences: Sequence[float] | npt.NDArray[Any] = (),
    ) -> Delivery:
        """Queue the request's rows with their predicted labels and top-1 confidences."""
        now = self._clock()
        matrix = np.asarray(rows, dtype=_FLOAT)
        if matrix.ndim != 2:
            matrix = matrix.reshape(len(matrix), -1)
        label_list = [str(v) for v in labels]
        scores = np.asarray(confidences, dtype=_FLOAT).ravel()
        count, width = matrix.shape
        # base64 of 8 bytes per value, plus a confidence and a label per row: split only the
        # rare request too large for one message.
        row_bytes = 4 * -(-8 * width // 3) + 12 + max((len(v) + 3 for v in label_list), default=0)
        per_part = max(1, _MAX_MESSAGE_BYTES // row_bytes)
        entries = []
        for part, start in enumerate(range(0, count, per_part)):
            stop = min(start + per_part, count)
            body = json.dumps(
                {
                    "v": PACKED_VERSION,
                    "principal_id": principal_id,
                    "model": model,
                    "request_id": request_id,
                    "ts": now,
                    "shape": [stop - start, width],
                    "rows": pack_floats(matrix[start:stop]),
                    "labels": label_list[start:stop],
                    "confidences": pack_floats(scores[start:stop]),
                    "part": part,
                },
                separators=(",", ":"),
            )
            entries.append(_Entry(request_id, body, stop - start, now))
        return self._queue(entries, now)

    def send_refusal(
        self, *, principal_id: str, model: str, request_id: str, reason: str
    ) -> Delivery:
        """Queue one refused request (no rows: only that it was refused, and why)."""
        now = self._clock()
        body = json.dumps(
            {
                "v": PACKED_VERSION,
                "kind": REFUSAL_KIND,
                "principal_id": principal_id,
                "model": model,
                "request_id": request_id,
                "ts": now,
                "refusal": reason[:64],
            },
            separators=(",", ":"),
        )
        return self._queue([_Entry(request_id, body, 0, now)], now)

    def flush(self) -> Delivery:
        """Send everything buffered now (shutdown, snapshot, the end of a replay)."""
        return self._delivery(self._flush())

    def _delivery(self, lost: list[str]) -> Delivery:
        return Delivery(tuple(dict.fromkeys(lost)), self.environment, self.queued, self.flushed)

    def _flush(self) -> list[str]:
        lost: list[str] = []
        while self._pending:
            batch: list[_Entry] = []
            size = 0
            while self._pending and len(batch) < BATCH_ENTRIES:
                entry = self._pending[0]
                if batch and size + len(entry.body) > _MAX_BATCH_BYTES:
                    break
                batch.append(self._pending.pop(0))
                size += len(entry.body)
            lost += self._send(batch)
            self.flushed += len(batch)
        return lost

    def _queue(self, entries: list[_Entry], now: float) -> Delivery:
        lost: list[str] = []
        for entry in entries:
            if sum(len(e.body) for e in self._pending) + len(entry.body) > _MAX_BATCH_BYTES:
                lost += self._flush()
            self._pending.append(entry)
            self.queued += 1
        if self._due(now):
            lost += self._flush()
        return self._delivery(lost)

    def _due(self, now: float) -> bool:
        return (
            len(self._pending) >= self._max_entries
            or sum(e.rows for e in self._pending) >= self._max_rows
            or now - self._pending[0].queued_at >= self._max_delay
        )

    def _send(self, batch: list[_Entry]) -> list[str]:
        """Send one SendMessageBatch; the request ids of the entries it lost."""
        self.calls += 1
        try:
            response = self._client.send_message_batch(
                QueueUrl=self._queue_url,
                Entries=[{"Id": str(i), "MessageBody": e.body} for i, e in enumerate(batch)],
            )
        except (BotoCoreError, ClientError) as exc:
            return self._failed(batch, type(exc).__name__)
        failed = {int(f["Id"]): str(f.get("Code", "failed")) for f in response.get("Failed", [])}
        if not failed:
            return []
        return self._failed([batch[i] for i in sorted(failed)], next(iter(failed.values())))

    def _failed(self, entries: list[_Entry], error: str) -> list[str]:
        ids = list(dict.fromkeys(entry.request_id for entry in entries))
        self.failures += len(ids)
        _LOG.warning("extraction_queue_send_failed", extra={"request_ids": ids, "error": error})
        return ids


def flush_at_shutdown(sink: QuerySink, report: Callable[[Delivery], None]) -> None:
    """Send ``sink``'s buffer when the execution environment ends, and ``report`` the delivery
    (what was lost, and the buffer's final counts) when there was anything to send.

    Lambda sends SIGTERM before it shuts an environment down when the function has an extension
    registered; the interpreter's exit runs ``atexit`` (``at_shutdown``). Without either (an
    environment stopped with SIGKILL alone) the buffer, at most one batch, is gone: the bound
    docs/ml-defences.md states.
    """

    def flush() -> None:
        if sink.pending:
            report(sink.flush())

    at_shutdown(flush)


def at_shutdown(flush: Callable[[], object]) -> None:
    """Run ``flush`` at the interpreter's exit (``atexit``) and on SIGTERM. The previous SIGTERM
    handler is kept (called, or the default restored and the signal raised again)."""
    atexit.register(flush)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        flush()
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
