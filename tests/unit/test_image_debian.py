"""Debian index parsing, the digest chain and dependency resolution, offline."""

import hashlib

import pytest

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


def test_clearsigned_text_undoes_dash_escaping():
    message = (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\n- -dashed\n"
        "-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n"
    )
    assert debian._clearsigned_text(message) == "Origin: Debian\n-dashed"


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


def test_extra_os_packages_outside_an_image_say_why(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "IMAGE_RECORD", str(tmp_path / "missing.json"))
    with pytest.raises(DebianError, match="this is not a minimaldask image"):
        debian.install_runtime_packages(["jq"], str(tmp_path))
