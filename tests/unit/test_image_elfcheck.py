"""The build-time check of shared libraries, and the links update-alternatives would make."""

import glob
import os
import re
import shutil
import subprocess

from minimaldask.image.debfile import apply_alternatives
from minimaldask.image.elfcheck import dynamic_entries, missing_libraries


def an_extension_module():
    import _ctypes  # an extension module that needs libffi on every Linux Python

    return _ctypes.__file__


def readelf(path):
    """NEEDED and RUNPATH/RPATH of an ELF file as binutils' readelf reads them: the oracle."""
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", out)
    paths = [
        p
        for value in re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]", out)
        for p in value.split(":")
    ]
    return needed, paths


def test_dynamic_entries_of_a_real_elf_file():
    with open(an_extension_module(), "rb") as f:
        needed, paths = dynamic_entries(f.read())
    # _ctypes is the module that needs libffi, whatever else it links.
    assert any(re.fullmatch(r"libffi\.so\.\d+", lib) for lib in needed), needed
    assert (needed, paths) == readelf(an_extension_module())


def test_dynamic_entries_of_a_text_file():
    assert dynamic_entries(b"#!/bin/sh\n" * 10) is None


def test_missing_library_is_named(tmp_path):
    site = tmp_path / "usr/lib/python3/dist-packages"
    site.mkdir(parents=True)
    shutil.copy(an_extension_module(), site / "_ctypes.so")
    problems = missing_libraries([str(tmp_path)], "x86_64-linux-gnu")
    assert problems and problems[0].startswith("/usr/lib/python3/dist-packages/_ctypes.so needs ")


def test_library_in_another_layer_counts(tmp_path):
    with open(an_extension_module(), "rb") as f:
        needed, _ = dynamic_entries(f.read())
    top, base = tmp_path / "top", tmp_path / "base"
    (top / "usr/lib/python3").mkdir(parents=True)
    shutil.copy(an_extension_module(), top / "usr/lib/python3/_ctypes.so")
    (base / "usr/lib/x").mkdir(parents=True)
    for lib in needed:
        (base / "usr/lib/x" / lib).write_bytes(b"")
    assert missing_libraries([str(base), str(top)], "x") == []


def test_alternatives_link_blas_and_lapack(tmp_path):
    blas = tmp_path / "usr/lib/arm-linux-gnueabihf/blas"
    blas.mkdir(parents=True)
    (blas / "libblas.so.3").write_bytes(b"ELF")
    made = apply_alternatives(str(tmp_path), "arm-linux-gnueabihf")
    assert made == ["usr/lib/arm-linux-gnueabihf/libblas.so.3"]
    assert os.readlink(tmp_path / made[0]) == "blas/libblas.so.3"
    assert apply_alternatives(str(tmp_path), "arm-linux-gnueabihf") == []


def test_dynamic_entries_reads_every_extension_module_of_this_python():
    paths = glob.glob(os.path.join(os.path.dirname(an_extension_module()), "*.so"))
    assert len(paths) > 20
    for path in paths:
        with open(path, "rb") as f:
            assert dynamic_entries(f.read()) == readelf(path), path
