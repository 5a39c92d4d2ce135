"""Schemathesis against the running API, driven by the API's own OpenAPI document.

``mlmoat openapi`` writes the document (with its ``ApiKey`` and ``BearerJWT`` security schemes);
Schemathesis generates requests from it, valid and invalid, and sends them to
``mlmoat local start-api`` (the real ``PredictFunction`` on a local DynamoDB) with a valid key
of unbounded limits. Every check Schemathesis has is on (no server error, status codes,
content types, response headers and bodies conforming to the document, invalid data refused,
auth not ignored, undeclared methods refused), except one, for a stated reason:

* ``positive_data_acceptance`` (schema-valid data must be accepted): the document deliberately
  does not publish each model's training envelope (publishing it would hand an attacker the
  region to probe), and ``/models/{model}/predict`` declares one body shape for every model, so
  schema-valid rows outside the envelope, or with another model's feature count, get a
  documented 422.

The smoke run (``make test``) uses a fixed seed and ``MLMOAT_FUZZ_EXAMPLES`` (default 25) cases
per operation and phase; ``make fuzz`` runs the same test with more (see the Makefile), and
``MLMOAT_FUZZ_SEED`` / ``MLMOAT_FUZZ_REPORT`` choose the seed and keep the JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlmoat.local.stack import KeyPlan, LocalStack, create_key, mlmoat_command

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("MLMOAT_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("MLMOAT_FUZZ_SEED", "20261126"))
EXCLUDED_CHECKS = "positive_data_acceptance"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """start-api on a local DynamoDB, a key with unbounded limits, the OpenAPI document."""
    work = tmp_path_factory.mktemp("fuzz")
    stack = LocalStack(work_dir=work, instances=1)
    try:
        stack.start_dynamodb()
        _, api_key = create_key(
            stack.env,
            owner="fuzz",
            plan=KeyPlan("fuzz", rate=999_999_999, window_s=60, budget=10**12),
            output="probabilities:3",
        )
        stack.start_apis()
        document = subprocess.run(  # noqa: S603
            mlmoat_command("openapi"), cwd=REPO, capture_output=True, check=True, timeout=120
        ).stdout
        schema = work / "openapi.json"
        schema.write_bytes(document)
        yield f"http://127.0.0.1:{stack.api_ports[0]}", api_key, schema
    finally:
        stack.stop()


def test_the_openapi_document_declares_both_security_schemes(api: tuple[str, str, Path]) -> None:
    document = json.loads(api[2].read_text())
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BearerJWT"]["scheme"] == "bearer"
    assert {"/predict", "/models/{model}/predict"} <= set(document["paths"])


@pytest.mark.timeout(1800)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    api: tuple[str, str, Path], tmp_path: Path
) -> None:
    # given the running API, a valid key and its OpenAPI document
    base_url, api_key, schema = api
    report = Path(os.environ.get("MLMOAT_FUZZ_REPORT") or tmp_path / "schemathesis.json")
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "run", str(schema),
        "--url", base_url, "-H", f"X-API-Key: {api_key}",
        "--checks", "all", "--exclude-checks", EXCLUDED_CHECKS,
        "--mode", "all", "--max-examples", str(EXAMPLES), "--seed", str(SEED),
        "--workers", "1", "--request-timeout", "20", "--suppress-health-check", "all",
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    # when Schemathesis generates and sends its cases
    result = subprocess.run(  # noqa: S603
        command, cwd=tmp_path, capture_output=True, text=True, timeout=1700, check=False
    )
    summary = json.loads(report.read_text())
    cases = summary["test_cases"]
    print(
        f"schemathesis: {cases['generated']} cases, seed {SEED}, "
        f"{EXAMPLES} examples per operation and phase, exit {result.returncode}"
    )
    # then no failure of any kind, and a real number of cases ran against both operations
    assert summary["failures"] == [], result.stdout[-6000:]
    assert summary["errors"] == [], result.stdout[-6000:]
    assert result.returncode == 0, result.stdout[-6000:]
    assert summary["operations"]["tested"] == 2
    assert cases["generated"] >= 2 * EXAMPLES
