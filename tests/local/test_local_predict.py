"""The real application locally: PredictFunction from the Lambda build (CPython 3.13) on moto.

`mlmoat local invoke` with an events/ fixture (REST v1, base64 body) as `sam local
generate-event` makes it, `mlmoat local start-api` and `mlmoat local up` (what `make local`
runs) each answer a prediction end to end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlmoat.local.bootstrap import bootstrap
from mlmoat.local.build import ensure_build
from mlmoat.local.demo import create_demo_key
from mlmoat.local.server import free_port, wait_for_port
from mlmoat.local.template import Template

REPORT_RE = re.compile(
    r"REPORT RequestId: \S+\tDuration: (?P<duration>[0-9.]+) ms\tBilled Duration: \d+ ms\t"
    r"Memory Size: \d+ MB\tMax Memory Used: (?P<used>\d+) MB\tInit Duration: (?P<init>[0-9.]+) ms"
)


@pytest.fixture(scope="module")
def lambda_build(repo_root: Path) -> Path:
    """The real Lambda build (made by `make build`; a no-op when it is fresh)."""
    return ensure_build(repo_root)


@pytest.fixture()
def local_stack(moto_server: Any, repo_root: Path, lambda_build: Path) -> dict[str, str]:
    """The template's tables and queues at the session's moto server, and a fresh demo key."""
    template = Template(repo_root / "template.yaml", endpoint=moto_server.endpoint)
    bootstrap(template)
    return {"api_key": create_demo_key(template, owner=f"t{time.time_ns()}")}


def _mlmoat(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlmoat.cli", *args],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


def test_invoke_predict_function_with_a_rest_base64_event(
    tmp_path: Path, repo_root: Path, moto_server: Any, local_stack: dict[str, str]
) -> None:
    # Given the REST event fixture for a single-row prediction (base64 body) with a real key
    fixture = repo_root / "events" / "rest" / "predict-ok-single.json"
    event = json.loads(fixture.read_text().replace("${API_KEY}", local_stack["api_key"]))
    assert event["isBase64Encoded"] is True
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(event))
    # When PredictFunction is invoked from the Lambda build
    result = _mlmoat(
        "local", "invoke", "PredictFunction", "-e", str(event_file), "--no-build",
        env={**os.environ, **moto_server.env},
    )  # fmt: skip
    # Then it answers 200 with a prediction, and reports like Lambda
    assert result.returncode == 0, result.stderr[-3000:]
    response = json.loads(result.stdout)
    assert response["statusCode"] == 200, response
    body = json.loads(response["body"])
    assert body["model"] == "iris"
    assert len(body["predictions"]) == 1
    assert body["predictions"][0]["label"] in ("setosa", "versicolor", "virginica")
    report = REPORT_RE.search(result.stderr)
    assert report is not None, result.stderr[-2000:]
    print(f"\nPredictFunction cold invoke: {report[0]}")


def _post(
    port: int, path: str, body: dict[str, Any], api_key: str
) -> tuple[int, dict[str, Any], Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "POST", path, body=json.dumps(body),
            headers={"Content-Type": "application/json", "X-API-Key": api_key},
        )  # fmt: skip
        response = connection.getresponse()
        return (
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            json.loads(response.read()),
        )
    finally:
        connection.close()


@pytest.fixture()
def start_api(moto_server: Any, local_stack: dict[str, str]) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlmoat.cli",
            "local",
            "start-api",
            "--port",
            str(port),
            "--no-build",
        ],
        env={**os.environ, **moto_server.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_start_api_serves_predictions_end_to_end(
    start_api: int, local_stack: dict[str, str]
) -> None:
    # When a client posts the seed's single-row body to /predict with a valid key
    status, headers, body = _post(
        start_api, "/predict", {"features": [5.1, 3.5, 1.4, 0.2]}, local_stack["api_key"]
    )
    # Then the API answers 200 with a prediction and the request id header
    assert status == 200, body
    assert body["predictions"][0]["label"] == "setosa"
    assert headers.get("x-request-id") == body["request_id"]
    # and a request with no key is refused by the function, not by the emulator
    connection = http.client.HTTPConnection("127.0.0.1", start_api, timeout=60)
    connection.request("POST", "/models/iris/predict", body=b'{"features": [5.1, 3.5, 1.4, 0.2]}',
                       headers={"Content-Type": "application/json"})  # fmt: skip
    refused = connection.getresponse()
    assert refused.status == 401
    assert "error" in json.loads(refused.read())
    connection.close()


def test_local_up_prints_a_curl_command_that_works(repo_root: Path, lambda_build: Path) -> None:
    # Given `mlmoat local up` (what `make local` runs) on free ports
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlmoat.cli", "local", "up", "--port", str(port), "--no-build"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=repo_root,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(
            target=lambda: [lines.put(line) for line in process.stdout or []], daemon=True
        )
        reader.start()
        curl = None
        printed: list[str] = []
        deadline = time.monotonic() + 120
        while curl is None and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=1)
                printed.append(line)
                if line.startswith("curl "):
                    curl = line.strip()
        assert curl is not None, "mlmoat local up printed no curl command"
        # and before it, every route of every function (the admin API's included), where the
        # audit records go and that a function's first request is its cold start
        text = "".join(printed)
        for method, resource, function in (
            ("POST", "/predict", "PredictFunction"),
            ("POST", "/models/{model}/predict", "PredictFunction"),
            ("POST", "/admin/keys", "AdminFunction"),
            ("GET", "/admin/keys", "AdminFunction"),
        ):
            assert f"# {method:<5} http://127.0.0.1:{port}{resource} -> {function}\n" in text
        assert "# audit records: one JSON line per request on stderr" in text
        assert "cold start" in text
        # When the printed request is sent
        key = re.search(r"X-API-Key: ([^']+)'", curl)
        data = re.search(r"-d '([^']+)'", curl)
        assert key is not None and data is not None
        assert f"http://127.0.0.1:{port}/predict" in curl
        status, _, body = _post(port, "/predict", json.loads(data[1]), key[1])
        # Then it is answered with a prediction
        assert status == 200, body
        assert len(body["predictions"]) == 1
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
