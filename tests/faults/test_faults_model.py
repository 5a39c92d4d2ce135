"""A corrupted model artifact: the function refuses to start, so nothing is ever served.

Each case copies the committed ``models/`` tree, damages one thing, and points the function at
the copy (``SECURITY_MODEL_DIR`` through ``--env-vars``, as SAM applies it). Through
``mlmoat local invoke`` the init fails with ``ModelIntegrityError`` (the Lambda runtime's init
error, exit 1) before any request is handled; through ``start-api`` every request gets the
platform's 502 and no key is charged. The undamaged copy serves normally, so the refusal is
caused by the damage and nothing else.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from faultstack import REPO, FaultStack

from mlmoat.local.stack import mlmoat_command

EVENT = REPO / "events" / "rest" / "predict-ok-single.json"


def _flip_byte(models: Path) -> None:
    onnx = models / "iris" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))


def _truncate(models: Path) -> None:
    onnx = models / "iris" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-16])


def _swap_for_other_model(models: Path) -> None:
    # a valid ONNX file, just not the one the manifest describes
    shutil.copy(models / "breast-cancer" / "model.onnx", models / "iris" / "model.onnx")


def _edit_manifest_hash(models: Path) -> None:
    manifest = models / "iris" / "manifest.json"
    document = json.loads(manifest.read_text())
    document["onnx"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(document))


def _remove_artifact(models: Path) -> None:
    (models / "iris" / "model.onnx").unlink()


def _stale_calibration(models: Path) -> None:
    defences = models / "iris" / "defences.json"
    document = json.loads(defences.read_text())
    # the whole file as calibrated for an earlier training run of the same model
    document["model_version"] = document["squeeze"]["model_version"] = "iris-000000000000"
    defences.write_text(json.dumps(document))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "one flipped bit": _flip_byte,
    "truncated artifact": _truncate,
    "another model's artifact": _swap_for_other_model,
    "manifest hash edited": _edit_manifest_hash,
    "artifact missing": _remove_artifact,
    "calibration for another version": _stale_calibration,
}


def _models_copy(tmp_path: Path, damage: Callable[[Path], None] | None) -> Path:
    models = tmp_path / f"models-{uuid.uuid4().hex[:6]}"
    shutil.copytree(REPO / "models", models)
    if damage is not None:
        damage(models)
    return models


def _invoke(stack: FaultStack, tmp_path: Path, models: Path) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / f"env-{uuid.uuid4().hex[:6]}.json"
    env_file.write_text(json.dumps({"PredictFunction": {"SECURITY_MODEL_DIR": str(models)}}))
    return subprocess.run(  # noqa: S603
        mlmoat_command(
            "local",
            "invoke",
            "PredictFunction",
            "-e",
            str(EVENT),
            "--env-vars",
            str(env_file),
            "--no-build",
        ),  # fmt: skip
        env=stack.direct_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_undamaged_copy_starts_and_answers(fault_stack: FaultStack, tmp_path: Path) -> None:
    # given an intact copy of the models / when invoked / then the function starts and answers
    # (the event's key is unknown here, so the answer is 401: what matters is that it ran)
    result = _invoke(fault_stack, tmp_path, _models_copy(tmp_path, None))
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    response = json.loads(result.stdout)
    assert response["statusCode"] in (200, 401)


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_damaged_artifact_makes_the_function_refuse_to_start(
    fault_stack: FaultStack, tmp_path: Path, damage: str
) -> None:
    # given a models tree with one thing damaged
    models = _models_copy(tmp_path, DAMAGE[damage])
    # when the function is invoked
    result = _invoke(fault_stack, tmp_path, models)
    # then its init fails with the integrity error and no response is produced
    assert result.returncode == 1, result.stdout
    error = json.loads(result.stdout)
    assert "statusCode" not in error
    assert error["errorType"] == "ModelIntegrityError", error
    print(f"{damage}: {error['errorMessage']}")


def test_start_api_on_a_damaged_artifact_serves_nothing_and_charges_nothing(
    fault_stack: FaultStack, tmp_path: Path
) -> None:
    # given start-api on a models tree whose iris artifact has one flipped bit, and a fresh key
    models = _models_copy(tmp_path, _flip_byte)
    api = fault_stack.start_api("model-faults", function_env={"SECURITY_MODEL_DIR": str(models)})
    key_id, api_key = fault_stack.create_key(f"fault-{uuid.uuid4().hex[:8]}")
    # when predictions are requested, twice (a refused init is retried on the next request)
    responses = [api.post({"features": [5.1, 3.5, 1.4, 0.2]}, api_key=api_key) for _ in range(2)]
    # then no prediction is served (the platform's 502: the function never started),
    # nothing is charged and no request was admitted
    for response in responses:
        assert response.status == 502, response.body
        assert b"predictions" not in response.body
    assert fault_stack.rows_used(key_id) == 0
    assert not [r for r in api.audit() if r.get("decision") == "allow"]
    assert "ModelIntegrityError" in api.log.read_text()
