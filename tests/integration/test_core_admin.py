"""Key administration: the admin API through Mangum with the REST events in events/, and the
``mlmoat keys`` command, both against moto server over HTTP."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from coresupport import REPO, make_client, settings_for
from cryptography.hazmat.primitives.asymmetric import rsa
from mangum import Mangum

from mlmoat.cli import main as mlmoat_main
from mlmoat.local.awsenv import DUMMY_CREDENTIALS
from mlmoat.local.lambda_runtime import LambdaContext
from security.admin import KeyAdmin
from security.api import create_admin_app
from security.audit import AuditLog
from security.dynamo import dump
from security.keys import KEY_PREFIX, parse_key
from security.settings import RateSpec
from security.store import PrincipalStore, subject_pk

EVENTS = REPO / "events" / "rest"
PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)


IAM_ARN = "arn:aws:iam::123456789012:user/ops-alice"
ISSUER = "https://issuer.example"


def _unsigned(event: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    # The same request as API Gateway would pass it from a route deployed without AWS_IAM: no
    # IAM identity, whatever credentials the caller sent.
    for name in ("accountId", "accessKey", "caller", "user", "userArn"):
        event["requestContext"]["identity"][name] = None
    for name in ("Authorization", "X-Amz-Date"):
        event["headers"].pop(name, None)
        event["multiValueHeaders"].pop(name, None)
    for name, value in headers.items():
        event["headers"][name] = value
        event["multiValueHeaders"][name] = [value]
    return event


class AdminApi:
    def __init__(self, endpoint: str, table: str, **settings_kw: Any) -> None:
        settings = settings_for(table, **settings_kw)
        store = PrincipalStore(client=make_client(endpoint), table_name=table)
        self.store = store
        self.admin = KeyAdmin(store=store, settings=settings)
        self.audit_stream = io.StringIO()
        app = create_admin_app(
            settings=settings,
            admin=self.admin,
            audit=AuditLog(service="mlmoat-admin-test", stream=self.audit_stream),
        )
        self.handler = Mangum(app, lifespan="off")

    def invoke(
        self, name: str, *, unsigned: dict[str, str] | None = None, body: Any = None, **subs: str
    ) -> tuple[int, dict[str, str], Any]:
        text = (EVENTS / f"{name}.json").read_text()
        for placeholder, value in {"ISSUER": ISSUER, **subs}.items():
            text = text.replace("${" + placeholder + "}", value)
        event = json.loads(text)
        event["requestContext"]["requestId"] = str(uuid.uuid4())
        if unsigned is not None:
            event = _unsigned(event, unsigned)
        if body is not None:
            event["body"], event["isBase64Encoded"] = json.dumps(body), False
        context = LambdaContext("AdminFunction")
        response = self.handler(event, context)
        headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
        for k, values in (response.get("multiValueHeaders") or {}).items():
            headers[k.lower()] = values[-1]
        return response["statusCode"], headers, json.loads(response["body"] or "null")


@pytest.fixture()
def api(core_endpoint: str, core_table: str) -> AdminApi:
    return AdminApi(core_endpoint, core_table)


def test_admin_api_manages_keys_end_to_end(api: AdminApi) -> None:
    # create: 201, the secret once, no-store
    status, headers, body = api.invoke("admin-keys-create")
    assert status == 201 and headers["cache-control"] == "no-store"
    assert (
        body["api_key"].startswith(KEY_PREFIX)
        and parse_key(body["api_key"]).key_id == body["key_id"]
    )
    assert body["key"]["scopes"] == ["predict:iris"] and body["key"]["status"] == "active"
    assert "secret_hash" not in json.dumps(body)
    key_id, first_secret = body["key_id"], body["api_key"]
    # list and show
    status, _, listing = api.invoke("admin-keys-list")
    assert status == 200 and key_id in {k["key_id"] for k in listing["keys"]}
    status, _, shown = api.invoke("admin-key-show", KEY_ID=key_id)
    assert (
        status == 200 and shown["owner"] == "fixture-owner" and shown["rate_limit"] == "60/minute"
    )
    # suspend, reinstate, rotate, usage, revoke
    assert api.invoke("admin-key-suspend", KEY_ID=key_id)[2]["status"] == "suspended"
    assert api.invoke("admin-key-reinstate", KEY_ID=key_id)[2]["status"] == "active"
    status, headers, rotated = api.invoke("admin-key-rotate", KEY_ID=key_id)
    assert status == 200 and headers["cache-control"] == "no-store"
    assert rotated["api_key"] != first_secret and rotated["key"]["previous_secret_valid_until"]
    status, _, usage = api.invoke("admin-key-usage", KEY_ID=key_id)
    assert status == 200 and usage["usage"]["rows_used"] == 0
    assert api.invoke("admin-key-revoke", KEY_ID=key_id)[2]["status"] == "revoked"
    # a revoked key cannot be reinstated (409 in the admin API's words)
    status, _, body = api.invoke("admin-key-reinstate", KEY_ID=key_id)
    assert status == 409
    assert body["error"]["code"] == "conflict"
    assert body["error"]["message"] == "The key's current status does not allow this change."
    # every admin record names the operator's IAM identity, and never any secret
    records = [json.loads(line) for line in api.audit_stream.getvalue().splitlines()]
    audits = [r for r in records if r.get("message") == "audit"]
    assert len(audits) == 9  # create, list, show, suspend, reinstate, rotate, usage, revoke, 409
    assert {(r["credential_type"], r["principal_id"]) for r in audits} == {("iam", IAM_ARN)}
    audit = api.audit_stream.getvalue()
    for secret in (first_secret, rotated["api_key"]):
        assert secret not in audit and parse_key(secret).secret not in audit


def _admin_scope_key(api: AdminApi) -> str:
    # An admin-scope key as earlier versions made them, written straight into the table.
    created = api.admin.create(owner="legacy-ops")
    item = dict(api.store.get_key(created["key_id"]).item)
    item["scopes"] = {"admin", "predict:*"}
    api.store._client.put_item(  # noqa: SLF001 - a legacy item the admin API can no longer make
        TableName=api.store._table,  # noqa: SLF001
        Item={k: dump(v) for k, v in item.items()},
    )
    return str(created["api_key"])


def test_no_prediction_credential_administers(api: AdminApi) -> None:
    # given an admin-scope key (legacy), a predict key and a prediction-issuer JWT with scope admin
    token = jwt.encode(
        {
            "iss": ISSUER,
            "aud": "mlmoat",
            "sub": "mallory",
            "scope": "admin predict:*",
            "exp": int(time.time()) + 300,
        },
        PRIVATE,
        algorithm="RS256",
    )
    credentials = {
        "admin-scope key": {"X-API-Key": _admin_scope_key(api)},
        "predict key": {"X-API-Key": api.admin.create(owner="app")["api_key"]},
        "admin JWT": {"Authorization": f"Bearer {token}"},
        "none": {},
    }
    for label, headers in credentials.items():
        # when any of them calls an admin route without an IAM identity
        status, headers_out, body = api.invoke("admin-keys-list", unsigned=headers)
        # then it is refused in the admin plane's words
        assert status == 403, label
        assert body["error"]["message"] == "Only a signed IAM identity may administer keys."
        assert "www-authenticate" not in headers_out


def test_admin_api_unknown_key_is_404_and_bad_id_is_422(api: AdminApi) -> None:
    status, _, _ = api.invoke("admin-key-show", KEY_ID="A" * 12)
    assert status == 404
    status, _, body = api.invoke("admin-key-show", KEY_ID="not-a-key-id")
    assert status == 422
    assert body["error"] == {
        "code": "invalid_request",
        "message": "The key id is not valid.",
        "request_id": body["error"]["request_id"],
    }


@pytest.mark.parametrize(
    ("asked", "reason"),
    [
        ({"scopes": ["admin"]}, "A scope is not valid."),
        ({"rate_limit": "999999999/second"}, "The rate limit is above the cap for keys."),
        ({"rate_limit": "86400/day"}, "The rate limit is above the cap for keys."),
        ({"budget": 10**12}, "The budget is above the cap for keys."),
        ({"output_policy": "probabilities:6"}, "The output policy reveals more than keys may."),
        ({"expires_in": "520w"}, "The lifetime is above the cap for keys."),
        ({"scopes": ["predict:breast-cancer"]}, "A scope is not one an admin may grant."),
    ],
)
def test_created_keys_are_capped(
    core_endpoint: str, core_table: str, asked: dict[str, Any], reason: str
) -> None:
    # given caps (the outside test minted 999999999/second, 10^12 rows, probabilities:6)
    api = AdminApi(
        core_endpoint,
        core_table,
        key_max_rate=RateSpec(600, 60),
        key_grantable_scopes=("predict:iris",),
    )
    status, _, body = api.invoke(
        "admin-keys-create", body={"owner": "greedy", "scopes": ["predict:iris"], **asked}
    )
    assert status == 422 and body["error"]["message"] == reason
    assert api.admin.list(owner="greedy") == []
    # while a key inside every cap is created
    status, _, body = api.invoke(
        "admin-keys-create",
        body={"owner": "modest", "scopes": ["predict:iris"], "rate_limit": "10/second"},
    )
    assert status == 201 and body["key"]["rate_limit"] == "10/second"


def test_a_key_without_an_expiry_gets_the_lifetime_cap(core_endpoint: str, core_table: str) -> None:
    api = AdminApi(core_endpoint, core_table, key_max_lifetime_seconds=30 * 86400)
    created = api.admin.create(owner="no-expiry")["key"]
    assert created["expires_at"] - created["created_at"] == 30 * 86400


def test_subjects_are_suspended_reinstated_and_shown(api: AdminApi) -> None:
    subject = f"svc-{uuid.uuid4().hex[:8]}"
    # a subject that never called can be suspended before its first request
    status, _, body = api.invoke("admin-subject-suspend", SUBJECT=subject)
    assert status == 200 and body["status"] == "suspended" and body["subject"] == subject
    status, _, body = api.invoke("admin-subject-show", SUBJECT=subject)
    assert status == 200 and body["issuer"] == ISSUER and body["status"] == "suspended"
    status, _, body = api.invoke("admin-subject-suspend", SUBJECT=subject)
    assert status == 409
    status, _, body = api.invoke("admin-subject-reinstate", SUBJECT=subject)
    assert status == 200 and body["status"] == "active"
    status, _, body = api.invoke("admin-subject-show", SUBJECT="never-seen")
    assert status == 404 and body["error"]["message"] == "No such token subject."
    item = api.store.get(subject_pk(ISSUER, subject))
    assert item is not None and item["kind"] == "jwt"


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
    code, _, err = run("create", "--owner", "x", "--scope", "admin")
    assert code == 1 and json.loads(err) == {"error": "invalid_scope"}
    # token subjects: suspend (before any request), show, reinstate
    issuer = ["--issuer", "https://issuer.example"]
    assert run("subject", "suspend", "svc-cli", *issuer)[1]["status"] == "suspended"
    assert run("subject", "show", "svc-cli", *issuer)[1]["status"] == "suspended"
    assert run("subject", "reinstate", "svc-cli", *issuer)[1]["status"] == "active"
    code, _, err = run("subject", "show", "svc-cli")
    assert code == 1 and json.loads(err) == {"error": "issuer_required"}


def test_keys_command_as_a_process(core_endpoint: str, core_table: str, tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_ENDPOINT_URL_DYNAMODB": core_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        **DUMMY_CREDENTIALS,
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


ROUTES = sorted(p.stem for p in EVENTS.glob("admin-*.json") if "-list-" not in p.stem)


def test_the_route_list_covers_the_template() -> None:
    assert len(ROUTES) == 11


@pytest.mark.parametrize("event", ROUTES)
def test_every_admin_route_refuses_an_admin_scope_key(api: AdminApi, event: str) -> None:
    # given an admin-scope key and a target key and subject
    admin_key = _admin_scope_key(api)
    target = api.admin.create(owner="target")
    api.admin.suspend_subject("target-subject", issuer=ISSUER)
    # when the key calls the admin route (as through a route without AWS_IAM)
    status, _, body = api.invoke(
        event,
        unsigned={"X-API-Key": admin_key, "Content-Type": "application/json"},
        KEY_ID=target["key_id"],
        SUBJECT="target-subject",
    )
    # then it is refused and nothing changed
    assert status == 403 and set(body) == {"error"}
    assert api.admin.show(target["key_id"])["status"] == "active"
    assert api.admin.show_subject("target-subject", issuer=ISSUER)["status"] == "suspended"
    assert len(api.admin.list()) == 2


def test_keys_command_creates_a_sharded_key_and_sums_its_shards(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    core_endpoint: str,
    core_table: str,
) -> None:
    run = lambda *argv: _keys(monkeypatch, capsys, core_endpoint, core_table, *argv)  # noqa: E731
    code, created, _ = run(
        "create", "--owner", "big-user", "--rate-limit", "6000/minute", "--shards", "8"
    )
    assert code == 0 and created["key"]["shards"] == 8
    key_id = created["key_id"]
    store = PrincipalStore(client=make_client(core_endpoint), table_name=core_table)
    for index in range(8):  # as if requests had counted on every shard
        store._client.update_item(
            TableName=core_table,
            Key={"pk": {"S": f"key#{key_id}#s{index}"}},
            UpdateExpression="ADD rows_used :n, requests :one",
            ExpressionAttributeValues={":n": {"N": str(index + 1)}, ":one": {"N": "1"}},
        )
    usage = run("usage", key_id)[1]["usage"]
    assert usage["rows_used"] == 36 and usage["requests"] == 8
    assert run("suspend", key_id)[1]["status"] == "suspended"  # one transaction with its shards
    shard = store.get(f"key#{key_id}#s7")
    assert shard is not None and shard["config_version"] == 2
    code, _, err = run("create", "--owner", "big-user", "--shards", "65")
    assert code == 1 and json.loads(err) == {"error": "invalid_shards"}
