"""Unpacking .deb files (ar + tar) in Python, onto a merged-/usr tree."""

import io
import lzma
import os
import tarfile

import pytest

from minimaldask.image.debfile import DebError, ar_members, merged_usr_path, unpack_deb


def ar(members):
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n"
        out.write(header.encode() + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def data_tar():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name, kind=tarfile.REGTYPE, data=b"", link="", mode=0o644):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.size = kind, link, mode, len(data)
            tar.addfile(info, io.BytesIO(data))

        add("./", tarfile.DIRTYPE, mode=0o755)
        add("./bin/", tarfile.DIRTYPE, mode=0o755)
        add("./bin/tool", data=b"#!tool", mode=0o4755)
        add("./lib/x86_64-linux-gnu/libz.so.1.2", data=b"ELF")
        add("./lib/x86_64-linux-gnu/libz.so.1", tarfile.SYMTYPE, link="libz.so.1.2")
        add(
            "./usr/lib/x86_64-linux-gnu/libz.so",
            tarfile.SYMTYPE,
            link="/lib/x86_64-linux-gnu/libz.so.1",
        )
        add("./usr/bin/tool2", tarfile.LNKTYPE, link="./bin/tool")
    return buf.getvalue()


def test_ar_members_reads_names_and_odd_sizes():
    assert list(ar_members(ar([("a", b"123"), ("b", b"45")]))) == [("a", b"123"), ("b", b"45")]


def test_not_an_ar_archive():
    with pytest.raises(DebError, match="not an ar archive"):
        list(ar_members(b"PK\x03\x04"))


@pytest.mark.parametrize(
    ("path", "merged"),
    [("./bin/sh", "usr/bin/sh"), ("./lib64/ld.so", "usr/lib64/ld.so"), ("./etc/x", "etc/x"),
     ("./usr/lib/y", "usr/lib/y"), ("/lib", "usr/lib"), ("./.hidden", ".hidden")],
)  # fmt: skip
def test_merged_usr_path(path, merged):
    assert merged_usr_path(path) == merged


def test_unpack_deb_merges_usr_and_relativises_links(tmp_path):
    deb = ar([("debian-binary", b"2.0\n"), ("control.tar.xz", lzma.compress(b"")),
              ("data.tar.xz", lzma.compress(data_tar()))])  # fmt: skip
    files = unpack_deb(deb, str(tmp_path))
    assert "usr/bin/tool" in files
    tool = tmp_path / "usr/bin/tool"
    assert tool.read_bytes() == b"#!tool"
    assert oct(tool.stat().st_mode & 0o7777) == "0o755"  # setuid dropped
    link = tmp_path / "usr/lib/x86_64-linux-gnu/libz.so"
    assert os.readlink(link) == "libz.so.1"
    assert link.read_bytes() == b"ELF"
    assert (tmp_path / "usr/bin/tool2").read_bytes() == b"#!tool"


def test_unpack_deb_refuses_paths_outside(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../etc/passwd")
        tar.addfile(info, io.BytesIO(b""))
    deb = ar([("debian-binary", b"2.0\n"), ("data.tar", buf.getvalue())])
    with pytest.raises(DebError, match="unsafe path"):
        unpack_deb(deb, str(tmp_path))
