"""Admission against a real DynamoDB over HTTP (moto server): authentication, counting, limits."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from coresupport import make_client, record_calls, settings_for

from security.admin import KeyAdmin
from security.auth import Authenticator, Credentials
from security.errors import (
    AuthenticationError,
    ForbiddenError,
    RateLimitedError,
)
from security.keys import format_key, generate_key, new_secret, parse_key
from security.limits import Gatekeeper
from security.settings import RateSpec
from security.store import PrincipalStore

NOW = 1_900_001_030.0  # fixed clock: 230 s into an hour, 50 s into a minute


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def keys_module_key_id() -> str:
    return generate_key()[0].key_id


def _setup(endpoint: str, table: str, clock: Clock, **settings_kw: Any) -> tuple[Any, ...]:
    settings = settings_for(table, **settings_kw)
    client = make_client(endpoint)
    store = PrincipalStore(client=client, table_name=table)
    admin = KeyAdmin(store=store, settings=settings, clock=clock)
    gatekeeper = Gatekeeper(store=store, settings=settings, clock=clock)
    authenticator = Authenticator(settings=settings, token_verifier=None)
    return client, store, admin, gatekeeper, authenticator


def _creds(authenticator: Authenticator, api_key: str) -> Credentials:
    return authenticator.read_credentials({"X-API-Key": api_key})


def _admit(
    gatekeeper: Gatekeeper,
    creds: Credentials,
    *,
    rows: int = 1,
    model: str = "iris",
    ip: str = "10.0.0.1",
    request_id: str | None = None,
) -> Any:
    return gatekeeper.admit(
        creds, model=model, rows=rows, request_id=request_id or str(uuid.uuid4()), source_ip=ip
    )


def test_steady_path_is_one_dynamodb_request_per_admission(
    core_endpoint: str, core_table: str
) -> None:
    # given a key and a cold gatekeeper whose client's calls are counted
    clock = Clock()
    client, store, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="alice", rate_limit="1000/minute", budget=5000)
    creds = _creds(authenticator, created["api_key"])
    made = record_calls(client)
    # when the first request arrives on the cold instance, then 50 more
    _admit(gatekeeper, creds, rows=2)
    cold_calls = list(made)
    made.clear()
    for _ in range(50):
        _admit(gatekeeper, creds, rows=2)
    # then the cold request read once and wrote once; every steady request is one UpdateItem
    assert cold_calls == ["GetItem", "UpdateItem"]
    assert made == ["UpdateItem"] * 50
    usage = admin.usage(created["key_id"])["usage"]
    assert usage["rows_used"] == 102 and usage["requests"] == 51


def test_admission_reports_remaining_and_headers(core_endpoint: str, core_table: str) -> None:
    clock = Clock()
    _, _, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="bob", rate_limit="10/minute", budget=100)
    admission = _admit(gatekeeper, _creds(authenticator, created["api_key"]), rows=3)
    assert (admission.rate_remaining, admission.budget_remaining) == (7, 97)
    assert admission.reset_seconds == 10  # NOW is 50 s into its minute
    assert admission.headers() == {
        "RateLimit-Policy": '"rows";q=10;w=60, "budget";q=100',
        "RateLimit": '"rows";r=7;t=10, "budget";r=97',
    }


def test_rate_limit_refuses_without_charging_and_resets_next_window(
    core_endpoint: str, core_table: str
) -> None:
    clock = Clock()
    _, _, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="carol", rate_limit="5/minute", budget=100)
    creds = _creds(authenticator, created["api_key"])
    _admit(gatekeeper, creds, rows=4)
    # when a request would overflow the window
    with pytest.raises(RateLimitedError) as caught:
        _admit(gatekeeper, creds, rows=2)
    # then it is refused as rate_limited, with Retry-After the window's end, and not charged
    assert caught.value.reason == "rate_limited"
    assert caught.value.retry_after == 10
    assert caught.value.headers["RateLimit"].startswith('"rows";r=1;t=10')
    assert admin.usage(created["key_id"])["usage"]["rows_used"] == 4
    # and the exact remainder still fits
    _admit(gatekeeper, creds, rows=1)
    # when the next window starts, the window is fresh and the old window attribute is removed
    clock.now += 60
    _admit(gatekeeper, creds, rows=5)
    usage = admin.usage(created["key_id"])["usage"]
    assert usage["rows_used"] == 10
    assert usage["live_windows"] == [f"rw_{int(clock.now) - int(clock.now) % 60}"]


def test_budget_exhaustion_is_a_distinct_refusal(core_endpoint: str, core_table: str) -> None:
    clock = Clock()
    _, _, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="dave", rate_limit="100/minute", budget=6)
    creds = _creds(authenticator, created["api_key"])
    _admit(gatekeeper, creds, rows=5)
    with pytest.raises(RateLimitedError) as caught:
        _admit(gatekeeper, creds, rows=2)
    assert caught.value.reason == "budget_exhausted"
    clock.now += 3600  # budgets never reset with time
    _admit(gatekeeper, creds, rows=1)
    with pytest.raises(RateLimitedError) as again:
        _admit(gatekeeper, creds, rows=1)
    assert again.value.reason == "budget_exhausted"
    assert admin.usage(created["key_id"])["usage"]["rows_used"] == 6


def test_revocation_and_suspension_take_effect_on_the_next_request(
    core_endpoint: str, core_table: str
) -> None:
    clock = Clock()
    _, store, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="erin")
    creds = _creds(authenticator, created["api_key"])
    _admit(gatekeeper, creds)  # the instance now caches the key's configuration
    admin.suspend(created["key_id"])
    with pytest.raises(AuthenticationError) as suspended:
        _admit(gatekeeper, creds)
    assert suspended.value.reason == "suspended"
    admin.reinstate(created["key_id"])
    _admit(gatekeeper, creds)
    admin.revoke(created["key_id"])
    with pytest.raises(AuthenticationError) as revoked:
        _admit(gatekeeper, creds)
    assert revoked.value.reason == "revoked"
    with pytest.raises(AuthenticationError):
        gatekeeper.authenticate(creds, model="iris", source_ip="10.0.0.1")
    # refusals were not charged
    assert admin.usage(created["key_id"])["usage"]["rows_used"] == 2


def test_monitor_flag_and_suspend_reach_the_next_request(
    core_endpoint: str, core_table: str
) -> None:
    clock = Clock()
    _, store, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="frank")
    creds = _creds(authenticator, created["api_key"])
    _admit(gatekeeper, creds)
    store.flag_principal(creds.principal_id, reason="extraction:prada", suspend=False, now=int(NOW))
    _admit(gatekeeper, creds)  # a flag alone does not block
    store.flag_principal(creds.principal_id, reason="extraction:prada", suspend=True, now=int(NOW))
    with pytest.raises(AuthenticationError) as caught:
        _admit(gatekeeper, creds)
    assert caught.value.reason == "suspended"
    view = admin.show(created["key_id"])
    assert view["status"] == "suspended" and view["flags"] == ["extraction:prada"]


def test_rotation_grace_keeps_old_secret_until_it_ends_and_carries_counters(
    core_endpoint: str, core_table: str
) -> None:
    clock = Clock()
    _, _, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="grace", rate_limit="100/hour", budget=10)
    old = _creds(authenticator, created["api_key"])
    _admit(gatekeeper, old, rows=4)
    # when the key is rotated with a 10-minute grace
    rotated = admin.rotate(created["key_id"], grace="10m")
    new = _creds(authenticator, rotated["api_key"])
    assert rotated["api_key"] != created["api_key"] and new.key_id == old.key_id
    # then both secrets work during the grace, sharing the same counters
    _admit(gatekeeper, old, rows=2)
    _admit(gatekeeper, new, rows=2)
    assert admin.usage(created["key_id"])["usage"]["rows_used"] == 8
    # and after the grace the old secret is refused while the new one goes on
    clock.now += 601
    with pytest.raises(AuthenticationError) as caught:
        _admit(gatekeeper, old)
    assert caught.value.reason == "bad_secret"
    _admit(gatekeeper, new, rows=2)
    # and rotation is no budget reset
    with pytest.raises(RateLimitedError) as exhausted:
        _admit(gatekeeper, new, rows=1)
    assert exhausted.value.reason == "budget_exhausted"


def test_stale_cached_config_is_refreshed_by_the_failed_write(
    core_endpoint: str, core_table: str
) -> None:
    # given two instances sharing a key, one of which caches its configuration
    clock = Clock()
    client, store, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="heidi", rate_limit="50/minute", budget=100)
    creds = _creds(authenticator, created["api_key"])
    _admit(gatekeeper, creds)
    made = record_calls(client)
    # when an admin change bumps the config version (a suspend and reinstate)
    admin.suspend(created["key_id"])
    admin.reinstate(created["key_id"])
    made.clear()
    admission = _admit(gatekeeper, creds)
    # then the write failed on the version, ALL_OLD refreshed the cache, and one retry counted it
    assert made == ["UpdateItem", "UpdateItem"]
    assert admission.principal.config_version == 3
    made.clear()
    _admit(gatekeeper, creds)
    assert made == ["UpdateItem"]
    assert admin.usage(created["key_id"])["usage"]["rows_used"] == 3


def test_scope_is_enforced_and_the_refusal_costs_a_refusal_not_rows(
    core_endpoint: str, core_table: str
) -> None:
    clock = Clock()
    _, _, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    iris_only = admin.create(owner="ivan", scopes=["predict:iris"])
    iris_creds = _creds(authenticator, iris_only["api_key"])
    _admit(gatekeeper, iris_creds, model="iris")
    with pytest.raises(ForbiddenError) as caught:
        _admit(gatekeeper, iris_creds, model="breast-cancer")
    assert "RateLimit" in caught.value.headers
    usage = admin.usage(iris_only["key_id"])["usage"]
    assert usage["rows_used"] == 1 and usage["refusals"] == 1


def test_refusals_are_capped_per_principal(core_endpoint: str, core_table: str) -> None:
    # given a refusal allowance of 5 per hour and a 61-row batch on a 60/minute key (the outside
    # test's envelope probe: it can never fit, so each probe used to be free)
    clock = Clock()
    _, _, admin, gatekeeper, authenticator = _setup(
        core_endpoint, core_table, clock, refusal_limit=RateSpec(5, 3600)
    )
    created = admin.create(owner="prober", rate_limit="60/minute")
    creds = _creds(authenticator, created["api_key"])
    reasons = []
    for _ in range(8):
        with pytest.raises(RateLimitedError) as caught:
            _admit(gatekeeper, creds, rows=61)
        reasons.append(caught.value.reason)
    # then the first five are answered as before, and counted; then the allowance is spent
    assert reasons == ["rate_limited"] * 5 + ["refusal_limit"] * 3
    assert admin.usage(created["key_id"])["usage"]["refusals"] == 5
    # and the key still predicts (rows are a separate allowance)
    assert _admit(gatekeeper, creds).rows == 1


def test_authenticate_is_one_read_and_charges_nothing(core_endpoint: str, core_table: str) -> None:
    clock = Clock()
    client, _, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="ken", output_policy="label")
    made = record_calls(client)
    principal = gatekeeper.authenticate(
        _creds(authenticator, created["api_key"]), model="iris", source_ip="10.0.0.1"
    )
    assert made == ["GetItem"]
    assert principal.output_policy == "label" and principal.owner == "ken"
    assert admin.usage(created["key_id"])["usage"]["rows_used"] == 0


def test_expired_key_is_refused(core_endpoint: str, core_table: str) -> None:
    clock = Clock()
    _, _, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="liz", expires_in="1h")
    creds = _creds(authenticator, created["api_key"])
    _admit(gatekeeper, creds)
    clock.now += 3600
    with pytest.raises(AuthenticationError) as caught:
        _admit(gatekeeper, creds)
    assert caught.value.reason == "expired"


def test_unknown_key_and_bad_secret_look_alike_and_guessing_is_throttled(
    core_endpoint: str, core_table: str
) -> None:
    # given a real key and a failure limit of 3 per minute per address
    clock = Clock()
    client, _, admin, gatekeeper, authenticator = _setup(
        core_endpoint, core_table, clock, auth_failure_limit=RateSpec(3, 60)
    )
    created = admin.create(owner="mallory-target")
    real = parse_key(created["api_key"])
    wrong_secret = _creds(authenticator, format_key(real.key_id, new_secret()))
    unknown = _creds(authenticator, format_key("A" * 12, new_secret()))
    made = record_calls(client)
    # when an unknown key and a wrong secret are presented
    errors = []
    calls = []
    for creds in (unknown, wrong_secret):
        made.clear()
        with pytest.raises(AuthenticationError) as caught:
            _admit(gatekeeper, creds, ip="203.0.113.7")
        errors.append(type(caught.value))
        calls.append(list(made))
    # then both take the same path (the first sight's eventually consistent read, the strong
    # read that confirms a refusal; the address, key id and total counted)
    assert errors == [AuthenticationError, AuthenticationError]
    assert calls[0] == calls[1] == ["GetItem", "GetItem", "UpdateItem", "UpdateItem", "UpdateItem"]
    # when the guesses go on past the limit
    with pytest.raises(AuthenticationError):
        _admit(gatekeeper, unknown, ip="203.0.113.7")
    with pytest.raises(RateLimitedError) as throttled:
        _admit(gatekeeper, wrong_secret, ip="203.0.113.7")
    assert throttled.value.reason == "auth_throttled" and throttled.value.retry_after == 10
    # then a throttled guess costs its reads (half a unit eventually consistent, one strong:
    # a miss is confirmed before it is judged a guess) and no further count
    made.clear()
    with pytest.raises(RateLimitedError):
        _admit(gatekeeper, unknown, ip="203.0.113.7")
    assert made == ["GetItem", "GetItem"]
    # and the right key from that very address is still served (a NAT's other customers)
    _admit(gatekeeper, _creds(authenticator, created["api_key"]), ip="203.0.113.7")
    # while a cold instance learns the throttle from the shared counter
    other = Gatekeeper(
        store=PrincipalStore(client=make_client(core_endpoint), table_name=core_table),
        settings=settings_for(core_table, auth_failure_limit=RateSpec(3, 60)),
        clock=clock,
    )
    with pytest.raises(RateLimitedError):
        _admit(other, unknown, ip="203.0.113.7")
    # and when the window ends the address's guesses are 401 again
    clock.now += 60
    with pytest.raises(AuthenticationError) as again:
        _admit(gatekeeper, unknown, ip="203.0.113.7")
    assert not isinstance(again.value, RateLimitedError)


def test_a_valid_key_is_served_from_an_address_that_just_failed_30_times(
    core_endpoint: str, core_table: str
) -> None:
    # given an address that failed 30 times against the default limit of 20 per minute
    clock = Clock()
    _, _, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="nat-customer")
    outcomes = []
    for _ in range(30):
        guess = _creds(authenticator, format_key(keys_module_key_id(), new_secret()))
        try:
            _admit(gatekeeper, guess, ip="198.51.100.30")
        except RateLimitedError:
            outcomes.append(429)
        except AuthenticationError:
            outcomes.append(401)
    assert outcomes[:20] == [401] * 20 and set(outcomes[20:]) == {429}
    # then a valid key from the same address still gets its rows
    admission = _admit(gatekeeper, _creds(authenticator, created["api_key"]), ip="198.51.100.30")
    assert admission.rows == 1


def test_a_guess_spread_over_many_addresses_is_throttled_by_key_id_and_in_total(
    core_endpoint: str, core_table: str
) -> None:
    # given a key and a guesser with 80 addresses, 8 guesses each (640, as the outside test)
    clock = Clock()
    _, _, admin, gatekeeper, authenticator = _setup(
        core_endpoint,
        core_table,
        clock,
        auth_failure_key_limit=RateSpec(20, 60),
        auth_failure_global_limit=RateSpec(200, 60),
    )
    target = parse_key(admin.create(owner="spread-target")["api_key"])
    throttled_at = None
    for n in range(640):
        guess = _creds(authenticator, format_key(target.key_id, new_secret()))
        try:
            _admit(gatekeeper, guess, ip=f"192.0.2.{n % 80}")
        except RateLimitedError:
            throttled_at = n
            break
        except AuthenticationError:
            continue
    # then the key id's counter throttles it after 20, though no address failed more than once
    assert throttled_at == 20
    # and guesses at other key ids from fresh addresses meet the total's limit
    totals = []
    for n in range(400):
        guess = _creds(authenticator, format_key(keys_module_key_id(), new_secret()))
        try:
            _admit(gatekeeper, guess, ip=f"10.9.{n // 250}.{n % 250}")
            totals.append(200)
        except RateLimitedError:
            totals.append(429)
            break
        except AuthenticationError:
            totals.append(401)
    assert totals[-1] == 429 and len(totals) <= 200


def test_a_wrong_guess_does_not_make_the_owners_next_request_dearer(
    core_endpoint: str, core_table: str
) -> None:
    clock = Clock()
    client, _, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="nina")
    owner = _creds(authenticator, created["api_key"])
    _admit(gatekeeper, owner)
    guess = _creds(authenticator, format_key(owner.key_id or "", new_secret()))
    with pytest.raises(AuthenticationError):
        _admit(gatekeeper, guess, ip="192.0.2.50")
    made = record_calls(client)
    _admit(gatekeeper, owner)
    assert made == ["UpdateItem"]


def test_only_older_windows_and_buckets_are_removed(core_endpoint: str, core_table: str) -> None:
    # given an item on which an instance with a clock a little ahead already opened the next
    # window and bucket, and an old window from long ago is still there
    clock = Clock()
    client, _, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="olga", rate_limit="100/minute")
    start = int(NOW) - int(NOW) % 60
    ahead_w, ahead_rq, old_w = f"rw_{start + 60}", f"rq_{int(NOW) // 30 + 1}", f"rw_{start - 600}"
    client.update_item(
        TableName=core_table,
        Key={"pk": {"S": f"key#{created['key_id']}"}},
        UpdateExpression="SET #a = :n, #o = :n, #r = :ids",
        ExpressionAttributeNames={"#a": ahead_w, "#o": old_w, "#r": ahead_rq},
        ExpressionAttributeValues={":n": {"N": "3"}, ":ids": {"SS": ["x"]}},
    )
    creds = _creds(authenticator, created["api_key"])
    # when two requests are admitted (the first reads the item, the second cleans what it saw)
    _admit(gatekeeper, creds)
    _admit(gatekeeper, creds)
    # then the old window is gone and the ones ahead are kept
    live = admin.usage(created["key_id"])["usage"]["live_windows"]
    assert old_w not in live and ahead_w in live and f"rw_{start}" in live
    item = client.get_item(TableName=core_table, Key={"pk": {"S": f"key#{created['key_id']}"}})
    assert ahead_rq in item["Item"]


def test_a_batch_larger_than_the_window_is_refused_as_rate_limited_uncharged(
    core_endpoint: str, core_table: str
) -> None:
    clock = Clock()
    _, _, admin, gatekeeper, authenticator = _setup(core_endpoint, core_table, clock)
    created = admin.create(owner="pat", rate_limit="5/minute", budget=100)
    creds = _creds(authenticator, created["api_key"])
    _admit(gatekeeper, creds)  # warm: the configuration is cached
    with pytest.raises(RateLimitedError) as caught:
        _admit(gatekeeper, creds, rows=6)
    assert caught.value.reason == "rate_limited"
    assert admin.usage(created["key_id"])["usage"]["rows_used"] == 1
