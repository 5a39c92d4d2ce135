"""The embedded DynamoDB: a moto server (real HTTP) on a loopback port, exact like DynamoDB.

moto's ``ThreadedMotoServer`` runs requests on concurrent threads and its DynamoDB backend has no
lock: measured here, 3 processes x 8 threads against a budget of 240 rows counted 242-263 rows,
with lost ``ADD``s. DynamoDB applies the writes to one item one at a time, and the condition and
the update of one write are atomic; our limits rely on exactly that. ``EmbeddedDynamoDB``
therefore applies DynamoDB calls one at a time (connections are still accepted concurrently, and
SQS, SSM and the other services moto serves are not held, so the extraction poller's long polls
never block a write). Its state lives in this process (moto's backends), so ``stop`` and
``start`` close and reopen the port with every table, item and queue intact.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mlmoat.local import processes
from mlmoat.local.processes import free_port

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

# Every DynamoDB (and DynamoDB Streams) call names its operation in this header as
# ``DynamoDB_20120810.UpdateItem``; SQS and SSM use their own prefixes.
_SERIALISED_TARGET_PREFIX = "DynamoDB"

__all__ = ["EmbeddedDynamoDB", "free_port", "serve_until_signalled", "wait_for_port"]


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until something accepts connections on ``host:port`` (``processes.wait_for_port``).

    Raises:
        TimeoutError: nothing accepted within ``timeout`` seconds.
    """
    processes.wait_for_port(port, host=host, timeout_s=timeout)


class EmbeddedDynamoDB:
    """A moto server (DynamoDB, SQS, SSM, ...) over HTTP on ``host:port``; a context manager.

    DynamoDB calls are applied one at a time, as DynamoDB applies the writes to one item.
    ``stop`` then ``start`` serves the same state again on the same port.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        # moto takes seconds to import: only what serves pays for it, not ``free_port``'s users.
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.host = host
        self.port = port or free_port(host)
        # werkzeug logs every request at INFO; keep the terminal for what matters.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._app = DomainDispatcherApplication(create_backend_app)
        self._dynamodb_lock = threading.Lock()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """The server's base URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        """Whether the port is open (between ``start`` and ``stop``)."""
        return self._server is not None

    def start(self) -> EmbeddedDynamoDB:
        """Serve (again) on the port in a background thread; return once it accepts connections."""
        if self._server is None:
            from moto.moto_server.werkzeug_app import MotoRequestHandler
            from werkzeug.serving import make_server

            self._server = make_server(
                self.host,
                self.port,
                self._serial_app,
                threaded=True,
                request_handler=MotoRequestHandler,
            )
            self._thread = threading.Thread(
                target=self._server.serve_forever, name=f"moto-{self.port}", daemon=True
            )
            self._thread.start()
        wait_for_port(self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving and close the port (connections are refused); the state is kept."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _serial_app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith(_SERIALISED_TARGET_PREFIX):
            response: Iterable[bytes] = self._app(environ, start_response)
            return response
        # The whole call, response body included, runs under the lock: one call at a time.
        with self._dynamodb_lock:
            return list(self._app(environ, start_response))

    def __enter__(self) -> EmbeddedDynamoDB:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_until_signalled(server: EmbeddedDynamoDB) -> int:
    """Serve until SIGTERM or SIGINT; SIGUSR1 stops listening and SIGUSR2 listens again.

    The fault tests use the two user signals to take the port away mid-run and give it back with
    the state intact. Returns the exit status (0).
    """
    actions: list[str] = []
    wake = threading.Event()

    def request(action: str) -> None:
        actions.append(action)
        wake.set()

    signal.signal(signal.SIGUSR1, lambda *_: request("stop"))
    signal.signal(signal.SIGUSR2, lambda *_: request("start"))
    signal.signal(signal.SIGTERM, lambda *_: request("exit"))
    signal.signal(signal.SIGINT, lambda *_: request("exit"))
    server.start()
    print(f"serialised moto server on {server.host}:{server.port}", flush=True)
    try:
        while True:
            # Short waits keep the main thread responsive to signals.
            wake.wait(0.5)
            wake.clear()
            while actions:
                action = actions.pop(0)
                if action == "exit":
                    return 0
                if action == "stop":
                    server.stop()
                    print("stopped listening", flush=True)
                else:
                    server.start()
                    print("listening again", flush=True)
    finally:
        server.stop()
