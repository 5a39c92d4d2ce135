"""The embedded DynamoDB: a moto server (real HTTP) on a loopback port."""

from __future__ import annotations

import contextlib
import logging
import socket
import time

from moto.server import ThreadedMotoServer


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until something accepts connections on ``host:port``.

    Raises:
        TimeoutError: nothing accepted within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


class EmbeddedDynamoDB:
    """A moto server (DynamoDB, SQS, SSM, ...) over HTTP on ``host:port``; a context manager."""

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        # werkzeug logs every request at INFO; keep the terminal for what matters.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address=host, port=self.port, verbose=False)

    @property
    def endpoint(self) -> str:
        """The server's base URL."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmbeddedDynamoDB:
        """Start serving and wait until the port accepts connections."""
        self._server.start()
        wait_for_port(self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()

    def __enter__(self) -> EmbeddedDynamoDB:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
