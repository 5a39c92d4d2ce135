"""The benchmark's API Gateway REST (v1) proxy events (``mlmoat.local.events.rest_event``, the one
builder, with the benchmark's headers and a JSON body).

Both stacks receive byte-identical requests apart from the credential header (and the request
id), so neither is favoured by its input.
"""

from __future__ import annotations

import json
from typing import Any

from mlmoat.local.events import rest_event as _rest_event


def rest_event(
    *,
    path: str,
    body: object,
    headers: dict[str, str],
    source_ip: str = "198.51.100.7",
    method: str = "POST",
) -> dict[str, Any]:
    """An API Gateway v1 proxy event carrying ``body`` as JSON."""
    all_headers = {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "Host": "bench.execute-api.us-east-1.amazonaws.com",
        "User-Agent": "mlmoat-bench",
        "X-Forwarded-For": source_ip,
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        **headers,
    }
    return _rest_event(
        path=path,
        body=json.dumps(body).encode(),
        headers=all_headers,
        method=method,
        base64_body=False,
        source_ip=source_ip,
    )
