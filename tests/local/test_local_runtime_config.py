"""A runtime switch of the squeeze policy reaches a running `mlmoat local start-api`, no restart.

The real chain: `mlmoat local start-api` (PredictFunction from the Lambda build under CPython
3.13, its cache age shortened to 2 s with `--parameter-overrides RuntimeConfigMaxAge=2`) on the
session's moto server, whose SSM holds the local stack's runtime parameter (created by
`mlmoat local bootstrap`'s code from template.yaml); `mlmoat config` run as an operator runs it,
with only the local exports. The input is one the squeezing detector flags (squeezed and raw
predictions disagree), found with the same calibration the function loads: under the
deploy-time `flag` it is answered, under `refuse` it is refused (422), a per-model `flag`
answers it again, a malformed document is a 503 (never the weaker deploy-time value), and
`mlmoat config unset` returns to the deploy-time policy.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from logcapture import remember_key
from mlmoat.local.bootstrap import bootstrap
from mlmoat.local.build import ensure_build
from mlmoat.local.server import free_port, wait_for_port
from mlmoat.local.stack import KeyPlan, create_key, read_audit, read_key_items
from mlmoat.local.template import Template

MAX_AGE_S = 2.0
# What a request adds to the cache age before its answer shows the switch (one poll interval and
# one request on a loaded 2-core machine).
SLACK_S = 1.5
POLL_S = 0.25


@pytest.fixture(scope="module")
def lambda_build(repo_root: Path) -> Path:
    """The real Lambda build (made by `make build`; a no-op when it is fresh)."""
    return ensure_build(repo_root)


def _flagged_row(repo_root: Path) -> list[float]:
    """An iris row inside the envelope that the shipped squeezing calibration flags."""
    from security.defences import Squeezer
    from security.model import ModelRegistry

    registry = ModelRegistry.load(repo_root / "models")
    model = registry.get("iris")
    squeezer = Squeezer.from_manifest(
        repo_root / "models", [("iris", model.version)], policy="flag"
    )
    manifest = json.loads((repo_root / "models" / "iris" / "manifest.json").read_text())
    lower = np.array([manifest["envelope"][name]["min"] for name in manifest["feature_names"]])
    upper = np.array([manifest["envelope"][name]["max"] for name in manifest["feature_names"]])
    rows = np.round(lower + np.random.default_rng(0).random((400, 4)) * (upper - lower), 3)
    flagged = np.flatnonzero(squeezer.check(model, rows).flagged_mask)
    assert flagged.size, "no candidate row is flagged: the calibration changed"
    return [float(v) for v in rows[flagged[0]]]


@pytest.fixture()
def runtime_stack(
    moto_server: Any, repo_root: Path, lambda_build: Path, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    template = Template(repo_root / "template.yaml", endpoint=moto_server.endpoint)
    report = bootstrap(template)
    name = report.parameters["RuntimeConfigParameter"]
    ssm = boto3.client("ssm", endpoint_url=moto_server.endpoint, region_name="us-east-1")
    ssm.put_parameter(Name=name, Value="{}", Type="String", Overwrite=True)
    env = {**os.environ, **moto_server.env}
    key_id, api_key = create_key(
        env, owner=f"rt{time.time_ns()}", plan=KeyPlan("rt", 600, 60, 10_000), output="label"
    )
    remember_key(api_key)
    port = free_port()
    log = tmp_path / "start-api.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            [sys.executable, "-m", "mlmoat.cli", "local", "start-api", "--port", str(port),
             "--no-build", "--parameter-overrides", f"RuntimeConfigMaxAge={MAX_AGE_S:.0f}"],
            env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=repo_root,
        )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
        yield {"port": port, "api_key": api_key, "key_id": key_id, "env": env, "ssm": ssm,
               "name": name, "process": process, "log": log, "statuses": []}  # fmt: skip
    finally:
        process.terminate()
        process.wait(timeout=30)
        # the session's other start-api tests get the deploy-time policy again
        ssm.put_parameter(Name=name, Value="{}", Type="String", Overwrite=True)


def _post(stack: dict[str, Any], row: list[float]) -> tuple[int, dict[str, str], dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", stack["port"], timeout=60)
    try:
        connection.request(
            "POST", "/predict", body=json.dumps({"features": row}),
            headers={"Content-Type": "application/json", "X-API-Key": stack["api_key"]},
        )  # fmt: skip
        response = connection.getresponse()
        headers = {key.lower(): value for key, value in response.getheaders()}
        return response.status, headers, json.loads(response.read())
    finally:
        connection.close()


def _config(stack: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    # What an operator's shell has after `mlmoat local dynamodb`'s exports: no parameter named.
    env = {k: v for k, v in stack["env"].items() if not k.startswith("SECURITY_")}
    return subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
        [sys.executable, "-m", "mlmoat.cli", "config", *args],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


def _until(
    stack: dict[str, Any], row: list[float], done: Callable[[int], bool]
) -> tuple[float, int, dict[str, str], dict[str, Any]]:
    start = time.monotonic()
    while True:
        status, headers, body = _post(stack, row)
        stack["statuses"].append(status)
        elapsed = time.monotonic() - start
        if done(status) or elapsed > MAX_AGE_S + SLACK_S:
            return elapsed, status, headers, body
        time.sleep(POLL_S)


def _rows_used(stack: dict[str, Any]) -> int:
    item = read_key_items(stack["env"], [stack["key_id"]])[stack["key_id"]]
    return int(item.get("rows_used", 0))


def test_a_squeeze_policy_switch_is_seen_within_the_cache_age_without_a_restart(
    runtime_stack: dict[str, Any], repo_root: Path
) -> None:
    stack = runtime_stack
    row = _flagged_row(repo_root)
    # Given the deploy-time policy (flag): the flagged row is answered
    status, _, body = _post(stack, row)
    assert status == 200, body
    assert body["predictions"][0]["label"] in ("setosa", "versicolor", "virginica")

    # When the operator switches to refuse with one command
    done = _config(stack, "set", "squeeze_policy", "refuse")
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    assert written["parameter"] == "/mlmoat-local/runtime-config"
    assert written["document"] == {"squeeze_policy": "refuse"}
    # Then within the cache age the same running API refuses it
    elapsed, status, _, body = _until(stack, row, lambda s: s == 422)
    assert status == 422, body
    assert body["error"]["code"] == "input_refused"
    assert elapsed <= MAX_AGE_S + SLACK_S
    print(f"\nrefuse seen {elapsed:.2f} s after `mlmoat config set` returned")
    assert stack["process"].poll() is None  # no restart
    # and a row the detector does not flag is still answered under refuse
    status, _, body = _post(stack, [5.1, 3.5, 1.4, 0.2])
    assert status == 200, body

    # A per-model value wins over the global one: iris alone back to flag
    done = _config(stack, "set", "--model", "iris", "squeeze_policy", "flag")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["document"] == {
        "models": {"iris": {"squeeze_policy": "flag"}},
        "squeeze_policy": "refuse",
    }
    elapsed, status, _, body = _until(stack, row, lambda s: s == 200)
    assert status == 200, body
    assert elapsed <= MAX_AGE_S + SLACK_S

    # A malformed document (written past the CLI, which refuses it) fails closed: 503
    refused = _config(stack, "set", "squeeze_policy", "refuze")
    assert refused.returncode != 0 and "refuze" not in refused.stderr
    stack["ssm"].put_parameter(
        Name=stack["name"], Value='{"squeeze_policy": "refuze"}', Type="String", Overwrite=True
    )
    rows_before, stack["statuses"] = _rows_used(stack), []
    elapsed, status, headers, body = _until(stack, row, lambda s: s == 503)
    for _ in range(2):  # 503s from the cache, too
        assert _post(stack, row)[0] == 503
    # a 503 charges nothing: only what was answered (under the cached document) was counted
    assert _rows_used(stack) - rows_before == stack["statuses"].count(200)
    assert status == 503, body
    assert body["error"]["code"] == "service_unavailable"
    assert int(headers["retry-after"]) >= 1
    assert "refuze" not in json.dumps(body) and "runtime" not in json.dumps(body)
    assert elapsed <= MAX_AGE_S + SLACK_S
    shown = _config(stack, "get")
    assert shown.returncode == 1 and json.loads(shown.stdout)["valid"] is False

    # `mlmoat config unset` clears it: the deploy-time flag again
    done = _config(stack, "unset")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["document"] == {}
    elapsed, status, _, body = _until(stack, row, lambda s: s == 200)
    assert status == 200, body
    assert stack["process"].poll() is None

    # Every outcome left its audit record: the refusal and the 503 with their reasons
    stack["process"].terminate()
    stack["process"].wait(timeout=30)
    reasons = {(r.get("status"), r.get("reason")) for r in read_audit([stack["log"]])}
    assert (422, "adversarial_input") in reasons
    assert (503, "runtime_config_invalid") in reasons
