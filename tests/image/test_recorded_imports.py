"""Every module of the recorded imports (image/recorded-imports.txt) imports in the built image.

The builder trims and ships bytecode-only what the recording never saw; this
proves that nothing a scheduler, worker, janitor or the entrypoint imported
(dashboard pages included) was lost. The recording ran with pandas and
pyarrow: in the default flavor, a module may fail only because one of them
(or what only they need) is absent.
"""

import json

import pytest
from dockerutil import docker

from minimaldask.image.trim import recorded_modules

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# Recorded, but not part of any image by design.
NOT_IN_IMAGE = {
    "camelcase": "installed at start by EXTRA_PIP_PACKAGES in the recording",
    "sitecustomize": "the recorder itself",
    "__main__": "the script of a process",
    "__mp_main__": "the script of a process, under multiprocessing",
    "_distutils_hack": "setuptools' start-up hook of the recording environment",
    "attr": "attrs, in the recording environment for pytest; pip's rich imports it if present",
}
# Removed on purpose (recipe.PRUNE_FLAVOR_GLOBS): pyarrow.fs imports it if it is there.
PRUNED = {
    "pyarrow._s3fs": "pyarrow's S3 client; dask reads S3 through fsspec and s3fs",
    "curses": "pruned with ncurses (debian.NEVER_INSTALL); imported only if present",
    "_curses": "pruned with ncurses (debian.NEVER_INSTALL); imported only if present",
    "readline": "pruned with libreadline (debian.NEVER_INSTALL); pip imports it if present",
}
# pip's modules are those of the recording environment's pip, another release than the
# image's (the newest on the index): its vendored and legacy modules come and go.
OTHER_RELEASE = ("pip",)
# Only the dataframe flavor has these (recipe.FLAVORS, WHEEL_EXCLUDE).
DATAFRAME_ONLY = {"pandas", "pyarrow", "dateutil", "pytz", "tzdata", "six"}

IMPORT = r"""
import importlib, json, sys, warnings
warnings.simplefilter("ignore")
failed = {}
for name in json.load(sys.stdin):
    try:
        importlib.import_module(name)
    except BaseException as e:
        failed[name] = [type(e).__name__, str(e), getattr(e, "name", None)]
print(json.dumps(failed))
"""


@pytest.mark.parametrize("flavor", ["default", "dataframe"])
def test_every_recorded_module_imports_in_the_image(flavor, images, load):
    tag = load(images("linux/amd64", flavor))
    names = sorted(
        n
        for n in recorded_modules()
        if n.split(".")[0] not in NOT_IN_IMAGE
        and n not in PRUNED
        and n.split(".")[0] not in OTHER_RELEASE
    )
    assert len(names) > 500
    result = docker(
        "run", "--rm", "-i", "--entrypoint", "/usr/bin/python3", tag, "-c", IMPORT,
        input=json.dumps(names),
    )  # fmt: skip
    failed = json.loads(result.stdout)
    if flavor == "default":
        failed = {
            name: why
            for name, why in failed.items()
            if not (
                name.split(".")[0] in DATAFRAME_ONLY
                or name.startswith("dask.dataframe")
                or name == "dask._pandas_compat"
                or (
                    why[0] in ("ModuleNotFoundError", "ImportError")
                    and (why[2] or "").split(".")[0] in DATAFRAME_ONLY
                )
                or (why[0] == "ModuleNotFoundError" and (why[2] or "").startswith("dask.dataframe"))
            )
        }
    assert failed == {}
    if flavor == "dataframe":  # pyarrow.fs works without its S3 client
        check = "import pyarrow.fs; print(sorted(pyarrow.fs._not_imported))"
        out = docker("run", "--rm", "--entrypoint", "/usr/bin/python3", tag, "-c", check).stdout
        assert out.strip() == "['S3FileSystem']"
