"""CPython 3.13, the Lambda runtime's Python, from Debian trixie's packages, beside the system's.

``fetch`` downloads the packages pinned in ``requirements/python3.13.lock`` (version, SHA-256 and
archive path of each), checks every checksum, unpacks them with ``dpkg-deb -x`` into a folder and
writes ``bin/python3.13`` there: a wrapper that runs the unpacked interpreter through the unpacked
loader with the unpacked libraries (``ld-linux-x86-64.so.2 --inhibit-cache --library-path``), so
trixie's glibc serves it and the system's Python, libraries and apt state are untouched. The
downloads are cached (``--cache``); a complete install is left as it is.

``lock`` resolves the current versions through a private apt state (its own sources list for
trixie, signed by the system's Debian archive keyring, its own lists and cache) and rewrites the
lock. Debian drops superseded versions from the archive, so when ``fetch`` finds a pinned file
gone it says to run ``make python313-lock``.

    python -m mlmoat.python313 fetch --lock requirements/python3.13.lock --into .cache/python3.13
    python -m mlmoat.python313 lock --lock requirements/python3.13.lock --state .cache/apt
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Where `make python313` and `make lambda-runtime` put the interpreter and the runtime's boto3.
INSTALL_DIR = ".cache/python3.13"
RUNTIME_SITE_DIR = ".cache/lambda-runtime/python"
MIRROR = "http://deb.debian.org/debian"
SUITES = ("trixie", "trixie-updates")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
ARCH = "amd64"
# The interpreter, its standard library and what the standard library's extension modules (ssl,
# ctypes, sqlite3, lzma, bz2, decimal, uuid, zlib, pyexpat) and the deps layer's wheels (libstdc++
# for onnxruntime) link against; trixie's glibc, which they need, with its loader.
PACKAGES = (
    "python3.13-minimal",
    "libpython3.13-minimal",
    "libpython3.13-stdlib",
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libssl3t64",
    "libbz2-1.0",
    "liblzma5",
    "libsqlite3-0",
    "libuuid1",
    "libzstd1",
    "libmpdec4",
    "media-types",
    "tzdata",
)
# What a working install imports: a module whose library is missing fails here, not in a test.
SMOKE = "import asyncio, bz2, ctypes, decimal, hashlib, lzma, sqlite3, ssl, uuid, zlib, pyexpat"
WRAPPER = """#!/bin/sh
# CPython 3.13 from Debian trixie (mlmoat.python313), run by its own loader and libraries.
root=$(cd "$(dirname "$0")/.." && pwd)
exec "$root/usr/lib64/ld-linux-x86-64.so.2" --inhibit-cache \\
    --library-path "$root/usr/lib/x86_64-linux-gnu" "$root/usr/bin/python3.13" "$@"
"""
HEADER = """\
# CPython 3.13 (the Lambda python3.13 runtime's Python) from Debian trixie, {arch}.
# One package per line: name, version, SHA-256 of the .deb, its path under {mirror}.
# `make python313` fetches and checks these; `make python313-lock` pins the current versions.
"""


def interpreter(root: Path = REPO) -> Path:
    """The CPython 3.13 wrapper that ``make python313`` installs under ``root``."""
    return root / INSTALL_DIR / "bin" / "python3.13"


def runtime_site(root: Path = REPO) -> Path:
    """What Lambda's python3.13 runtime adds to the standard library (``make lambda-runtime``)."""
    return root / RUNTIME_SITE_DIR


class FetchError(RuntimeError):
    """A package could not be downloaded, failed its checksum, or the install does not run."""


@dataclass(frozen=True)
class Pin:
    """One pinned Debian package."""

    name: str
    version: str
    sha256: str
    path: str

    @property
    def filename(self) -> str:
        """The .deb's file name in the archive."""
        return self.path.rsplit("/", 1)[-1]

    def line(self) -> str:
        """The pin as a lock line."""
        return f"{self.name} {self.version} {self.sha256} {self.path}"


def read_lock(path: Path) -> list[Pin]:
    """The pins of a lock file.

    Raises:
        ValueError: a line is not ``name version sha256 path``.
    """
    pins = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 4 or len(fields[2]) != 64:
            raise ValueError(f"{path}:{number}: expected 'name version sha256 path'")
        pins.append(Pin(*fields))
    return pins


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(pin: Pin, cache: Path, *, mirror: str = MIRROR) -> Path:
    """The pinned .deb in ``cache``, downloaded when missing; its checksum always checked.

    Raises:
        FetchError: the file is gone from the archive, unreachable, or not the pinned bytes.
    """
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / pin.filename
    if not (target.is_file() and _sha256(target) == pin.sha256):
        url = f"{mirror.rstrip('/')}/{pin.path}"
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise FetchError(f"{mirror}: the mirror must be an http(s) URL")
        partial = target.with_name(target.name + ".partial")
        try:
            # http(s) only (checked above); the bytes are checked against the lock's SHA-256.
            with (
                urllib.request.urlopen(url, timeout=60) as response,  # noqa: S310  # nosec B310
                partial.open("wb") as out,
            ):
                shutil.copyfileobj(response, out)
        except urllib.error.HTTPError as exc:
            partial.unlink(missing_ok=True)
            if exc.code == 404:
                raise FetchError(
                    f"{pin.name} {pin.version} is no longer in the archive ({url}): "
                    "`make python313-lock` pins the current versions"
                ) from None
            raise FetchError(f"{url}: HTTP {exc.code}") from None
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise FetchError(f"{url}: {exc}") from None
        partial.replace(target)
    actual = _sha256(target)
    if actual != pin.sha256:
        target.unlink()
        raise FetchError(f"{pin.filename}: SHA-256 {actual}, the lock pins {pin.sha256}")
    return target


def install(pins: list[Pin], into: Path, cache: Path, *, mirror: str = MIRROR) -> Path:
    """Unpack the pinned packages into ``into`` (replacing it) and return its ``bin/python3.13``.

    The install is built beside ``into`` and moved into place only once the interpreter runs the
    smoke imports, so an interrupted or broken fetch never leaves a half install behind.

    Raises:
        FetchError: a download or checksum failed, or the interpreter does not run.
    """
    debs = [download(pin, cache, mirror=mirror) for pin in pins]
    into.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{into.name}-", dir=into.parent))
    try:
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True)  # noqa: S603, S607 - dpkg-deb from PATH on a Debian host
        wrapper = staging / "bin" / "python3.13"
        wrapper.parent.mkdir(parents=True, exist_ok=True)
        wrapper.write_text(WRAPPER, encoding="utf-8")
        wrapper.chmod(0o755)
        (staging / "python3.13.lock").write_text(
            "".join(pin.line() + "\n" for pin in pins), encoding="utf-8"
        )
        done = subprocess.run(  # noqa: S603 - the interpreter just unpacked
            [str(wrapper), "-I", "-S", "-c", f"{SMOKE}; import sys; print(sys.version)"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise FetchError(f"the unpacked python3.13 does not run: {done.stderr.strip()}")
        if into.exists():
            shutil.rmtree(into)
        staging.replace(into)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return into / "bin" / "python3.13"


def installed(pins: list[Pin], into: Path) -> bool:
    """Whether ``into`` holds a complete install of exactly these pins."""
    record = into / "python3.13.lock"
    wrapper = into / "bin" / "python3.13"
    return (
        wrapper.is_file()
        and record.is_file()
        and record.read_text(encoding="utf-8") == "".join(pin.line() + "\n" for pin in pins)
    )


# ---------------------------------------------------------------------------- lock


def _apt_options(state: Path) -> list[str]:
    etc = state / "etc"
    return [
        f"-oDir::Etc={etc}",
        f"-oDir::Etc::SourceList={etc / 'sources.list'}",
        f"-oDir::Etc::SourceParts={etc / 'sources.list.d'}",
        f"-oDir::Etc::Parts={etc / 'apt.conf.d'}",
        f"-oDir::Etc::Preferences={etc / 'preferences'}",
        f"-oDir::Etc::PreferencesParts={etc / 'preferences.d'}",
        f"-oDir::State={state / 'state'}",
        f"-oDir::State::status={state / 'state' / 'status'}",
        f"-oDir::Cache={state / 'cache'}",
        f"-oAPT::Architecture={ARCH}",
        "-oAPT::Architectures=",
        "-oDebug::NoLocking=1",
    ]


def private_apt_state(state: Path, *, mirror: str = MIRROR) -> list[str]:
    """A private apt configuration for trixie under ``state``; returns the apt options naming it."""
    for sub in ("etc/sources.list.d", "etc/apt.conf.d", "etc/preferences.d"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("state/lists/partial", "cache/archives/partial"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "etc" / "sources.list.d" / "trixie.sources").write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: {' '.join(SUITES)}\nComponents: main\n"
        f"Architectures: {ARCH}\nSigned-By: {KEYRING}\n",
        encoding="utf-8",
    )
    (state / "etc" / "sources.list").touch()
    (state / "state" / "status").touch()
    return _apt_options(state)


def resolve(state: Path, names: tuple[str, ...] = PACKAGES, *, mirror: str = MIRROR) -> list[Pin]:
    """The current trixie version of each package (apt checks the archive's signature)."""
    options = private_apt_state(state.resolve(), mirror=mirror)
    update = ["apt-get", *options, "-q", "update"]
    subprocess.run(update, check=True, stdout=sys.stderr)  # noqa: S603, S607 - apt-get from PATH
    pins = []
    for name in names:
        show = ["apt-cache", *options, "show", "--no-all-versions", name]
        shown = subprocess.run(  # noqa: S603, S607 - apt-cache from PATH on a Debian host
            show,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        fields = {}
        for line in shown.splitlines():
            key, sep, value = line.partition(": ")
            if sep and not line.startswith(" "):
                fields[key] = value.strip()
        pins.append(Pin(name, fields["Version"], fields["SHA256"], fields["Filename"]))
    return pins


def write_lock(path: Path, pins: list[Pin], *, mirror: str = MIRROR) -> None:
    """Write the lock file."""
    body = "".join(pin.line() + "\n" for pin in sorted(pins, key=lambda p: p.name))
    path.write_text(HEADER.format(arch=ARCH, mirror=mirror) + body, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """``fetch`` or ``lock``."""
    parser = argparse.ArgumentParser(
        prog="python -m mlmoat.python313", description=(__doc__ or "").split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download, check and unpack the pinned packages")
    fetch.add_argument("--lock", type=Path, required=True)
    fetch.add_argument("--into", type=Path, required=True)
    fetch.add_argument("--cache", type=Path, help="download cache (default: INTO.debs)")
    fetch.add_argument("--mirror", default=os.environ.get("DEBIAN_MIRROR", MIRROR))
    lock = sub.add_parser("lock", help="pin the current trixie versions")
    lock.add_argument("--lock", type=Path, required=True)
    lock.add_argument("--state", type=Path, required=True, help="private apt state folder")
    lock.add_argument("--mirror", default=os.environ.get("DEBIAN_MIRROR", MIRROR))
    args = parser.parse_args(argv)
    try:
        if args.command == "lock":
            pins = resolve(args.state, mirror=args.mirror)
            write_lock(args.lock, pins, mirror=args.mirror)
            print(f"{args.lock}: {len(pins)} packages pinned", file=sys.stderr)
            return 0
        pins = read_lock(args.lock)
        into = args.into.resolve()
        if installed(pins, into):
            print(into / "bin" / "python3.13")
            return 0
        cache = args.cache or into.with_name(into.name + ".debs")
        print(install(pins, into, cache, mirror=args.mirror))
        return 0
    except (FetchError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"python313: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
