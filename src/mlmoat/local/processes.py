"""Process helpers shared by the local tooling and the tests: ports, readiness, stopping.

One copy of what ``mlmoat local``, the load test, the benchmark, the red team and the fault
suite each had: a free loopback port, waiting until a port accepts (or refuses) connections,
and stopping a child process politely (SIGINT, then SIGTERM, then SIGKILL) with a timeout.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time

HOST = "127.0.0.1"


class NotReadyError(TimeoutError, RuntimeError):
    """Nothing accepted connections in time (both a ``TimeoutError`` and a ``RuntimeError``)."""


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int,
    *,
    host: str = HOST,
    process: subprocess.Popen[bytes] | None = None,
    timeout_s: float = 10.0,
    interval_s: float = 0.05,
) -> None:
    """Block until something accepts connections on ``host:port``.

    Raises:
        RuntimeError: ``process`` (the one meant to listen) exited first.
        NotReadyError: nothing accepted within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(interval_s)
    raise NotReadyError(f"nothing listening on {host}:{port} after {timeout_s:.0f}s")


def wait_closed(port: int, *, host: str = HOST, timeout_s: float = 10.0) -> None:
    """Block until ``host:port`` refuses connections.

    Raises:
        NotReadyError: the port still accepted connections after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
        except OSError:
            return
        time.sleep(0.05)
    raise NotReadyError(f"port {port} still accepts connections")


def stop_process(
    process: subprocess.Popen[bytes],
    *,
    timeout_s: float = 15.0,
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> None:
    """Ask a process to stop (each of ``signals`` in turn), kill it only if it does not.

    The first signal gets ``timeout_s`` seconds, each later one 5 s, the final SIGKILL 5 s.
    """
    if process.poll() is not None:
        return
    for index, sig in enumerate(signals):
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s if index == 0 else 5.0)
            return
        except subprocess.TimeoutExpired:
            continue
    process.kill()
    process.wait(timeout=5.0)
