"""Key administration: the admin API through Mangum with the REST events in events/, and the
``mlmoat keys`` command, both against moto server over HTTP."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from coresupport import REPO, make_client, settings_for
from mangum import Mangum

from mlmoat.cli import main as mlmoat_main
from security.admin import KeyAdmin
from security.api import create_admin_app
from security.audit import AuditLog
from security.auth import Authenticator
from security.keys import KEY_PREFIX, parse_key
from security.limits import Gatekeeper
from security.store import PrincipalStore

EVENTS = REPO / "events" / "rest"


class AdminApi:
    def __init__(self, endpoint: str, table: str) -> None:
        settings = settings_for(table)
        store = PrincipalStore(client=make_client(endpoint), table_name=table)
        self.admin = KeyAdmin(store=store, settings=settings)
        self.gatekeeper = Gatekeeper(store=store, settings=settings)
        self.authenticator = Authenticator(settings=settings, token_verifier=None)
        self.audit_stream = io.StringIO()
        app = create_admin_app(
            settings=settings,
            admin=self.admin,
            authenticator=self.authenticator,
            gatekeeper=self.gatekeeper,
            audit=AuditLog(service="mlmoat-admin-test", stream=self.audit_stream),
        )
        self.handler = Mangum(app, lifespan="off")

    def invoke(self, name: str, **subs: str) -> tuple[int, dict[str, str], Any]:
        text = (EVENTS / f"{name}.json").read_text()
        for placeholder, value in subs.items():
            text = text.replace("${" + placeholder + "}", value)
        event = json.loads(text)
        event["requestContext"]["requestId"] = str(uuid.uuid4())
        context = SimpleNamespace(aws_request_id=str(uuid.uuid4()), function_name="AdminFunction")
        response = self.handler(event, context)
        headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
        for k, values in (response.get("multiValueHeaders") or {}).items():
            headers[k.lower()] = values[-1]
        return response["statusCode"], headers, json.loads(response["body"] or "null")


@pytest.fixture()
def api(core_endpoint: str, core_table: str) -> AdminApi:
    return AdminApi(core_endpoint, core_table)


def test_admin_api_manages_keys_end_to_end(api: AdminApi) -> None:
    operator = api.admin.create(owner="ops", scopes=["admin"])
    admin_key = operator["api_key"]
    # create: 201, the secret once, no-store
    status, headers, body = api.invoke("admin-keys-create", ADMIN_API_KEY=admin_key)
    assert status == 201 and headers["cache-control"] == "no-store"
    assert (
        body["api_key"].startswith(KEY_PREFIX)
        and parse_key(body["api_key"]).key_id == body["key_id"]
    )
    assert body["key"]["scopes"] == ["predict:iris"] and body["key"]["status"] == "active"
    assert "secret_hash" not in json.dumps(body)
    key_id, first_secret = body["key_id"], body["api_key"]
    # list and show
    status, _, listing = api.invoke("admin-keys-list", ADMIN_API_KEY=admin_key)
    assert status == 200 and key_id in {k["key_id"] for k in listing["keys"]}
    status, _, shown = api.invoke("admin-key-show", ADMIN_API_KEY=admin_key, KEY_ID=key_id)
    assert (
        status == 200 and shown["owner"] == "fixture-owner" and shown["rate_limit"] == "60/minute"
    )
    # suspend, reinstate, rotate, usage, revoke
    assert (
        api.invoke("admin-key-suspend", ADMIN_API_KEY=admin_key, KEY_ID=key_id)[2]["status"]
        == "suspended"
    )
    assert (
        api.invoke("admin-key-reinstate", ADMIN_API_KEY=admin_key, KEY_ID=key_id)[2]["status"]
        == "active"
    )
    status, headers, rotated = api.invoke(
        "admin-key-rotate", ADMIN_API_KEY=admin_key, KEY_ID=key_id
    )
    assert status == 200 and headers["cache-control"] == "no-store"
    assert rotated["api_key"] != first_secret and rotated["key"]["previous_secret_valid_until"]
    status, _, usage = api.invoke("admin-key-usage", ADMIN_API_KEY=admin_key, KEY_ID=key_id)
    assert status == 200 and usage["usage"]["rows_used"] == 0
    assert (
        api.invoke("admin-key-revoke", ADMIN_API_KEY=admin_key, KEY_ID=key_id)[2]["status"]
        == "revoked"
    )
    # a revoked key cannot be reinstated (409 in the admin API's words), and its credentials
    # are refused at once
    status, _, body = api.invoke("admin-key-reinstate", ADMIN_API_KEY=admin_key, KEY_ID=key_id)
    assert status == 409
    assert body["error"]["code"] == "conflict"
    assert body["error"]["message"] == "The key's current status does not allow this change."
    # the audit log names the operator's key id and never any secret
    audit = api.audit_stream.getvalue()
    assert operator["key_id"] in audit
    for secret in (admin_key, first_secret, rotated["api_key"]):
        assert secret not in audit and parse_key(secret).secret not in audit


def test_admin_api_refuses_without_admin_scope_or_credentials(api: AdminApi) -> None:
    predictor = api.admin.create(owner="app")
    status, headers, body = api.invoke(
        "admin-keys-list-without-admin-scope", API_KEY=predictor["api_key"]
    )
    assert status == 403 and set(body) == {"error"} and "www-authenticate" not in headers
    status, headers, body = api.invoke("admin-keys-list-missing-key")
    assert status == 401 and "www-authenticate" in headers
    assert set(body) == {"error"}


def test_admin_api_unknown_key_is_404_and_bad_body_is_refused_after_auth(api: AdminApi) -> None:
    operator = api.admin.create(owner="ops2", scopes=["admin"])
    status, _, _ = api.invoke("admin-key-show", ADMIN_API_KEY=operator["api_key"], KEY_ID="A" * 12)
    assert status == 404
    status, _, body = api.invoke(
        "admin-key-show", ADMIN_API_KEY=operator["api_key"], KEY_ID="not-a-key-id"
    )
    assert status == 422
    assert body["error"] == {
        "code": "invalid_request",
        "message": "The key id is not valid.",
        "request_id": body["error"]["request_id"],
    }


def _keys(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    endpoint: str,
    table: str,
    *argv: str,
) -> tuple[int, Any, str]:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("SECURITY_TABLE_NAME", table)
    code = mlmoat_main(["keys", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_keys_command(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    core_endpoint: str,
    core_table: str,
) -> None:
    run = lambda *argv: _keys(monkeypatch, capsys, core_endpoint, core_table, *argv)  # noqa: E731
    code, created, _ = run(
        "create",
        "--owner",
        "cli-user",
        "--scope",
        "predict:iris",
        "--rate-limit",
        "30/minute",
        "--budget",
        "500",
        "--output",
        "label",
        "--expires-in",
        "30d",
    )
    assert code == 0 and created["api_key"].startswith(KEY_PREFIX)
    key_id = created["key_id"]
    code, shown, _ = run("show", key_id)
    assert (shown["status"], shown["budget"], shown["rate_limit"], shown["output_policy"]) == (
        "active",
        500,
        "30/minute",
        "label",
    )
    assert shown["expires_at"] - shown["created_at"] == 30 * 86400
    assert key_id in {k["key_id"] for k in run("list", "--owner", "cli-user")[1]}
    assert run("suspend", key_id)[1]["status"] == "suspended"
    assert run("reinstate", key_id)[1]["status"] == "active"
    code, rotated, _ = run("rotate", key_id, "--grace", "0s")
    assert code == 0 and rotated["api_key"] != created["api_key"]
    assert run("usage", key_id)[1]["usage"]["rows_used"] == 0
    assert run("revoke", key_id)[1]["status"] == "revoked"
    code, _, err = run("reinstate", key_id)
    assert code == 1 and json.loads(err) == {"error": "invalid_transition"}
    code, _, err = run("show", "B" * 12)
    assert code == 1 and json.loads(err) == {"error": "unknown_key"}
    code, _, err = run("create", "--owner", "x", "--scope", "root")
    assert code == 1 and json.loads(err) == {"error": "invalid_scope"}


def test_keys_command_as_a_process(core_endpoint: str, core_table: str, tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_ENDPOINT_URL_DYNAMODB": core_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "SECURITY_TABLE_NAME": core_table,
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "mlmoat.cli", "keys", "create", "--owner", "proc"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    created = json.loads(done.stdout)
    assert set(created) >= {"key_id", "api_key"} and created["key"]["scopes"] == ["predict:*"]


@pytest.mark.parametrize(
    "event",
    [
        "admin-keys-create",
        "admin-keys-list",
        "admin-key-show",
        "admin-key-usage",
        "admin-key-revoke",
        "admin-key-suspend",
        "admin-key-reinstate",
        "admin-key-rotate",
    ],
)
def test_every_admin_route_refuses_a_key_without_the_admin_scope(api: AdminApi, event: str) -> None:
    # given a predict-only key and a target key
    predictor = api.admin.create(owner="app")
    target = api.admin.create(owner="target")
    # when the predict-only key calls the admin route
    status, _, body = api.invoke(event, ADMIN_API_KEY=predictor["api_key"], KEY_ID=target["key_id"])
    # then it is refused in the admin API's words (not "use this model") and the target is untouched
    assert status == 403 and set(body) == {"error"}
    assert body["error"]["message"] == "These credentials may not administer keys."
    assert api.admin.show(target["key_id"])["status"] == "active"
