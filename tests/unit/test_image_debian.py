"""Debian index parsing, the digest chain and dependency resolution, offline."""

import hashlib
import http.server
import json
import lzma
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from image_signing import make_key

import minimaldask
from minimaldask.image import debian
from minimaldask.image.debian import (
    Archive,
    DebianError,
    Package,
    apt_archive_url,
    parse_depends,
    parse_stanzas,
)

PACKAGES = """\
Package: python3.11-minimal
Version: 3.11.2-6
Architecture: arm64
Pre-Depends: libc6 (>= 2.36)
Depends: libpython3.11-minimal (= 3.11.2-6), libexpat1 (>= 2.1~beta3), zlib1g (>= 1:1.2.0)
Filename: pool/main/p/python3.11/python3.11-minimal_3.11.2-6_arm64.deb
Size: 10
SHA256: aa

Package: libpython3.11-minimal
Version: 3.11.2-6
Architecture: arm64
Depends: libc6 (>= 2.34), libssl3 (>= 3.0.0)
Filename: pool/l.deb
Size: 10
SHA256: bb

Package: libc6
Version: 2.36-9
Architecture: arm64
Depends: libgcc-s1
Filename: pool/libc6.deb
Size: 10
SHA256: cc

Package: libgcc-s1
Version: 12.2.0-14
Architecture: arm64
Depends: gcc-12-base (= 12.2.0-14), libc6 (>= 2.35)
Filename: pool/libgcc.deb
Size: 10
SHA256: dd

Package: gcc-12-base
Version: 12.2.0-14
Architecture: arm64
Filename: pool/gcc.deb
Size: 10
SHA256: ee

Package: libexpat1
Version: 2.5.0-1
Architecture: arm64
Depends: libc6 (>= 2.25)
Filename: pool/expat.deb
Size: 10
SHA256: ff

Package: libssl3
Version: 3.0.11-1
Architecture: arm64
Depends: libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0
Filename: pool/ssl.deb
Size: 10
SHA256: 11

Package: zlib1g-ng
Version: 1:1.2.13
Architecture: arm64
Provides: zlib1g (= 1:1.2.13)
Filename: pool/zlib.deb
Size: 10
SHA256: 22
"""


@pytest.fixture
def archive():
    a = Archive("http://archive.invalid/debian", "bookworm", "arm64")
    a._index(PACKAGES)
    return a


def test_parse_stanzas_joins_continuation_lines():
    text = "A: 1\nB: x\n y\n\n# comment\nA: 2\n"
    assert list(parse_stanzas(text)) == [{"A": "1", "B": "x\ny"}, {"A": "2"}]


def test_parse_depends_drops_versions_and_arch_qualifiers():
    assert parse_depends("python3:any (>= 3.11~), libc6 (>= 2.34) | libc6.1, foo [amd64]") == [
        ["python3"],
        ["libc6", "libc6.1"],
        ["foo"],
    ]


def test_resolve_is_the_sorted_closure_without_never_installed(archive):
    names = [p.name for p in archive.resolve(["python3.11-minimal"])]
    assert names == [
        "gcc-12-base",
        "libc6",
        "libexpat1",
        "libgcc-s1",
        "libpython3.11-minimal",
        "libssl3",
        "python3.11-minimal",
        "zlib1g-ng",  # through Provides: zlib1g
    ]
    assert "debconf" not in names


def test_resolve_skips_what_the_image_has(archive):
    names = [p.name for p in archive.resolve(["libssl3"], satisfied=["libc6"])]
    assert names == ["libssl3"]


def test_resolve_names_a_missing_package(archive):
    with pytest.raises(DebianError, match="'no-such' does not exist in bookworm for arm64"):
        archive.resolve(["no-such"])


def test_resolve_names_the_package_that_needs_a_missing_one(archive):
    archive.packages["broken"] = Package("broken", "1", "arm64", "f", "00", 1, depends="gone")
    with pytest.raises(DebianError, match=r"'gone' \(needed by broken\) does not exist"):
        archive.resolve(["broken"])


def test_digest_mismatch_is_an_error():
    data = b"payload"
    debian._check(data, hashlib.sha256(data).hexdigest(), len(data), "x")
    with pytest.raises(DebianError, match="digest mismatch"):
        debian._check(data + b"!", hashlib.sha256(data).hexdigest(), len(data), "Packages.xz")


def test_apt_archive_url_reads_deb822_and_one_line_sources(tmp_path):
    d = tmp_path / "etc/apt/sources.list.d"
    d.mkdir(parents=True)
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian/\nSuites: bookworm bookworm-updates\n"
    )
    assert apt_archive_url(str(tmp_path)) == "http://mirror.invalid/debian"
    (tmp_path / "etc/apt/sources.list").write_text(
        "deb [arch=amd64] http://other.invalid/d bookworm main\n"
    )
    assert apt_archive_url(str(tmp_path)) == "http://other.invalid/d"


def test_apt_archive_url_none_without_sources(tmp_path):
    assert apt_archive_url(str(tmp_path)) is None


def test_unreachable_archive_is_one_clear_error():
    with pytest.raises(DebianError, match="cannot reach the Debian archive"):
        Archive("http://127.0.0.1:9/debian", "bookworm", "amd64").load()


@pytest.fixture
def loopback_archive(tmp_path):
    """A one-package archive served on loopback, its InRelease signed by a test key.

    ``publish(release_fields)`` writes dists/test/InRelease; returns (url, keyring path).
    """
    key = make_key()
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(key.keyring())
    packages = lzma.compress(PACKAGES.encode())
    index = tmp_path / "debian/dists/test/main/binary-arm64"
    index.mkdir(parents=True)
    (index / "Packages.xz").write_bytes(packages)
    digest = hashlib.sha256(packages).hexdigest()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def publish(fields, hash_name="sha256"):
        lines = [f"{k}: {v}" for k, v in fields.items()]
        lines += ["SHA256:", f" {digest} {len(packages)} main/binary-arm64/Packages.xz"]
        (tmp_path / "debian/dists/test/InRelease").write_text(key.sign("\n".join(lines), hash_name))
        return f"http://127.0.0.1:{server.server_address[1]}/debian", str(keyring)

    yield publish
    server.shutdown()
    thread.join(timeout=10)


NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC


def test_archive_signed_and_valid_loads(loopback_archive):
    url, keyring = loopback_archive(
        {"Suite": "test", "Valid-Until": "Sat, 16 Jan 2027 08:00:00 UTC"}
    )
    archive = Archive(url, "test", "arm64", keyring=keyring, now=NOW).load()
    assert "libc6" in archive.packages
    assert archive.signature.startswith(f"signed by {make_key().fingerprint.hex().upper()}")


def test_expired_inrelease_is_refused(loopback_archive):
    url, keyring = loopback_archive(
        {"Suite": "test", "Valid-Until": "Thu, 14 Jan 2027 08:00:00 UTC"}
    )
    with pytest.raises(
        debian.ReleaseExpiredError, match="Valid-Until is Thu, 14 Jan 2027 08:00:00 UTC"
    ):
        Archive(url, "test", "arm64", keyring=keyring, now=NOW).load()


def test_sha1_signed_inrelease_is_refused(loopback_archive):
    url, keyring = loopback_archive({"Suite": "test"}, hash_name="sha1")
    with pytest.raises(DebianError, match=r"not signed by a key in .*use SHA-1, which is refused"):
        Archive(url, "test", "arm64", keyring=keyring, now=NOW).load()


def test_no_keyring_stops_before_anything_is_fetched(tmp_path, monkeypatch):
    monkeypatch.setattr(
        debian, "KEYRINGS", (str(tmp_path / "none.gpg"), str(tmp_path / "none.pgp"))
    )
    monkeypatch.delenv(debian.KEYRING_ENV, raising=False)
    # Port 9 (discard) would fail differently if anything were fetched.
    with pytest.raises(
        debian.KeyringMissingError, match="install the debian-archive-keyring package"
    ):
        Archive("http://127.0.0.1:9/debian", "bookworm", "amd64").load()


def test_keyring_named_by_the_environment_must_exist(tmp_path):
    with pytest.raises(debian.KeyringMissingError, match=f"{debian.KEYRING_ENV}=.*is not a file"):
        debian.find_keyring({debian.KEYRING_ENV: str(tmp_path / "missing.gpg")})


def test_a_dangling_keyring_link_is_no_keyring(tmp_path, monkeypatch):
    # trixie's debian-archive-keyring.gpg is a link to the .pgp: pruning the .pgp broke it once.
    link = tmp_path / "debian-archive-keyring.gpg"
    link.symlink_to("debian-archive-keyring.pgp")
    monkeypatch.setattr(debian, "KEYRINGS", (str(link),))
    with pytest.raises(debian.KeyringMissingError):
        debian.find_keyring({})


@pytest.mark.parametrize(
    ("value", "epoch"),
    [("Sat, 06 Dec 2025 20:17:39 UTC", 1765052259), ("06 Dec 2025 20:17:39 UTC", 1765052259)],
)
def test_release_dates(value, epoch):
    assert debian.parse_release_date(value) == epoch


def test_unreadable_release_date():
    with pytest.raises(DebianError, match="cannot read the Release date"):
        debian.parse_release_date("Sat, 06 Dec 2025 20:17:39 +0100")


def test_extra_os_packages_outside_an_image_say_why(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "IMAGE_RECORD", str(tmp_path / "missing.json"))
    with pytest.raises(DebianError, match="this is not a minimaldask image"):
        debian.install_runtime_packages(["jq"], str(tmp_path))


POD_SIDE = r"""
import json, sys, types
from pathlib import Path
# The package's __init__ (the client API) is not the image module's to decide: stand in for it,
# so that what loads is what minimaldask.image.debian itself needs.
root = Path(sys.argv[1])
for name, path in (("minimaldask", root), ("minimaldask.image", root / "image")):
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module
before = set(sys.modules)
import minimaldask.image.debian
loaded = sorted(m.split(".")[0] for m in set(sys.modules) - before)
print(json.dumps(sorted(set(loaded) - set(sys.stdlib_module_names) - {"minimaldask"})))
"""


def test_the_pod_side_install_path_loads_only_the_standard_library():
    # The entrypoint calls install_runtime_packages at pod start for EXTRA_OS_PACKAGES.
    root = Path(minimaldask.__file__).parent
    result = subprocess.run(
        [sys.executable, "-I", "-c", POD_SIDE, str(root)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == []


def test_the_parsed_index_is_cached_under_the_packages_digest(loopback_archive, tmp_path):
    url, keyring = loopback_archive(
        {"Suite": "test", "Valid-Until": "Sat, 16 Jan 2027 08:00:00 UTC"}
    )
    cache = tmp_path / "cache"
    first = Archive(url, "test", "arm64", str(cache), keyring=keyring, now=NOW).load()
    parsed = list((cache / "parsed").iterdir())
    assert len(parsed) == 1
    digest = hashlib.sha256(lzma.compress(PACKAGES.encode())).hexdigest()
    assert parsed[0].name.startswith(digest)
    # The second load takes the parsed form: the Packages file is not read again.
    for blob in (cache / "sha256").iterdir():
        blob.unlink()
    second = Archive(url, "test", "arm64", str(cache), keyring=keyring, now=NOW)
    second._cached = None  # would raise TypeError if called
    second.load()
    assert second.packages == first.packages
    assert second.providers == first.providers
    # A damaged entry is parsed again, not trusted.
    parsed[0].write_text("{not json")
    third = Archive(url, "test", "arm64", str(cache), keyring=keyring, now=NOW).load()
    assert third.packages == first.packages
