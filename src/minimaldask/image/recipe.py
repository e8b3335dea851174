"""What goes into the image: platforms, Python versions, flavors, layers, pruning.

Everything that decides the image's content is here, as data, so that the
CI's "did the recipe change?" check can watch this one file and the builder
stays a mechanism.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEBIAN_FALLBACK",
    "FLAVORS",
    "LAYERS",
    "NO_WHEEL",
    "NUMERIC",
    "PLATFORMS",
    "PYTHONS",
    "WHEEL_EXCLUDE",
    "Target",
    "target",
]

#: Python minor version -> Debian suite that ships it.
PYTHONS = {"3.11": "bookworm", "3.13": "trixie"}

#: OCI platform -> (Debian architecture, GNU triplet, wheel architecture, Python versions).
PLATFORMS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "linux/amd64": ("amd64", "x86_64-linux-gnu", "x86_64", ("3.11", "3.13")),
    "linux/arm64": ("arm64", "aarch64-linux-gnu", "aarch64", ("3.11", "3.13")),
    # PyPI has no armv7 wheels of numpy, pandas, psutil, ...; Debian trixie
    # builds them for its Python 3.13, bookworm's are too old for dask.
    "linux/arm/v7": ("armhf", "arm-linux-gnueabihf", "armv7l", ("3.13",)),
}

#: glibc minor version of each suite: the newest manylinux tag its wheels may carry.
GLIBC = {"bookworm": 36, "trixie": 41}

#: Requirements of each flavor, besides dask and distributed of the chosen version.
FLAVORS: dict[str, tuple[str, ...]] = {
    "default": ("numpy", "bokeh", "pip"),
    "dataframe": ("numpy", "bokeh", "pip", "pandas", "pyarrow"),
}

#: Flavors a platform cannot have, with the reason.
UNSUPPORTED = {
    ("linux/arm/v7", "dataframe"): "pyarrow has no armv7 wheel on PyPI and no Debian package",
}

#: Wheels left out although a requirement declares them. bokeh declares
#: pillow (image export), contourpy (contour plots), xyzservices (map tiles)
#: and narwhals (data frames as data sources): the dashboard uses none of
#: them. pandas and its dependencies only where a flavor asks for them.
WHEEL_EXCLUDE = {
    "default": frozenset(
        {
            "pillow",
            "contourpy",
            "xyzservices",
            "narwhals",
            "pandas",
            "python-dateutil",
            "pytz",
            "tzdata",
        }
    ),
    "dataframe": frozenset({"pillow", "contourpy", "xyzservices"}),
}

#: Python distributions of the numeric-libraries layer (the rest is the dask layer).
NUMERIC = frozenset({"numpy", "pandas", "pyarrow", "python-dateutil", "pytz", "tzdata", "six"})

#: PyPI name -> Debian package, used where PyPI has no wheel for the platform.
DEBIAN_FALLBACK = {
    "numpy": "python3-numpy",
    "pandas": "python3-pandas",
    "psutil": "python3-psutil",
    "msgpack": "python3-msgpack",
    "pyyaml": "python3-yaml",
    "tornado": "python3-tornado",
    "markupsafe": "python3-markupsafe",
    "pillow": "python3-pil",
    "contourpy": "python3-contourpy",
    "cffi": "python3-cffi-backend",
    "lz4": "python3-lz4",
    "cytoolz": "python3-cytoolz",
}

#: Distributions PyPI has no wheel of, per Debian architecture: taken from
#: Debian from the start (pip's resolver cannot say which one is missing when
#: several are needed deep in the tree). Others are found as pip reports them.
NO_WHEEL = {
    "armhf": (
        "numpy", "pandas", "pillow", "contourpy", "psutil", "msgpack", "pyyaml", "tornado",
    ),
}  # fmt: skip

#: Layers, in order, from the one that changes least.
LAYERS = ("runtime", "numeric", "dask", "minimaldask", "extras")

#: Debian packages of the runtime layer (their dependencies are added).
# libstdc++6 and libgcc-s1 are system libraries that manylinux wheels expect.
# debian-archive-keyring: EXTRA_OS_PACKAGES checks the archive's signature with it.
RUNTIME_DEBS = (
    "python{v}-minimal", "libpython{v}-stdlib", "libstdc++6", "tini", "netbase",
    "debian-archive-keyring",
)  # fmt: skip

#: Paths removed from the root, as glob patterns relative to it.
PRUNE_GLOBS = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/bash-completion",
    "usr/share/doc-base",
    "usr/share/gdb",
    "usr/share/gcc",
    "usr/share/gcc-*",
    "usr/share/binfmts",
    "usr/share/applications",
    "usr/share/pixmaps",
    "usr/share/python3",
    "usr/share/menu",
    "usr/include",
    "usr/lib/*/gconv",
    "usr/lib/*/audit",
    "usr/lib/binfmt.d",
    # glibc's vector math library: nothing in the image links it.
    "usr/lib/*/libmvec*",
    "usr/lib/python3/dist-packages/*/include",
    "usr/lib/python3/dist-packages/numpy/_core/include",
    "usr/lib/python3/dist-packages/numpy/_core/lib",
    "usr/lib/python3/dist-packages/numpy/f2py/src",
    "usr/lib/python3/dist-packages/numpy/_pyinstaller",
    "usr/lib/python3/dist-packages/numpy/random/_examples",
    "usr/lib/python3/dist-packages/pyarrow/src",
    # Arrow Flight RPC: dask.dataframe does not use it (Substrait stays:
    # pyarrow's Acero engine links it).
    "usr/lib/python3/dist-packages/pyarrow/libarrow_flight.so*",
    "usr/lib/python3/dist-packages/pyarrow/libarrow_python_flight.so*",
    "usr/lib/python3/dist-packages/pyarrow/_flight*.so",
    "usr/lib/python3/dist-packages/pyarrow/flight.py",
    "usr/lib/python3/dist-packages/pyarrow/includes",
    "usr/lib/python3/dist-packages/bokeh/server/static/js/lib",
    "usr/lib/python3/dist-packages/bokeh/server/static/js/compiler.js",
    "usr/lib/python3/dist-packages/bokeh/sampledata",
    "usr/lib/python3/dist-packages/bokeh/sphinxext",
    # LaTeX rendering: the dashboard has no MathText, so bokeh never sends it.
    "usr/lib/python3/dist-packages/bokeh/server/static/js/bokeh-mathjax.min.js",
    "usr/lib/python3/dist-packages/numpy/distutils",
    "usr/lib/python3/dist-packages/numpy/f2py",
    "usr/lib/python3/dist-packages/pip/_vendor/distlib/*.exe",
    "usr/lib/python3.*/idlelib",
    "usr/lib/python3.*/tkinter",
    "usr/lib/python3.*/turtledemo",
    "usr/lib/python3.*/turtle.py",
    "usr/lib/python3.*/ensurepip",
    "usr/lib/python3.*/lib2to3",
    "usr/lib/python3.*/pydoc_data",
    "usr/lib/python3.*/_pydecimal.py",
    "usr/lib/python3.*/__phello__",
    "usr/lib/python3.*/test",
    "usr/lib/python3.*/config-*",
    "usr/lib/python3.*/EXTERNALLY-MANAGED",
    # Extension modules whose libraries are not installed (see debian.NEVER_INSTALL).
    "usr/lib/python3.*/lib-dynload/_curses*",
    "usr/lib/python3.*/lib-dynload/readline.*",
    "usr/lib/python3.*/lib-dynload/_dbm.*",
    "usr/lib/python3.*/lib-dynload/_gdbm.*",
    "usr/lib/python3.*/lib-dynload/nis.*",
    "usr/lib/python3.*/curses",
    "usr/bin/tini-static",
    "usr/bin/pydoc*",
    "usr/bin/pygettext*",
    "usr/sbin",
    "etc/init.d",
    "etc/ld.so.conf.d",
    "etc/ssl",
    "etc/apt",
    # One keyring is enough: the one that holds every current archive key.
    "usr/share/keyrings/debian-archive-[!k]*",
    "usr/share/keyrings/*.pgp",
    "var",
)

#: Paths removed from flavors that cannot use them.
PRUNE_FLAVOR_GLOBS = {
    # dask.dataframe needs pandas and pyarrow, which only the dataframe flavor has.
    "default": ("usr/lib/python3/dist-packages/dask/dataframe",),
    "dataframe": (),
}

#: Trees left without bytecode. pip runs only when EXTRA_PIP_PACKAGES is set,
#: once per start; its bytecode would add 2 MB (gzip) to every image.
NO_BYTECODE = ("usr/lib/python3/dist-packages/pip/",)

#: File names removed anywhere below site-packages (fnmatch patterns).
PRUNE_SITE_FILES = (
    "*.pyi",
    "*.pxd",
    "*.pyx",
    "*.pxi",
    "*.c",
    "*.cc",
    "*.cpp",
    "*.h",
    "*.hpp",
    "*.a",
    "*.js.map",
    "*.d.ts",
    "*.ts",
)

#: Directory names removed anywhere below site-packages and the standard library.
PRUNE_DIRS = ("tests", "test", "testing_data")


@dataclass(frozen=True)
class Target:
    """One platform of one build: where its packages come from."""

    platform: str
    python: str
    suite: str
    arch: str
    triplet: str
    wheel_arch: str
    glibc_minor: int

    @property
    def wheel_platforms(self) -> list[str]:
        """Wheel platform tags this target runs, newest first."""
        tags = [f"manylinux_2_{m}_{self.wheel_arch}" for m in range(self.glibc_minor, 16, -1)]
        tags.append(f"manylinux2014_{self.wheel_arch}")
        if self.wheel_arch == "x86_64":
            tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        return tags

    @property
    def runtime_debs(self) -> list[str]:
        """Debian packages of the runtime layer."""
        return [name.format(v=self.python) for name in RUNTIME_DEBS]


def target(platform: str, python: str) -> Target:
    """Return the build target of a platform and Python version, or raise ValueError."""
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}: choose from {', '.join(PLATFORMS)}")
    if python not in PYTHONS:
        raise ValueError(f"unsupported Python {python!r}: choose from {', '.join(PYTHONS)}")
    arch, triplet, wheel_arch, pythons = PLATFORMS[platform]
    if python not in pythons:
        raise ValueError(
            f"{platform} needs --python {' or '.join(pythons)} (PyPI has no wheels of numpy,"
            f" psutil, ... for it; Debian {PYTHONS[pythons[0]]} builds them for Python"
            f" {pythons[0]})"
        )
    suite = PYTHONS[python]
    return Target(platform, python, suite, arch, triplet, wheel_arch, GLIBC[suite])


def unsupported_reason(platform: str, flavor: str) -> str | None:
    """Why a platform cannot have a flavor, or None when it can."""
    return UNSUPPORTED.get((platform, flavor))
