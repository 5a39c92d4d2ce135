"""The predict path's producer: ``QuerySink`` puts each served request on the extraction queue.

One SQS message per request (split only when a request is too large for one), in the packed
wire format of ``security.extraction.message``; a send never raises.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from botocore.exceptions import BotoCoreError, ClientError

from security.extraction.message import _FLOAT, PACKED_VERSION, REFUSAL_KIND, pack_floats

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

_LOG = logging.getLogger(__name__)

# SQS accepts 256 KiB per message; stay well under it once JSON-encoded.
_MAX_MESSAGE_BYTES = 200_000


class QuerySink:
    """Sends one served request to the extraction queue; never raises.

    Give it an SQS client built with ``security.wiring.SQS_SINK`` (short timeouts, one retry, TCP
    keepalive), so a failing queue costs serving at most two attempts (0.3 s connect, 0.5 s read)
    and one back-off, inside the function's timeout. A retried send that had in fact arrived is
    harmless: the monitor drops a repeated request id. A failed send is logged (reason only, no
    payload), counted in ``failures``, and reported by ``send``'s result so the caller can put
    it in the request's audit record and metrics.
    """

    def __init__(
        self, *, client: SQSClient, queue_url: str, clock: Callable[[], float] = time.time
    ) -> None:
        """Bind the sink to an SQS client and the queue URL from settings."""
        self._client = client
        self._queue_url = queue_url
        self._clock = clock
        self.failures = 0

    def send(
        self,
        *,
        principal_id: str,
        model: str,
        request_id: str,
        rows: Sequence[Sequence[float]] | npt.NDArray[Any],
        labels: Sequence[str] = (),
        confidences: Sequence[float] | npt.NDArray[Any] = (),
    ) -> bool:
        """Queue the request's rows with their predicted labels and top-1 confidences.

        Returns whether every part reached the queue.
        """
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
        ok = True
        for part, start in enumerate(range(0, count, per_part)):
            stop = start + per_part
            body = json.dumps(
                {
                    "v": PACKED_VERSION,
                    "principal_id": principal_id,
                    "model": model,
                    "request_id": request_id,
                    "ts": now,
                    "shape": [min(stop, count) - start, width],
                    "rows": pack_floats(matrix[start:stop]),
                    "labels": label_list[start:stop],
                    "confidences": pack_floats(scores[start:stop]),
                    "part": part,
                },
                separators=(",", ":"),
            )
            try:
                self._client.send_message(QueueUrl=self._queue_url, MessageBody=body)
            except (BotoCoreError, ClientError) as exc:
                self.failures += 1
                ok = False
                _LOG.warning(
                    "extraction_queue_send_failed",
                    extra={"request_id": request_id, "error": type(exc).__name__},
                )
        return ok

    def send_refusal(self, *, principal_id: str, model: str, request_id: str, reason: str) -> bool:
        """Queue one refused request (no rows: only that it was refused, and why).

        Returns whether it reached the queue.
        """
        body = json.dumps(
            {
                "v": PACKED_VERSION,
                "kind": REFUSAL_KIND,
                "principal_id": principal_id,
                "model": model,
                "request_id": request_id,
                "ts": self._clock(),
                "refusal": reason[:64],
            },
            separators=(",", ":"),
        )
        try:
            self._client.send_message(QueueUrl=self._queue_url, MessageBody=body)
        except (BotoCoreError, ClientError) as exc:
            self.failures += 1
            _LOG.warning(
                "extraction_queue_send_failed",
                extra={"request_id": request_id, "error": type(exc).__name__},
            )
            return False
        return True
