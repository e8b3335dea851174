"""Targets, versions, wheels and image references, offline."""

import zipfile

import pytest

from minimaldask.image import registry, wheels
from minimaldask.image.builder import upstream_version
from minimaldask.image.recipe import python_advice, supported_pythons, target


def test_target_of_each_platform():
    t = target("linux/arm/v7", "3.13")
    assert (t.suite, t.arch, t.triplet) == ("trixie", "armhf", "arm-linux-gnueabihf")
    assert t.wheel_platforms[0] == "manylinux_2_41_armv7l"
    assert "manylinux2014_armv7l" in t.wheel_platforms
    assert target("linux/amd64", "3.11").runtime_debs[:2] == [
        "python3.11-minimal",
        "libpython3.11-stdlib",
    ]


@pytest.mark.parametrize(
    ("platform", "python", "message"),
    [
        ("linux/s390x", "3.11", "unknown platform 'linux/s390x'"),
        ("linux/amd64", "3.12", "unsupported Python '3.12'.*give a relocatable CPython 3.12 with --python-from PATH"),
        ("linux/amd64", "3.15", "unsupported Python '3.15': choose from 3.11, 3.13, 3.14$"),
        ("linux/arm/v7", "3.11", "linux/arm/v7 needs --python 3.13 or 3.14"),
    ],
)  # fmt: skip
def test_bad_targets(platform, python, message):
    with pytest.raises(ValueError, match=message):
        target(platform, python)


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64", "linux/arm/v7"])
def test_python_314_comes_from_forky_on_every_platform(platform):
    t = target(platform, "3.14")
    assert (t.suite, t.python_source) == ("forky", "Debian forky")
    assert t.runtime_debs[:2] == ["python3.14-minimal", "libpython3.14-stdlib"]


def test_standalone_target_takes_only_system_packages_from_debian():
    t = target("linux/arm64", "3.12", standalone=True)
    assert (t.suite, t.standalone, t.python_source) == ("trixie", True, "--python-from")
    assert not any(name.startswith(("python", "libpython")) for name in t.runtime_debs)
    assert "debian-archive-keyring" in t.runtime_debs


def test_standalone_armv7_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"no linux/arm/v7 wheels of numpy.*--python 3.13 or 3.14"):
        target("linux/arm/v7", "3.12", standalone=True)


def test_supported_pythons_are_sorted_and_say_where_python_comes_from():
    pythons = supported_pythons()
    assert list(pythons) == ["3.10", "3.11", "3.12", "3.13", "3.14"]
    assert pythons["3.14"] == "Debian forky"
    assert pythons["3.12"] == "standalone CPython"


def test_python_advice_for_a_python_without_an_image_names_both_ways_out():
    text = python_advice("3.9", "localhost:5000/minimaldask", "2026.8.0-py3.9")
    assert (
        "no published image for Python 3.9: images exist for Python 3.10, 3.11, 3.12, 3.13, 3.14"
        in text
    )
    assert "run the client in an environment with one of those Pythons" in text
    assert (
        "minimaldask image build --python-from PATH --push localhost:5000/minimaldask:2026.8.0-py3.9"
        in text
    )


def test_python_advice_for_a_python_with_an_image_names_it():
    text = python_advice("3.12", "localhost:5000/minimaldask", "2026.8.0-py3.12")
    assert text.startswith(
        "Use the image built for this client, image=localhost:5000/minimaldask:2026.8.0-py3.12"
    )
    assert "--python-from" not in text


@pytest.mark.parametrize(
    ("debian", "upstream"),
    [("1:2.2.4+ds-1", "2.2.4"), ("6.0.2-1+b2", "6.0.2"), ("7.0.0-2", "7.0.0"), ("1.0", "1.0"),
     ("2.2.3+dfsg-9", "2.2.3"), ("1.0~rc1-1", "1.0")],
)  # fmt: skip
def test_upstream_version(debian, upstream):
    assert upstream_version(debian) == upstream


def test_stub_wheel_and_unpack_wheel(tmp_path):
    wheels._stub_wheel(str(tmp_path), "PyYAML", "6.0.2")
    (path,) = tmp_path.glob("*.whl")
    assert path.name == "pyyaml-6.0.2-py3-none-any.whl"
    site, data = tmp_path / "site", tmp_path / "data"
    assert wheels.unpack_wheel(str(path), str(site), str(data)) == "6.0.2"
    assert "Name: PyYAML" in (site / "pyyaml-6.0.2.dist-info/METADATA").read_text()


def test_unpack_wheel_puts_data_under_the_prefix(tmp_path):
    path = tmp_path / "x-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x/__init__.py", "")
        zf.writestr("x-1.0.data/data/share/x/providers.json", "{}")
        zf.writestr("x-1.0.data/scripts/x", "#!python")
        zf.writestr("x-1.0.dist-info/METADATA", "Name: x\nVersion: 1.0\n")
    wheels.unpack_wheel(str(path), str(tmp_path / "site"), str(tmp_path / "usr"))
    assert (tmp_path / "usr/share/x/providers.json").exists()
    assert (tmp_path / "site/x/__init__.py").exists()
    assert not (tmp_path / "site/x-1.0.data").exists()


def test_canonical_names():
    assert wheels.canonical("Importlib_Metadata") == "importlib-metadata"


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("localhost:5000/minimaldask:1-py3.11", ("localhost:5000", "minimaldask", "1-py3.11")),
        ("registry.invalid/a/b", ("registry.invalid", "a/b", "latest")),
        ("registry.invalid/a@sha256:ab", ("registry.invalid", "a", "sha256:ab")),
    ],
)
def test_parse_reference(ref, parsed):
    r = registry.parse_reference(ref)
    assert (r.registry, r.repository, r.tag) == parsed


def test_reference_without_registry_is_refused():
    with pytest.raises(registry.RegistryError, match="names no registry"):
        registry.parse_reference("minimaldask/minimaldask:latest")
