"""The load test's clients: request bodies inside the model's envelope, threads, samples."""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mlmoat.load.plan import LoadConfig, LoadKey
from mlmoat.local.stack import REPO, REQUEST_TIMEOUT_S, send


@dataclass(frozen=True, slots=True)
class Sample:
    """One request as the client saw it (never the secret)."""

    key_id: str
    instance: int
    rows: int
    sent: float
    received: float
    status: int
    request_id: str | None
    error_code: str | None
    returned_rows: int
    transport_error: str | None = None
    route: str = "/predict"


def feature_envelope(model: str) -> list[tuple[float, float]]:
    """Per-feature (low, high) of the model's training envelope, from its manifest.

    Raises:
        RuntimeError: the manifest does not describe an envelope.
    """
    manifest = json.loads((REPO / "models" / model / "manifest.json").read_text())
    envelope = manifest.get("envelope") or manifest.get("feature_envelope")
    if isinstance(envelope, dict):
        names = manifest["feature_names"]
        return [(float(envelope[n]["min"]), float(envelope[n]["max"])) for n in names]
    if isinstance(envelope, list):
        return [(float(e["min"]), float(e["max"])) for e in envelope]
    raise RuntimeError(f"models/{model}/manifest.json has no training envelope")


def _body(rows: int, envelope: Sequence[tuple[float, float]], rng: random.Random) -> bytes:
    values = [[round(rng.uniform(lo, hi), 3) for lo, hi in envelope] for _ in range(rows)]
    document = {"features": values[0]} if rows == 1 else {"instances": values}
    return json.dumps(document).encode()


def _one_request(
    key: LoadKey,
    instance: int,
    port: int,
    rows: int,
    body: bytes,
    model: str,
    *,
    default_route: bool = True,
) -> Sample:
    # The default model answers on both routes; both count against the same key.
    path = "/predict" if model == "iris" and default_route else f"/models/{model}/predict"
    headers = {"Content-Type": "application/json"}
    if key.token is not None:
        headers["Authorization"] = f"Bearer {key.token}"
    else:
        headers["X-API-Key"] = key.api_key
    sent = time.time()
    try:
        status, response_headers, payload = send(port, path=path, body=body, headers=headers)
    except (OSError, http.client.HTTPException) as exc:
        return Sample(key.key_id, instance, rows, sent, time.time(), 0, None, None, 0,
                      transport_error=type(exc).__name__, route=path)  # fmt: skip
    received = time.time()
    error_code: str | None = None
    returned = 0
    with contextlib.suppress(ValueError):
        document = json.loads(payload)
        if isinstance(document, dict):
            if isinstance(document.get("error"), dict):
                error_code = str(document["error"].get("code"))
            if isinstance(document.get("predictions"), list):
                returned = len(document["predictions"])
    return Sample(key.key_id, instance, rows, sent, received, status,
                  response_headers.get("x-request-id"), error_code, returned,
                  route=path)  # fmt: skip


def warm_up(key: LoadKey, ports: Sequence[int], model: str) -> tuple[list[Sample], int]:
    """Cold-start each instance with one request, one instance at a time, before the timed run.

    Returns the warm-up samples (checked like every other request) and how many cold starts
    failed and were retried: on a loaded 2-core machine several simultaneous inits can exceed
    Lambda's 10 s init limit, which says nothing about the API under test.
    """
    rng = random.Random(0)  # noqa: S311 - load shape, not security
    envelope = feature_envelope(model)
    samples: list[Sample] = []
    failed_inits = 0
    for index, port in enumerate(ports):
        for _ in range(3):
            sample = _one_request(key, index, port, 1, _body(1, envelope, rng), model)
            if sample.status == 502 and sample.request_id is None:
                failed_inits += 1
                continue
            samples.append(sample)
            break
    return samples, failed_inits


def drive(
    keys: Sequence[LoadKey], ports: Sequence[int], config: LoadConfig
) -> tuple[list[Sample], float]:
    """Run ``config.clients`` client threads until the duration or the request cap is reached."""
    envelope = feature_envelope(config.model)
    samples: list[Sample] = []
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + config.duration_s

    def client(index: int) -> None:
        rng = random.Random(config.seed * 1000 + index)  # noqa: S311 - load shape, not security
        while time.monotonic() < deadline:
            with lock:
                if issued[0] >= config.max_requests:
                    return
                issued[0] += 1
            key = rng.choice(keys)
            instance = rng.randrange(len(ports))
            rows = rng.randint(2, 3) if rng.random() < config.batch_share else 1
            body = _body(rows, envelope, rng)
            sample = _one_request(
                key, instance, ports[instance], rows, body, config.model,
                default_route=rng.random() < 0.5,
            )  # fmt: skip
            with lock:
                samples.append(sample)

    started = time.monotonic()
    threads = [
        threading.Thread(target=client, args=(i,), daemon=True) for i in range(config.clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=config.duration_s + REQUEST_TIMEOUT_S + 30)
    return samples, time.monotonic() - started
