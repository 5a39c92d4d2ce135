"""The item layout stays in the store: the rest of the layer reads typed records."""

from __future__ import annotations

from pathlib import Path

from item_layout import STORE, per_module, raw_accesses

ROOT = Path(__file__).resolve().parents[2]
#: The modules that admit requests and administer keys: they read records only.
RECORD_READERS = (
    "security/auth.py",
    "security/limits.py",
    "security/admin.py",
    "security/refusals.py",
    "security/shards.py",
    "security/admission.py",
    "security/keycache.py",
    "security/verification.py",
    "security/throttle.py",
)


def test_auth_limits_and_admin_never_read_raw_item_attributes() -> None:
    counts = per_module(ROOT)
    assert {name: counts[name] for name in RECORD_READERS if name in counts} == {}
    assert all((ROOT / "src" / name).exists() for name in RECORD_READERS)


def test_the_store_modules_exist_and_the_count_sees_raw_access() -> None:
    assert all((ROOT / "src" / name).exists() for name in STORE)
    # The counter itself: each kind of raw access counts once, a record's property none.
    source = (
        "from security.store import rate_attr\n"
        "a = item['status']\nb = item.get('rows_used', 0)\nc = 'shards' in item\n"
        "d = {'pk': 1, 'other': 2}\ne = rate_attr(5)\nf = record.rows_used\n"
        "g = {'status': 'a view, no pk'}\n"
    )
    assert raw_accesses(source) == 5
