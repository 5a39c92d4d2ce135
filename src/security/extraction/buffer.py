"""The monitor's write-behind buffer: a principal's sparse messages wait to share one write.

A state write costs its size (about 3.7 KB at the plateau: four write units) whatever number of
messages it applies, so a principal with one message per SQS batch (many slow principals) paid
four write units and half a read unit per prediction. ``PendingBuffer`` holds each principal's
and model's messages in the execution environment until its group is due, then the monitor
applies them all to one read and one write (``ExtractionMonitor._group``, unchanged):

- ``flush_messages`` messages are pending for it (a dense group flushes in the invocation that
  received it, as before);
- its oldest pending message is ``flush_seconds`` old at an invocation (the monitor's clock);
  with ``flush_seconds=0`` every group is due in the invocation that received it, the monitor
  of before the buffer exactly;
- the pending messages' estimated memory (``footprint``) exceeds ``max_bytes``: the oldest
  groups are flushed first until it fits;
- the environment shuts down (``ExtractionMonitor.flush``: atexit and SIGTERM,
  ``security.extraction.sink.at_shutdown``).

The order of a principal's messages is kept within an environment, so the detectors see the
sequence of rows this environment received, in order. A group whose flush failed keeps its
messages of earlier invocations (acknowledged to SQS already) pending, retried after
``flush_seconds``; its messages of the current invocation are redelivered by SQS. Messages the
buffer gives up on (the memory bound with the store failing, a failed flush at shutdown) are
counted as ``lost`` and reported (docs/ml-defences.md, "Delivery").
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from security.extraction.message import QueryMessage

#: The defaults (``Settings.monitor_flush_seconds`` and the others set them): 8 messages put a
#: plateau state's four write units at half a unit each; 30 s holds six of a principal's
#: messages at one request a second over five environments (0.67 units each).
FLUSH_MESSAGES = 8
FLUSH_SECONDS = 30.0
MAX_PENDING_BYTES = 64 * 1024 * 1024

#: The audit event of buffered messages given up (``MonitorBufferLost``), and the fields of
#: its record the warning log repeats (request ids, never a payload).
BUFFER_LOST_EVENT = "monitor_buffer_lost"
LOST_LOG_FIELDS = ("principal_id", "model", "messages", "request_ids", "flags")

GroupKey = tuple[str, str]


def footprint(message: QueryMessage) -> int:
    """A parsed message's estimated memory in bytes (an upper estimate of what tracemalloc
    measured: 732 bytes for one iris row, 27.9 KB for 100, 111 KB for 100 rows of 30
    features)."""
    values = sum(len(row) for row in message.rows) + len(message.confidences)
    return 512 + 40 * values + 64 * len(message.labels)


@dataclass(slots=True)
class Pending:
    """One buffered message: its SQS item id, the invocation that received it and when."""

    item_id: str
    message: QueryMessage
    invocation: int
    received_at: float
    size: int


@dataclass(slots=True)
class _Group:
    entries: list[Pending] = field(default_factory=list)
    #: Not retried before this time after a failed flush (0: never failed).
    retry_at: float = 0.0


class PendingBuffer:
    """Pending messages by (principal, model), the group whose oldest message is oldest first,
    with the environment's running counts (``position``)."""

    def __init__(
        self,
        *,
        flush_messages: int = FLUSH_MESSAGES,
        flush_seconds: float = 0.0,
        max_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        """The flush rule: ``flush_messages`` pending, ``flush_seconds`` old, ``max_bytes``.

        Raises:
            ValueError: a bound is out of range (messages >= 1, seconds >= 0, bytes >= 1).
        """
        if flush_messages < 1 or not flush_seconds >= 0 or max_bytes < 1:
            raise ValueError("monitor buffer: at least 1 message, seconds >= 0, bytes >= 1")
        self.flush_messages = flush_messages
        self.flush_seconds = flush_seconds
        self.max_bytes = max_bytes
        self._groups: OrderedDict[GroupKey, _Group] = OrderedDict()
        self._full: set[GroupKey] = set()
        self.bytes = 0
        #: The invocation being processed (``begin``); entries of earlier ones are acknowledged.
        self.invocation = 0
        self.new_environment()

    def new_environment(self) -> None:
        """A new id for this execution environment's buffer, its counts from zero."""
        self.environment = secrets.token_hex(4)
        self.buffered = 0
        self.flushed = 0
        self.lost = 0

    @property
    def pending(self) -> int:
        """Messages buffered, not yet applied, redelivered or lost."""
        return self.buffered - self.flushed

    def pending_rows(self) -> int:
        """Rows of the pending messages."""
        return sum(len(e.message.rows) for g in self._groups.values() for e in g.entries)

    def position(self) -> dict[str, str | int]:
        """Where the environment's buffer stands (each invocation's ``monitor_buffer`` log)."""
        return {"env": self.environment, "buffered": self.buffered, "flushed": self.flushed,
                "pending": self.pending, "lost": self.lost}  # fmt: skip

    def begin(self) -> int:
        """Start an invocation: the entries added from now on are its own."""
        self.invocation += 1
        return self.invocation

    def add(self, item_id: str, message: QueryMessage, now: float) -> None:
        """Buffer a message of the current invocation at the end of its group."""
        key = (message.principal_id, message.model)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
        entry = Pending(item_id, message, self.invocation, now, footprint(message))
        group.entries.append(entry)
        self.bytes += entry.size
        self.buffered += 1
        if len(group.entries) >= self.flush_messages:
            self._full.add(key)

    def due(self, now: float) -> list[tuple[GroupKey, bool]]:
        """The groups to flush now, oldest first, each with whether the memory bound alone
        forces it (True) rather than its count or age."""
        chosen: dict[GroupKey, bool] = {}
        for key, group in self._groups.items():
            aged = now - group.entries[0].received_at >= self.flush_seconds
            if not aged and not group.retry_at:
                break  # every group after this one received its first message later
            if aged and now >= group.retry_at:
                chosen[key] = False
        for key in self._full:
            if key not in chosen and now >= self._groups[key].retry_at:
                chosen[key] = False
        excess = self.bytes - self.max_bytes - sum(self._size(key) for key in chosen)
        for key in self._groups:
            if excess <= 0:
                break
            if key not in chosen:
                chosen[key] = True
                excess -= self._size(key)
        order = {key: i for i, key in enumerate(self._groups)}
        return sorted(chosen.items(), key=lambda item: order[item[0]])

    def take(self, key: GroupKey) -> list[Pending]:
        """Remove a group's pending entries (to flush them)."""
        group = self._groups.pop(key)
        self._full.discard(key)
        self.bytes -= sum(e.size for e in group.entries)
        return group.entries

    def keep(self, key: GroupKey, entries: list[Pending], *, retry_at: float) -> None:
        """Put a failed group's entries back, before anything it received since, not retried
        before ``retry_at``; the group goes first (it is the oldest)."""
        group = self._groups.get(key) or _Group()
        group.entries[:0] = entries
        group.retry_at = retry_at
        self._groups[key] = group
        self._groups.move_to_end(key, last=False)
        self.bytes += sum(e.size for e in entries)
        if len(group.entries) >= self.flush_messages:
            self._full.add(key)

    def hold(
        self, key: GroupKey, entries: list[Pending], forced: bool, *, retry_at: float, why: str
    ) -> dict[str, Any] | None:
        """Keep a failed group's entries of earlier invocations pending (acknowledged to SQS
        already), not retried before ``retry_at``; or give them up (their record) when the
        memory bound is what asked for the flush."""
        if not entries:
            return None
        if forced:
            return self.give_up(key, entries, f"memory_bound_{why}")
        self.keep(key, entries, retry_at=retry_at)
        return None

    def give_up(self, key: GroupKey, entries: list[Pending], reason: str) -> dict[str, Any]:
        """Count entries taken from the buffer as lost; their audit record (``lost_record``)."""
        self.flushed += len(entries)
        self.lost += len(entries)
        return lost_record(key, entries, reason, self.position())

    def groups(self) -> list[GroupKey]:
        """Every group with pending messages, oldest first."""
        return list(self._groups)

    def _size(self, key: GroupKey) -> int:
        return sum(e.size for e in self._groups[key].entries)


def lost_record(
    key: GroupKey, entries: list[Pending], reason: str, position: dict[str, str | int]
) -> dict[str, Any]:
    """The audit record of buffered messages given up: how many, their request ids (the
    first 100), their rows, why (``detail:<reason>``) and the buffer's position after."""
    ids = list(dict.fromkeys(e.message.request_id for e in entries))
    return {
        "event": BUFFER_LOST_EVENT,
        "principal_id": key[0],
        "model": key[1][:64],
        "request_id": ids[0],
        "decision": "skip",
        "reason": BUFFER_LOST_EVENT,
        "messages": len(entries),
        "rows": sum(len(e.message.rows) for e in entries),
        "request_ids": ids[:100],
        "flags": [f"detail:{reason}"],
        "monitor_buffer": position,
    }
