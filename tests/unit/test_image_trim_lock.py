"""Offline: what the recorded imports decide, the lock file, and finding a --python-from CPython."""

import ast
import re
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

import minimaldask
from minimaldask.image import recipe, trim
from minimaldask.image.lock import HEADER, Lock, LockError
from minimaldask.image.standalone import StandaloneError, find, install


@pytest.mark.parametrize(
    ("rel", "name"),
    [
        ("json/__init__.py", "json"),
        ("json/decoder.py", "json.decoder"),
        ("lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so", "_ssl"),
        ("numpy/_core/_simd.cpython-311-x86_64-linux-gnu.so", "numpy._core._simd"),
        ("yaml/_yaml.abi3.so", "yaml._yaml"),
        ("numpy-2.4.6.dist-info/METADATA", None),
        ("bokeh/server/static/js/bokeh.min.js", None),
    ],
)
def test_module_names_of_paths(rel, name):
    assert trim.module_name(rel) == name


def tree(root):
    stdlib = root / "usr/lib/python3.11"
    site = root / "usr/lib/python3/dist-packages"
    for rel in ("unittest/__init__.py", "unittest/case.py", "json/__init__.py", "doctest.py"):
        (stdlib / rel).parent.mkdir(parents=True, exist_ok=True)
        (stdlib / rel).write_text("x = 1\n")
    (site / "numpy/_core").mkdir(parents=True)
    (site / "numpy/_core/_simd.cpython-311-x86_64-linux-gnu.so").write_bytes(b"ELF")
    (site / "numpy/_core/multiarray.py").write_text("")
    return stdlib, site


def test_candidates_never_imported_are_removed_and_imported_ones_kept(tmp_path):
    stdlib, site = tree(tmp_path)
    recorded = frozenset({"json", "doctest", "numpy", "numpy._core"})
    removed = trim.remove_unused(
        str(tmp_path), ("unittest", "doctest", "numpy._core._simd"), recorded
    )
    assert removed == ["unittest", "numpy._core._simd"]
    assert not (stdlib / "unittest").exists()
    assert (stdlib / "doctest.py").exists()
    assert not list((site / "numpy/_core").glob("_simd*"))
    assert (site / "numpy/_core/multiarray.py").exists()


def test_modules_never_imported_ship_without_source(tmp_path):
    tree(tmp_path)
    recorded = frozenset({"json"})
    assert not trim.sourceless(str(tmp_path), "usr/lib/python3.11/json/__init__.py", recorded)
    assert trim.sourceless(str(tmp_path), "usr/lib/python3.11/unittest/case.py", recorded)
    assert trim.sourceless(
        str(tmp_path), "usr/lib/python3/dist-packages/numpy/_core/multiarray.py", recorded
    )
    assert not trim.sourceless(str(tmp_path), "usr/share/foo/bar.py", recorded)
    # A large library goes without sources even where it ran.
    numpy = frozenset({"json", "numpy", "numpy._core", "numpy._core.multiarray"})
    rel = "usr/lib/python3/dist-packages/numpy/_core/multiarray.py"
    assert not trim.sourceless(str(tmp_path), rel, numpy)
    assert trim.sourceless(str(tmp_path), rel, numpy, ("numpy",))


def test_the_recorded_set_names_what_a_worker_and_the_dashboard_import():
    recorded = trim.recorded_modules()
    for name in (
        "distributed.worker",
        "distributed.dashboard.components.scheduler",
        "bokeh.models",
        "minimaldask.pod.janitor",
        "minimaldask.pod.plugin",
        "minimaldask.pod.worker",
        "minimaldask.contract",
        "minimaldask.image.debian",
        "pip",
    ):
        assert name in recorded, name  # fmt: skip


def pod_side_imports() -> set[str]:
    """Every module the pod side's code imports, anywhere in it, following minimaldask's own."""
    package = Path(minimaldask.__file__).parent

    def path(name):
        rel = Path(*name.split(".")[1:])
        return rel / "__init__.py" if (package / rel).is_dir() else rel.with_suffix(".py")

    todo = ["minimaldask.pod"] + [
        f"minimaldask.pod.{p.stem}" for p in (package / "pod").glob("*.py")
    ]
    seen: set[str] = set()
    while todo:
        name = todo.pop().removesuffix(".__init__")
        if name in seen:
            continue
        seen.add(name)
        if name.split(".")[0] != "minimaldask":
            continue
        tree = ast.parse((package / path(name)).read_text())
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo.append(node.module)
                todo += [
                    f"{node.module}.{a.name}"
                    for a in node.names
                    if node.module.split(".")[0] == "minimaldask"
                    and (package / path(f"{node.module}.{a.name}")).exists()
                ]
    return seen - {"__future__"}


def test_the_recorded_set_holds_every_module_the_pod_side_imports():
    # What the pods run keeps its sources and is never trimmed: a module left out of
    # the recording would ship as bytecode only, or be removed if it is a trim candidate.
    # zstandard: only a .deb of a zstd-compressed suite needs it (image/debfile.py says so);
    # no image has it, so EXTRA_OS_PACKAGES of such a suite fails with that message.
    imported = pod_side_imports() - {"zstandard"}
    assert {"minimaldask.contract", "minimaldask.pod.kubeapi", "http.server"} <= imported
    assert sorted(imported - trim.recorded_modules()) == []
    assert not any(m.split(".")[0] in recipe.TRIM_MODULES for m in imported)


def lock():
    made = Lock("2026.8.0", "3.13", "default", ["linux/amd64", "linux/arm/v7"])
    made.add("linux/amd64", "numpy", "2.4.6", "a" * 64)
    made.add("linux/amd64", "dask", "2026.8.0", "c" * 64)
    made.add("linux/arm/v7", "dask", "2026.8.0", "c" * 64)
    made.from_debian["linux/arm/v7"] = {"numpy": "python3-numpy"}
    made.extras = ["camelcase"]
    return made


def test_lock_text_reads_back_to_the_same_text():
    text = lock().text()
    assert text.startswith(HEADER + "\n# dask 2026.8.0, Python 3.13, flavor default\n")
    assert f"numpy==2.4.6 --hash=sha256:{'a' * 64}\n" in text
    assert "# from Debian on linux/arm/v7: numpy=python3-numpy\n" in text
    again = Lock.parse(text)
    assert again.text() == text
    assert again.sha256 == lock().sha256


def test_lock_per_platform():
    wheels, debian = Lock.parse(lock().text()).for_platform("linux/arm/v7")
    assert [w.name for w in wheels] == ["dask"] and debian == {"numpy": "python3-numpy"}
    with pytest.raises(
        LockError, match="the lock has no linux/arm64: it was made for linux/amd64, linux/arm/v7"
    ):
        lock().for_platform("linux/arm64")


def test_a_lock_of_other_versions_is_refused():
    with pytest.raises(
        LockError,
        match=re.escape(
            "made for dask 2026.8.0, Python 3.13, flavor default; this build asks for dask 2026.8.0, Python 3.11"
        ),
    ):
        lock().check("2026.8.0", "3.11", "default")


def test_two_versions_of_one_distribution_cannot_be_locked():
    made = lock()
    with pytest.raises(
        LockError,
        match=re.escape("numpy resolves to 2.4.6 on one platform and 2.3.0 on linux/arm/v7"),
    ):
        made.add("linux/arm/v7", "numpy", "2.3.0", "b" * 64)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("numpy==1\n", "not a minimaldask image lock"),
        (HEADER + "\n# dask 1, Python 3.11, flavor default\n# platforms: linux/amd64\nnumpy==1 --hash=md5:x\n", "line 4: expected 'name==version --hash=sha256:HEX"),
    ],
)  # fmt: skip
def test_bad_locks_name_the_line(text, message):
    with pytest.raises(LockError, match=message):
        Lock.parse(text)


def fake_prefix(root, version="3.12"):
    """A prefix of this machine's interpreter under another name: enough to be found."""
    (root / "bin").mkdir(parents=True)
    shutil.copy(sys.executable, root / "bin" / f"python{version}")
    (root / f"lib/python{version}/site-packages/pip").mkdir(parents=True)
    (root / f"lib/python{version}/os.py").write_text("")
    (root / f"lib/python{version}/site-packages/pip/__init__.py").write_text("")
    (root / "bin/pip3").write_text("#!/bin/sh\n")
    return root


def test_a_prefix_is_found_with_its_version_and_platform(tmp_path):
    found = find(str(fake_prefix(tmp_path / "p")), str(tmp_path / "cache"))
    assert (found.version, found.platform, found.sha256) == ("3.12", "linux/amd64", None)


def test_an_archive_is_unpacked_once_and_found(tmp_path):
    fake_prefix(tmp_path / "python")
    archive = tmp_path / "cpython.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "python", arcname="python")
    first = find(str(archive), str(tmp_path / "cache"))
    assert first.root.startswith(str(tmp_path / "cache/python-from"))
    assert len(first.sha256) == 64
    assert find(str(archive), str(tmp_path / "cache")).root == first.root


def test_install_leaves_out_site_packages_and_scripts(tmp_path):
    found = find(str(fake_prefix(tmp_path / "p")), str(tmp_path / "cache"))
    install(found, str(tmp_path / "stage"))
    site = tmp_path / "stage/usr/lib/python3.12/site-packages"
    assert sorted(p.name for p in site.iterdir()) == ["minimaldask-image.pth"]
    assert (site / "minimaldask-image.pth").read_text() == "/usr/lib/python3/dist-packages\n"
    assert sorted(p.name for p in (tmp_path / "stage/usr/bin").iterdir()) == ["python3.12"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "expected one interpreter bin/python3.X in .*, found none"),
        (lambda p: (p.parent / "x.zip").write_text(""), "expected an install prefix .* or an archive"),
        (lambda p: (fake_prefix(p), (p / "lib/python3.12/os.py").unlink()), "os.py is missing: not a complete CPython"),
        (lambda p: (fake_prefix(p), (p / "bin/python3.12").write_text("#!/bin/sh\n")), "is not an ELF executable"),
    ],
)  # fmt: skip
def test_bad_python_from_says_what_is_wrong(tmp_path, make, message):
    path = tmp_path / "p"
    make(path)
    target = tmp_path / "x.zip" if (tmp_path / "x.zip").exists() else path
    with pytest.raises(StandaloneError, match=message):
        find(str(target), str(tmp_path / "cache"))
