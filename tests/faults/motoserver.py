"""A moto server that can be stopped and started again without losing its state.

``python tests/faults/motoserver.py --port N`` serves DynamoDB, SSM and SQS on ``127.0.0.1:N``.
``SIGUSR1`` stops the HTTP server (connections are refused, as when DynamoDB's endpoint is
gone); ``SIGUSR2`` starts it again on the same port with every table and item intact (moto
keeps its state in this process). ``SIGTERM``/``SIGINT`` end it. Used by the fault tests for
"the server stopped mid-run" and as the upstream of the fault proxy.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from moto.server import ThreadedMotoServer


def main() -> int:
    """Serve until SIGTERM/SIGINT; SIGUSR1 stops and SIGUSR2 restarts the listener."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    lock = threading.Lock()
    done = threading.Event()
    state: dict[str, ThreadedMotoServer | None] = {"server": None}

    def start(*_: object) -> None:
        with lock:
            if state["server"] is None:
                server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
                server.start()
                state["server"] = server
        print(f"motoserver: listening on {port}", flush=True)

    def stop(*_: object) -> None:
        with lock:
            server, state["server"] = state["server"], None
            if server is not None:
                server.stop()
        print("motoserver: stopped listening", flush=True)

    def finish(*_: object) -> None:
        done.set()

    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=stop).start())
    signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=start).start())
    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    start()
    while not done.wait(0.5):
        pass
    stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
