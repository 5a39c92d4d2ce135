"""A loopback HTTP/1.1 proxy in front of a local DynamoDB that injects faults on command.

It stands between the function (start-api or a Mangum handler) and a real local DynamoDB
server (moto server), so every fault is seen by the real SDK, with its real retries:

- ``forward``: requests go through unchanged (each on its own upstream connection);
- ``throttle``: answer with DynamoDB's own 400 JSON error,
  ``ProvisionedThroughputExceededException``, without forwarding;
- ``hold_before``: read the request, never forward it, hold the connection until the client
  gives up (a timeout *before* the write lands);
- ``drop_after``: forward the request, let the upstream apply it, read its answer, then never
  reply (a timeout *after* the write lands);
- ``reset``: accept and close at once, before reading anything;
- ``refuse``: close the listening socket, so connecting is refused (``stop_listening``);
- ``call``: run a callback (e.g. another writer changing the item), then forward: a race
  placed exactly between the function's reads and writes.

Faults can target DynamoDB operations (``X-Amz-Target``, e.g. ``UpdateItem``) and a number of
requests, and the proxy records every request it saw and what it did with it, so tests can
assert how many writes reached the server (SDK retries included).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

_THROTTLE_BODY = json.dumps(
    {
        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        "message": "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API.",
    }
).encode()


@dataclass
class Seen:
    """One request the proxy received and what it did with it."""

    operation: str
    action: str
    at: float
    pk: str | None = None


@dataclass
class _Rule:
    kind: str
    operations: frozenset[str] | None
    remaining: int | None
    hold_seconds: float
    pk_prefix: str | None = None
    callback: Callable[[], None] | None = None

    def matches(self, operation: str, pk: str | None = None) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.pk_prefix is not None and not (pk or "").startswith(self.pk_prefix):
            return False
        return self.operations is None or operation in self.operations


@dataclass
class FaultProxy:
    """A fault-injecting HTTP proxy on ``127.0.0.1`` in front of ``upstream_port``."""

    upstream_port: int
    port: int = 0
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._rule: _Rule | None = None
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self.start_listening()

    # -- control ---------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """The URL to give the SDK (``AWS_ENDPOINT_URL_DYNAMODB``)."""
        return f"http://127.0.0.1:{self.port}"

    def set_fault(
        self,
        kind: str,
        *,
        operations: Iterable[str] | None = None,
        count: int | None = None,
        hold_seconds: float = 10.0,
        pk_prefix: str | None = None,
        callback: Callable[[], None] | None = None,
    ) -> None:
        """Apply ``kind`` to the next ``count`` requests (all if None) for ``operations``.

        ``pk_prefix`` narrows the fault to requests whose ``Key.pk`` starts with it (e.g.
        ``"key#"``: the API keys' counting writes, not the extraction monitor's state).
        """
        if kind not in ("throttle", "hold_before", "drop_after", "reset", "call"):
            raise ValueError(f"unknown fault {kind!r}")
        ops = frozenset(operations) if operations is not None else None
        with self._lock:
            self._rule = _Rule(kind, ops, count, hold_seconds, pk_prefix, callback)

    def clear(self) -> None:
        """Forward everything from now on."""
        with self._lock:
            self._rule = None

    def reset_log(self) -> None:
        """Forget the requests seen so far."""
        with self._lock:
            self.seen.clear()

    def count(
        self, operation: str | None = None, action: str | None = None, *, pk: str | None = None
    ) -> int:
        """How many requests matched ``operation``, ``action`` and ``pk`` (None matches any)."""
        with self._lock:
            return sum(
                1
                for s in self.seen
                if (operation is None or s.operation == operation)
                and (action is None or s.action == action)
                and (pk is None or s.pk == pk)
            )

    def stop_listening(self) -> None:
        """Close the listening socket: new connections are refused; open ones are closed."""
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            _shutdown(listener)
            listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _shutdown(conn)
            _close(conn)

    def start_listening(self) -> None:
        """(Re)open the listening socket on the same port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock
        thread = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        """Stop the proxy and close every connection."""
        self._stopping.set()
        self.stop_listening()

    # -- internals -------------------------------------------------------------------------
    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _take_rule(self, operation: str, pk: str | None = None) -> _Rule | None:
        with self._lock:
            rule = self._rule
            if rule is None or not rule.matches(operation, pk):
                return None
            if rule.remaining is not None:
                rule.remaining -= 1
            return rule

    def _record(self, operation: str, action: str, pk: str | None = None) -> None:
        with self._lock:
            self.seen.append(Seen(operation, action, time.monotonic(), pk))

    def _serve(self, conn: socket.socket) -> None:
        try:
            with self._lock:
                rule = self._rule
            if rule is not None and rule.kind == "reset" and rule.operations is None:
                self._take_rule("*")
                self._record("?", "reset")
                _abort(conn)
                return
            buffer = b""
            while not self._stopping.is_set():
                request, buffer = _read_message(conn, buffer)
                if request is None:
                    return
                head, body = request
                operation, pk = _operation(head), _partition_key(body)
                rule = self._take_rule(operation, pk)
                kind = rule.kind if rule is not None else "forward"
                if kind == "throttle":
                    self._record(operation, "throttled", pk)
                    conn.sendall(_throttle_response())
                    continue
                if kind == "reset":
                    self._record(operation, "reset", pk)
                    _abort(conn)
                    return
                if kind == "hold_before":
                    self._record(operation, "held_before", pk)
                    _hold(conn, rule.hold_seconds if rule else 0.0, self._stopping)
                    return
                if kind == "call" and rule is not None and rule.callback is not None:
                    rule.callback()
                    self._record(operation, "called", pk)
                response = _forward(self.upstream_port, request)
                if response is None:
                    self._record(operation, "upstream_down", pk)
                    _abort(conn)
                    return
                if kind == "drop_after":
                    self._record(operation, "dropped_after", pk)
                    _hold(conn, rule.hold_seconds if rule else 0.0, self._stopping)
                    return
                self._record(operation, "forwarded", pk)
                conn.sendall(response)
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            _close(conn)


def _operation(head: bytes) -> str:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-amz-target":
            return value.strip().decode("latin-1").rpartition(".")[2]
    return "?"


def _partition_key(body: bytes) -> str | None:
    """``Key.pk.S`` of a DynamoDB JSON request, if it has one."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    key = document.get("Key") if isinstance(document, dict) else None
    pk = key.get("pk") if isinstance(key, dict) else None
    value = pk.get("S") if isinstance(pk, dict) else None
    return value if isinstance(value, str) else None


def _read_message(conn: socket.socket, buffer: bytes) -> tuple[tuple[bytes, bytes] | None, bytes]:
    """Read one HTTP message (head, body) framed by Content-Length; None at EOF."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return (head, rest[:length]), rest[length:]


def _forward(upstream_port: int, request: tuple[bytes, bytes]) -> bytes | None:
    """Send one request upstream on a fresh connection; return the raw response or None."""
    head, body = request
    lines = [
        line
        for line in head.split(b"\r\n")
        if line.partition(b":")[0].strip().lower() not in (b"connection", b"keep-alive")
    ]
    lines.append(b"Connection: close")
    try:
        with socket.create_connection(("127.0.0.1", upstream_port), timeout=30) as upstream:
            upstream.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            response, _ = _read_message(upstream, b"")
    except OSError:
        return None
    if response is None:
        return None
    rhead, rbody = response
    kept = [
        line
        for line in rhead.split(b"\r\n")
        if line.partition(b":")[0].strip().lower()
        not in (b"connection", b"keep-alive", b"transfer-encoding", b"content-length")
    ]
    kept.append(b"Content-Length: " + str(len(rbody)).encode())
    return b"\r\n".join(kept) + b"\r\n\r\n" + rbody


def _throttle_response() -> bytes:
    head = (
        "HTTP/1.1 400 Bad Request\r\n"
        "Content-Type: application/x-amz-json-1.0\r\n"
        "x-amzn-RequestId: FAULTPROXYTHROTTLE0000000000000000000000000000000\r\n"
        f"Content-Length: {len(_THROTTLE_BODY)}\r\n\r\n"
    )
    return head.encode() + _THROTTLE_BODY


def _hold(conn: socket.socket, seconds: float, stopping: threading.Event) -> None:
    """Keep the connection open and silent until the client closes it or time runs out."""
    conn.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stopping.is_set():
        try:
            if not conn.recv(65536):
                return
        except TimeoutError:
            continue
        except OSError:
            return


def _abort(conn: socket.socket) -> None:
    """Close with a TCP reset rather than an orderly shutdown."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    _close(conn)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.close()
