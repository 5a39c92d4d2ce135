"""The CPython 3.13 of `make python313`: pinned Debian packages, checked, unpacked, runnable.

The real install (made by `make test` through `make build`) is checked as it is; the download
rules are checked against a local HTTP mirror: a file is used only when its SHA-256 is the
lock's, a file gone from the archive says how to re-pin, and a broken fetch leaves nothing.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlmoat import python313

LOCK = python313.REPO / "requirements" / "python3.13.lock"


@pytest.fixture()
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _publish(root: Path, name: str, served: bytes, *, pinned: bytes | None = None) -> python313.Pin:
    """Put ``served`` on the mirror as ``pool/<name>_1_amd64.deb``; pin ``pinned`` (or it)."""
    path = f"pool/{name}_1_amd64.deb"
    (root / "pool").mkdir(exist_ok=True)
    (root / path).write_bytes(served)
    return python313.Pin(name, "1", hashlib.sha256(pinned or served).hexdigest(), path)


def test_the_lock_pins_every_package_once_with_a_checksum() -> None:
    pins = python313.read_lock(LOCK)
    assert sorted(p.name for p in pins) == sorted(python313.PACKAGES)
    for pin in pins:
        assert pin.path.startswith("pool/main/") and pin.path.endswith(".deb")
        assert len(pin.sha256) == 64 and int(pin.sha256, 16) >= 0


def test_the_installed_interpreter_is_the_locked_one_and_runs_the_stdlib_lambda_needs() -> None:
    # given the install `make build` made, when it runs the smoke imports
    pins = python313.read_lock(LOCK)
    assert python313.installed(pins, python313.REPO / python313.INSTALL_DIR)
    done = subprocess.run(  # noqa: S603
        [str(python313.interpreter()), "-I", "-c",
         f"{python313.SMOKE}; import sys; print(sys.version_info[:2], ssl.OPENSSL_VERSION)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    # then it is CPython 3.13 with trixie's OpenSSL 3.5, not the system's
    assert done.stdout.startswith("(3, 13) OpenSSL 3.5")


def test_a_file_with_the_wrong_checksum_is_refused_and_not_kept(
    mirror: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = mirror
    pin = _publish(root, "pkg", b"tampered", pinned=b"original")
    cache = tmp_path / "cache"
    with pytest.raises(python313.FetchError, match="SHA-256"):
        python313.download(pin, cache, mirror=url)
    assert list(cache.iterdir()) == []


def test_a_file_gone_from_the_archive_says_how_to_pin_the_current_versions(
    mirror: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = mirror
    pin = python313.Pin("pkg", "1", "0" * 64, "pool/gone_1_amd64.deb")
    with pytest.raises(python313.FetchError, match="make python313-lock"):
        python313.download(pin, tmp_path / "cache", mirror=url)


def test_a_cached_file_is_used_only_with_the_pinned_bytes(
    mirror: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = mirror
    pin = _publish(root, "pkg", b"original")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "pkg_1_amd64.deb").write_bytes(b"corrupted in the cache")
    assert python313.download(pin, cache, mirror=url).read_bytes() == b"original"


def test_a_broken_install_leaves_nothing_behind(tmp_path: Path, mirror: tuple[str, Path]) -> None:
    # given a lock whose one package is not a Debian archive
    url, root = mirror
    pin = _publish(root, "bad", b"not an ar archive")
    into = tmp_path / "python3.13"
    # when it is installed, then the install fails and neither it nor a staging dir is left
    with pytest.raises(subprocess.CalledProcessError):
        python313.install([pin], into, tmp_path / "cache", mirror=url)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "mirror"]


def test_lock_lines_that_are_not_pins_are_refused(tmp_path: Path) -> None:
    lock = tmp_path / "python3.13.lock"
    lock.write_text("# comment\npkg 1 short pool/pkg.deb\n")
    with pytest.raises(ValueError, match=":2:"):
        python313.read_lock(lock)


def test_a_mirror_that_is_not_http_is_refused(tmp_path: Path) -> None:
    pin = python313.Pin("pkg", "1", "0" * 64, "pool/pkg_1_amd64.deb")
    with pytest.raises(python313.FetchError, match="http"):
        python313.download(pin, tmp_path / "cache", mirror=f"file://{tmp_path}")
