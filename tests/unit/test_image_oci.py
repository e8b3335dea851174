"""The OCI writer: deterministic layers, manifests, index, layout and docker archive."""

import gzip
import io
import json
import os
import tarfile

import pytest

from minimaldask.image import oci


def make_tree(root, mtime):
    (root / "usr/bin").mkdir(parents=True)
    (root / "home/dask").mkdir(parents=True)
    (root / "usr/bin/python3.11").write_bytes(b"ELF" * 100)
    (root / "usr/bin/python3.11").chmod(0o755)
    (root / "b.txt").write_text("b")
    (root / "a.txt").write_text("a")
    os.symlink("python3.11", root / "usr/bin/python3")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)


def owner(rel):
    return (1000, 1000) if rel.startswith("home/dask") else (0, 0)


def test_same_tree_gives_the_same_layer_whatever_the_mtimes(tmp_path):
    make_tree(tmp_path / "one", 1_000_000)
    make_tree(tmp_path / "two", 2_000_000)
    a = oci.layer_tar(str(tmp_path / "one"), 1700000000, owner)
    b = oci.layer_tar(str(tmp_path / "two"), 1700000000, owner)
    assert a == b
    assert oci.compress(a, "gzip") == oci.compress(b, "gzip")


def test_layer_entries_are_sorted_with_fixed_owner_and_mtime(tmp_path):
    make_tree(tmp_path, 5)
    with tarfile.open(fileobj=io.BytesIO(oci.layer_tar(str(tmp_path), 42, owner))) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {m.mtime for m in members} == {42}
    assert {(m.name, m.uid) for m in members if m.name.startswith("home")} == {
        ("home", 0),
        ("home/dask", 1000),
    }
    link = next(m for m in members if m.name == "usr/bin/python3")
    assert link.issym() and link.linkname == "python3.11"
    assert all(m.uname == "" for m in members)


def test_gzip_has_no_timestamp_or_name():
    data = oci.compress(b"x" * 1000, "gzip")
    assert data[4:8] == b"\0\0\0\0"
    assert not data[3] & 0x08  # FNAME flag
    assert gzip.decompress(data) == b"x" * 1000


def test_unknown_compression():
    with pytest.raises(oci.OCIError, match="choose gzip or zstd"):
        oci.compress(b"", "brotli")


def test_compression_levels():
    data = bytes(range(256)) * 400 + b"x" * 50_000
    fast, best = oci.compress(data, "gzip", 1), oci.compress(data, "gzip")
    assert gzip.decompress(fast) == gzip.decompress(best) == data
    assert len(best) < len(fast)  # the default is level 9
    assert best == oci.compress(data, "gzip", 9)
    zstandard = pytest.importorskip("zstandard")
    z9, z19 = oci.compress(data, "zstd"), oci.compress(data, "zstd", 19)
    assert zstandard.ZstdDecompressor().decompress(z9) == data
    assert zstandard.ZstdDecompressor().decompress(z19) == data
    assert z9 == oci.compress(data, "zstd", 9) != z19  # the default is level 9


@pytest.mark.parametrize(
    ("compression", "level", "message"),
    [("gzip", 0, "1 to 9 \\(default 9\\)"), ("gzip", 10, "out of range for gzip"),
     ("zstd", 23, "1 to 22 \\(default 9\\)")],
)  # fmt: skip
def test_a_level_out_of_range_says_the_range(compression, level, message):
    with pytest.raises(oci.OCIError, match=message):
        oci.compress(b"", compression, level)


def test_a_bad_level_stops_the_build_before_anything_is_fetched(tmp_path):
    from minimaldask.image.builder import BuildError, BuildOptions, build

    opts = BuildOptions(
        platforms=["linux/amd64"], python="3.13", dask="2026.8.0", compression="zstd",
        compression_level=30, debian_mirror="http://127.0.0.1:9/debian", cache_dir=str(tmp_path),
    )  # fmt: skip
    with pytest.raises(BuildError, match="level 30 is out of range for zstd"):
        build(opts)
    assert list(tmp_path.iterdir()) == []


def image(platform="linux/arm/v7"):
    layer = oci.Blob(oci.LAYER["gzip"], oci.compress(b"tar", "gzip"))
    config = oci.Blob(oci.CONFIG, oci.canonical_json({"architecture": "arm"}))
    return oci.Image(platform, config, [layer], ["runtime"], [3], ["sha256:x"], {"k": "v"})


def test_manifest_and_index_reference_their_blobs():
    img = image()
    manifest = json.loads(img.manifest.data)
    assert manifest["config"]["digest"] == img.config.digest
    assert manifest["layers"][0]["size"] == len(img.layers[0].data)
    index = json.loads(oci.index_blob([img], {"a": "b"}).data)
    assert index["manifests"][0]["platform"] == {
        "os": "linux",
        "architecture": "arm",
        "variant": "v7",
    }
    assert index["annotations"] == {"a": "b"}


def test_write_layout_is_complete_and_replaces_atomically(tmp_path):
    img = image()
    index = oci.index_blob([img], {})
    out = tmp_path / "layout"
    oci.write_layout(str(out), [img], index, "repo:tag")
    blobs = set(os.listdir(out / "blobs/sha256"))
    for blob in [img.config, *img.layers, img.manifest, index]:
        assert blob.digest.split(":")[1] in blobs
    top = json.loads((out / "index.json").read_text())
    assert top["manifests"][0]["digest"] == index.digest
    assert not (tmp_path / "layout.partial").exists()


def test_docker_archive_lists_config_and_layers(tmp_path):
    img = image("linux/amd64")
    path = tmp_path / "image.tar"
    oci.write_docker_archive(str(path), img, ["repo:tag"])
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == ["repo:tag"]
        assert tar.extractfile(manifest[0]["Config"]).read() == img.config.data
