"""A corrupted model artifact: that model is never served, and every other model is.

Each case copies the committed ``models/`` tree, damages one thing of iris (the default model),
and points the function at the copy (``SECURITY_MODEL_DIR`` through ``--env-vars``, as SAM
applies it). Through ``mlmoat local invoke`` the function starts (no init error), logs one
``model_unavailable`` line naming iris and the failed check, and answers ``/predict`` with 503
``model_unavailable``; through ``start-api`` every iris request gets that 503 (never the
platform's 502), no key is charged for it, and breast-cancer is served. The undamaged copy
serves iris normally, so the refusal is caused by the damage and nothing else.
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


#: Each damage and the check it fails (the reason in the init line and the audit record).
DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "one flipped bit": (_flip_byte, "model_hash_mismatch"),
    "truncated artifact": (_truncate, "model_hash_mismatch"),
    "another model's artifact": (_swap_for_other_model, "model_hash_mismatch"),
    "manifest hash edited": (_edit_manifest_hash, "model_hash_mismatch"),
    "artifact missing": (_remove_artifact, "model_file_missing"),
    "calibration for another version": (_stale_calibration, "defences_version_mismatch"),
}


def _models_copy(tmp_path: Path, damage: Callable[[Path], None] | None) -> Path:
    models = tmp_path / f"models-{uuid.uuid4().hex[:6]}"
    shutil.copytree(REPO / "models", models)
    if damage is not None:
        damage(models)
    return models


def _invoke(
    stack: FaultStack, tmp_path: Path, models: Path, api_key: str
) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / f"env-{uuid.uuid4().hex[:6]}.json"
    env_file.write_text(json.dumps({"PredictFunction": {"SECURITY_MODEL_DIR": str(models)}}))
    event = tmp_path / f"event-{uuid.uuid4().hex[:6]}.json"
    event.write_text(EVENT.read_text().replace("${API_KEY}", api_key))
    return subprocess.run(  # noqa: S603
        mlmoat_command(
            "local",
            "invoke",
            "PredictFunction",
            "-e",
            str(event),
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


def _init_lines(output: str) -> list[dict[str, object]]:
    lines = []
    for line in output.splitlines():
        start = line.find("{")
        if start >= 0 and '"model_unavailable"' in line:
            record = json.loads(line[start:])
            if record.get("message") == "model_unavailable":
                lines.append(record)
    return lines


def test_the_undamaged_copy_starts_and_answers(fault_stack: FaultStack, tmp_path: Path) -> None:
    # given an intact copy of the models and a valid key / when invoked / then iris answers
    _, api_key = fault_stack.create_key(f"fault-{uuid.uuid4().hex[:8]}")
    result = _invoke(fault_stack, tmp_path, _models_copy(tmp_path, None), api_key)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    response = json.loads(result.stdout)
    assert response["statusCode"] == 200, response
    assert _init_lines(result.stdout + result.stderr) == []


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_damaged_artifact_makes_that_model_unavailable_and_the_function_starts(
    fault_stack: FaultStack, tmp_path: Path, damage: str
) -> None:
    # given a models tree with one thing of iris damaged, and a valid key
    step, reason = DAMAGE[damage]
    models = _models_copy(tmp_path, step)
    _, api_key = fault_stack.create_key(f"fault-{uuid.uuid4().hex[:8]}")
    # when the function is invoked on /predict (iris, the default model)
    result = _invoke(fault_stack, tmp_path, models, api_key)
    # then it started (no init error) and answered 503 model_unavailable, nothing else said
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    response = json.loads(result.stdout)
    assert response["statusCode"] == 503, response
    error = json.loads(response["body"])["error"]
    assert error["code"] == "model_unavailable", error
    assert reason not in result.stdout
    # and its init logged iris as unavailable, with the check it failed
    lines = _init_lines(result.stderr)
    assert [(line["model"], line["reason"]) for line in lines] == [("iris", reason)], lines
    print(f"{damage}: {lines[0]['detail']}")


def test_start_api_on_a_damaged_artifact_refuses_that_model_and_serves_the_others(
    fault_stack: FaultStack, tmp_path: Path
) -> None:
    # given start-api on a models tree whose iris artifact has one flipped bit, and a fresh key
    models = _models_copy(tmp_path, _flip_byte)
    api = fault_stack.start_api("model-faults", function_env={"SECURITY_MODEL_DIR": str(models)})
    key_id, api_key = fault_stack.create_key(f"fault-{uuid.uuid4().hex[:8]}")
    # when iris predictions are requested, twice
    responses = [api.post({"features": [5.1, 3.5, 1.4, 0.2]}, api_key=api_key) for _ in range(2)]
    # then each is refused 503 model_unavailable by the running function (never the platform's
    # 502), with no Retry-After; nothing is charged and each has its deny record
    for response in responses:
        assert response.status == 503, response.body
        assert response.json["error"]["code"] == "model_unavailable"
        assert "retry-after" not in response.headers
        (record,) = api.audit_for(response.request_id)
        assert (record["decision"], record["reason"]) == ("deny", "model_unavailable")
    assert fault_stack.rows_used(key_id) == 0
    # and another model of the same function is served and counted
    manifest = json.loads((models / "breast-cancer" / "manifest.json").read_text())
    envelope = manifest["envelope"]
    row = [(envelope[f]["min"] + envelope[f]["max"]) / 2 for f in manifest["feature_names"]]
    served = api.post({"features": row}, api_key=api_key, path="/models/breast-cancer/predict")
    assert served.status == 200, served.body
    assert fault_stack.rows_used(key_id) == 1
    assert "model_unavailable" in api.log.read_text()
