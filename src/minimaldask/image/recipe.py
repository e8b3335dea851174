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
    "SONAME_PACKAGES",
    "STANDALONE_PYTHONS",
    "WHEEL_EXCLUDE",
    "Target",
    "python_advice",
    "supported_pythons",
    "target",
]

#: Python minor version -> Debian suite that ships it. forky also has 3.15,
#: a pre-release when this was written: left out until it is final.
PYTHONS = {"3.11": "bookworm", "3.13": "trixie", "3.14": "forky"}

#: Python versions no current Debian suite ships: images are built around a
#: relocatable CPython (``--python-from``); CI publishes these from the
#: standalone CPython archives pinned in tools/ci/cpython.json.
STANDALONE_PYTHONS = ("3.10", "3.12")

#: Debian suite of the libraries around a ``--python-from`` CPython (and of its
#: tini, keyring, ...): the current stable release.
STANDALONE_SUITE = "trixie"

#: OCI platform -> (Debian architecture, GNU triplet, wheel architecture, Python versions).
PLATFORMS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "linux/amd64": ("amd64", "x86_64-linux-gnu", "x86_64", ("3.11", "3.13", "3.14")),
    "linux/arm64": ("arm64", "aarch64-linux-gnu", "aarch64", ("3.11", "3.13", "3.14")),
    # PyPI has no armv7 wheels of numpy, pandas, psutil, ...; Debian trixie
    # and forky build them for their Pythons, bookworm's are too old for dask.
    "linux/arm/v7": ("armhf", "arm-linux-gnueabihf", "armv7l", ("3.13", "3.14")),
}

#: glibc minor version of each suite: the newest manylinux tag its wheels may carry.
GLIBC = {"bookworm": 36, "trixie": 41, "forky": 43}

#: Shared libraries a ``--python-from`` CPython may need from outside itself
#: -> Debian packages that provide them, first the name of newer suites (the
#: 64-bit time_t transition renamed some). A library missing here stops the build.
SONAME_PACKAGES: dict[str, tuple[str, ...]] = {
    "libc.so.6": ("libc6",),
    "libm.so.6": ("libc6",),
    "libpthread.so.0": ("libc6",),
    "libdl.so.2": ("libc6",),
    "librt.so.1": ("libc6",),
    "libutil.so.1": ("libc6",),
    "ld-linux-x86-64.so.2": ("libc6",),
    "ld-linux-aarch64.so.1": ("libc6",),
    "ld-linux-armhf.so.3": ("libc6",),
    "libgcc_s.so.1": ("libgcc-s1",),
    "libstdc++.so.6": ("libstdc++6",),
    "libz.so.1": ("zlib1g",),
    "libbz2.so.1.0": ("libbz2-1.0",),
    "liblzma.so.5": ("liblzma5",),
    "libzstd.so.1": ("libzstd1",),
    "libffi.so.8": ("libffi8",),
    "libssl.so.3": ("libssl3t64", "libssl3"),
    "libcrypto.so.3": ("libssl3t64", "libssl3"),
    "libsqlite3.so.0": ("libsqlite3-0",),
    "libuuid.so.1": ("libuuid1",),
    "libcrypt.so.1": ("libcrypt1",),
    "libexpat.so.1": ("libexpat1",),
    "libmpdec.so.3": ("libmpdec3",),
    "libmpdec.so.4": ("libmpdec4",),
}

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
    # narwhals too: bokeh imports it only for a data frame given as a data
    # source, and the recorded imports (every dashboard page, with pandas
    # installed) never saw it.
    "dataframe": frozenset({"pillow", "contourpy", "xyzservices", "narwhals"}),
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
SYSTEM_DEBS = ("libstdc++6", "tini", "netbase", "debian-archive-keyring")
#: The Python of a Debian-based image.
PYTHON_DEBS = ("python{v}-minimal", "libpython{v}-stdlib")
RUNTIME_DEBS = PYTHON_DEBS + SYSTEM_DEBS

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
    # LaTeX rendering: the dashboard has no MathText, so bokeh never sends it
    # (both bundles: without its .min.js twin the unminified one was kept).
    "usr/lib/python3/dist-packages/bokeh/server/static/js/bokeh-mathjax*.js",
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
    # Of a --python-from CPython: Tk, the C API's test modules, the
    # interpreter's other commands and what only building against it needs.
    "usr/lib/python3.*/lib-dynload/_tkinter*",
    "usr/lib/python3.*/lib-dynload/_test*",
    "usr/lib/python3.*/lib-dynload/_ctypes_test*",
    "usr/lib/python3.*/lib-dynload/_xxtestfuzz*",
    "usr/lib/python3.*/lib-dynload/xx*",
    "usr/lib/tcl*",
    "usr/lib/tk*",
    "usr/lib/itcl*",
    "usr/lib/thread2*",
    "usr/lib/libtcl*",
    "usr/lib/libtk*",
    "usr/lib/pkgconfig",
    "usr/lib/libpython3*.a",
    "usr/bin/2to3*",
    "usr/bin/idle*",
    "usr/bin/pip*",
    "usr/bin/python3*-config",
    "usr/bin/python-config",
    "usr/bin/python3*-gdb.py",
    "usr/lib/python3.*/curses",
    "usr/bin/tini-static",
    "usr/bin/pydoc*",
    "usr/bin/pygettext*",
    "usr/sbin",
    "etc/init.d",
    "etc/ld.so.conf.d",
    "etc/ssl",
    "etc/apt",
    # One keyring is enough: the one that holds every current archive key
    # (in trixie and later, debian-archive-keyring.gpg is a link to its .pgp).
    "usr/share/keyrings/debian-archive-[!k]*",
    "var",
)

#: Paths removed from flavors that cannot use them.
PRUNE_FLAVOR_GLOBS = {
    # dask.dataframe needs pandas and pyarrow, which only the dataframe flavor has.
    "default": ("usr/lib/python3/dist-packages/dask/dataframe",),
    # pyarrow's own S3 client (5.9 MB of gzip): dask reads S3 through fsspec
    # and s3fs (EXTRA_PIP_PACKAGES), and pyarrow.fs takes a missing _s3fs for
    # a pyarrow built without S3, as pyarrow's own builds without S3 are.
    "dataframe": (
        "usr/lib/python3/dist-packages/pyarrow/libarrow_s3.so*",
        "usr/lib/python3/dist-packages/pyarrow/_s3fs.*",
    ),
}

#: Trees left without bytecode. pip runs only when EXTRA_PIP_PACKAGES is set,
#: once per start; its bytecode would add 2 MB (gzip) to every image.
NO_BYTECODE = ("usr/lib/python3/dist-packages/pip/",)

#: Modules removed unless the recorded imports (image/recorded-imports.txt) name
#: them: tooling of the standard library that a scheduler or worker has no use
#: for, and numpy's extension modules that only its own test suite loads.
TRIM_MODULES = (
    "unittest", "doctest", "pydoc", "pdb", "xmlrpc", "wsgiref", "distutils", "venv",
    "mailbox", "imaplib", "nntplib", "smtplib", "smtpd", "ftplib", "poplib", "telnetlib",
    "cgi", "cgitb", "msilib", "tabnanny", "pyclbr", "trace", "timeit", "profile", "cProfile",
    "numpy._core._simd", "numpy._core._multiarray_tests", "numpy._core._umath_tests",
    "numpy._core._rational_tests", "numpy._core._struct_ufunc_tests",
    "numpy._core._operand_flag_tests",
)  # fmt: skip

#: Large libraries shipped as bytecode only, their modules run or not: their
#: sources would cost 1.2 MB (numpy and bokeh) to 4 MB (pandas and pyarrow)
#: of gzip, for source lines in tracebacks that go deep into them.
SOURCELESS_PACKAGES = ("numpy", "bokeh", "pandas", "pyarrow")

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
    """One platform of one build: where its packages come from.

    ``standalone`` is set when the Python is not Debian's but a relocatable
    CPython given with ``--python-from``.
    """

    platform: str
    python: str
    suite: str
    arch: str
    triplet: str
    wheel_arch: str
    glibc_minor: int
    standalone: bool = False

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
        names = SYSTEM_DEBS if self.standalone else RUNTIME_DEBS
        return [name.format(v=self.python) for name in names]

    @property
    def python_source(self) -> str:
        """Where the image's Python comes from, in words: ``Debian trixie`` or ``--python-from``."""
        return "--python-from" if self.standalone else f"Debian {self.suite}"


def target(platform: str, python: str, standalone: bool = False) -> Target:
    """Return the build target of a platform and Python version, or raise ValueError.

    ``standalone``: the Python comes from ``--python-from`` (any 3.X), the
    libraries around it from Debian :data:`STANDALONE_SUITE`.
    """
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}: choose from {', '.join(PLATFORMS)}")
    arch, triplet, wheel_arch, pythons = PLATFORMS[platform]
    if standalone:
        if arch in NO_WHEEL:
            raise ValueError(
                f"--python-from cannot make an image for {platform}: PyPI has no {platform}"
                f" wheels of {', '.join(NO_WHEEL[arch][:3])}, ... and Debian builds them only"
                f" for its own Pythons; use --python {' or '.join(pythons)} for {platform}"
            )
        suite = STANDALONE_SUITE
        return Target(platform, python, suite, arch, triplet, wheel_arch, GLIBC[suite], True)
    if python not in PYTHONS:
        hint = (
            f"; Python {python} has no Debian build: give a relocatable CPython {python}"
            " with --python-from PATH"
            if python in STANDALONE_PYTHONS
            else ""
        )
        raise ValueError(f"unsupported Python {python!r}: choose from {', '.join(PYTHONS)}{hint}")
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


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def supported_pythons() -> dict[str, str]:
    """Python versions that have a published image -> where their Python comes from.

    >>> supported_pythons()["3.13"]
    'Debian trixie'
    """
    found = {v: f"Debian {suite}" for v, suite in PYTHONS.items()}
    found.update({v: "standalone CPython" for v in STANDALONE_PYTHONS})
    return dict(sorted(found.items(), key=lambda item: _version_key(item[0])))


def python_advice(python: str, repository: str, tag: str) -> str:
    """What a client on Python ``python`` can do when the image's Python differs.

    ``repository`` and ``tag`` name the image built for this client (the
    default ``<dask>-py<X.Y>`` tag). For a Python with a published image:
    use it. For one without: the versions that have one, and the two ways
    out (a client environment with one of those Pythons, or an image built
    with ``--python-from``).
    """
    pythons = supported_pythons()
    if python in pythons:
        return (
            f"Use the image built for this client, image={repository}:{tag} (the default),"
            " or run the client with the image's Python"
        )
    listed = ", ".join(pythons)
    return (
        f"There is no published image for Python {python}: images exist for Python {listed}."
        f" Either run the client in an environment with one of those Pythons, or build an"
        f" image for Python {python} around a relocatable CPython {python} for the nodes'"
        f" platform: minimaldask image build --python-from PATH --push {repository}:{tag}"
        " (PATH: an install prefix, or a standalone CPython archive python/bin/"
        f"python{python} ...)"
    )
