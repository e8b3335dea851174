"""A CPython 3.12 for --python-from, made on this machine from pyenv's (image and e2e tests).

No standalone CPython archive can be downloaded here, so the tests make one
laid out the same way (python/bin/python3.12, python/lib/...) from the pyenv
install prefix, with debug symbols stripped as in the standalone project's
``install_only_stripped`` archives. Cached outside the repository, keyed by
the prefix's interpreter and library.
"""

import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

CACHE = Path(
    os.environ.get("MINIMALDASK_TEST_CACHE", "~/.cache/minimaldask/test-images")
).expanduser()


def pyenv_prefix(version):
    """pyenv's install prefix of Python ``version`` (X.Y), newest patch release; fails if none."""
    root = Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser() / "versions"
    found = sorted(
        (p for p in root.glob(f"{version}.*") if (p / "bin" / f"python{version}").exists()),
        key=lambda p: [int(x) for x in p.name.split(".") if x.isdigit()],
    )
    assert found, f"no pyenv Python {version} in {root}: the --python-from tests use it"
    return found[-1]


def _key(prefix, version):
    h = hashlib.sha256()
    for rel in (f"bin/python{version}", f"lib/libpython{version}.so.1.0"):
        path = prefix / rel
        if path.exists():
            h.update(rel.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def standalone_archive(version="3.12"):
    """A python/... archive of pyenv's CPython ``version``; returns its path."""
    prefix = pyenv_prefix(version)
    archive = CACHE / f"cpython-{prefix.name}-{_key(prefix, version)}-linux-amd64.tar.gz"
    if archive.exists():
        return archive
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"{archive.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    lib = f"lib/python{version}"
    shutil.copytree(
        prefix,
        work / "python",
        symlinks=True,
        ignore=lambda d, names: [
            n
            for n in names
            if n in ("__pycache__", "test", "idlelib", "tkinter")
            or (d.endswith(f"{lib}/site-packages") and n != "README.txt")
        ],
    )
    for path in (work / "python").rglob("*"):
        candidate = ".so" in path.name or path.parent.name == "bin"
        if candidate and path.is_file() and not path.is_symlink() and _is_elf(path):
            subprocess.run(["strip", "--strip-debug", str(path)], check=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(work / "python", arcname="python")
    os.replace(tmp, archive)
    shutil.rmtree(work)
    return archive


def _is_elf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def client_venv(version, root):
    """A virtual environment of pyenv's Python ``version`` with the checkout ``root`` installed
    (editable); returns its interpreter. Cached beside CACHE, keyed by the interpreter,
    pyproject.toml and the checkout's path."""
    python = pyenv_prefix(version) / "bin" / f"python{version}"
    key = hashlib.sha256(
        python.read_bytes() + (root / "pyproject.toml").read_bytes() + str(root).encode()
    ).hexdigest()[:16]
    venv = CACHE.parent / "test-venvs" / f"py{version.replace('.', '')}-{key}"
    if not (venv / "done").exists():
        subprocess.run([str(python), "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        subprocess.run(
            [str(venv / "bin/python"), "-m", "pip", "install", "-q", "-e", str(root)],
            check=True, timeout=1200,
        )  # fmt: skip
        (venv / "done").write_text("")
    return venv / "bin" / "python"
