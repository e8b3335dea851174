"""The container entrypoint: environment variables in, a dask scheduler or worker out.

The contract is the article's, done right (see :class:`minimaldask.contract.Launch`
and docs/entrypoint.md):

``WORKER``
    Set (to anything but ``""``, ``0``, ``false`` or ``no``): run a worker;
    otherwise a scheduler.
``PORT``
    The scheduler's port (default 8786).
``DASHBOARD_PORT``
    The scheduler's dashboard port (default 8787).
``ARGUMENTS``
    Extra options for ``dask scheduler`` / ``dask worker``, split like a shell
    would; they come last, so they override ours.
``DASK_SCHEDULER_ADDRESS``
    Where workers find the scheduler (default ``master-node:$PORT``, the
    article's Service name).
``EXTRA_PIP_PACKAGES``
    Installed at start with pip into a writable prefix
    (``MINIMALDASK_PREFIX``, default ``$TMPDIR/minimaldask``), so it works as
    a non-root user on a read-only root filesystem.
``EXTRA_OS_PACKAGES``
    Debian packages, fetched and unpacked at start into the same prefix.
``EXTRA_APK_PACKAGES``
    Alpine packages; only where ``apk`` exists.

A worker's nanny forks its worker process (``fork``) rather than spawning a new
interpreter that imports dask a second time (:func:`worker_env`).

The process replaces itself with dask (``exec``), so SIGTERM reaches dask and
shutdown is graceful. A bad value stops it with exit status 2 and one line
naming the variable. It runs in every pod: it imports the standard library
and :mod:`minimaldask.contract` only, nothing of the client.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from minimaldask.contract import NANNY_MODULE, ContractError, Launch, tls_env

#: The dask setting of how a nanny starts its worker process.
START_METHOD = "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"
#: Where a pod may set distributed's ``distributed.nanny.pre-spawn-environ`` values.
PRE_SPAWN = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__"
#: Variables read once, as a process starts or loads numpy (which distributed
#: imports): distributed's ``pre-spawn-environ`` defaults, set before it spawns a
#: worker process, and the hash seed its nanny gives that process. A forked worker
#: has its nanny's values: the nanny must start with them (a test compares them
#: with the installed distributed's).
PROCESS_START_ENV = {
    "PYTHONHASHSEED": "6640",
    "MALLOC_TRIM_THRESHOLD_": "65536",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


class EntrypointError(Exception):
    """A bad environment: the message is the one line the user sees."""


@dataclass(frozen=True)
class Plan:
    """What the entrypoint will do: packages to install, then the command to exec."""

    role: str
    argv: list[str]
    pip_packages: list[str] = field(default_factory=list)
    os_packages: list[str] = field(default_factory=list)
    apk_packages: list[str] = field(default_factory=list)
    prefix: str = ""
    #: Variables for the dask process (its TLS configuration; a worker's start method).
    env: dict[str, str] = field(default_factory=dict)


def plan(env: Mapping[str, str]) -> Plan:
    """Build the plan from an environment. Pure: raises :class:`EntrypointError`."""
    try:
        launch = Launch.from_env(env)
    except ContractError as e:
        raise EntrypointError(str(e)) from None
    python = [sys.executable, "-m"]
    tls = ["--protocol", "tls"] if launch.tls_dir else []
    if launch.worker:
        # The nanny registers as soon as its scheduler answers (pod/nanny.py). Added here,
        # in the image that has the module, not by the client: a newer client with an
        # older image of the same dask would name a module the image lacks.
        nanny = ["--preload-nanny", NANNY_MODULE]
        argv = [*python, "distributed.cli.dask_worker", launch.scheduler_address, *tls, *nanny]
    else:
        argv = [
            *python,
            "distributed.cli.dask_scheduler",
            "--port",
            str(launch.port),
            "--dashboard-address",
            f":{launch.dashboard_port}",
            *tls,
        ]
    return Plan(
        role="worker" if launch.worker else "scheduler",
        argv=[*argv, *launch.arguments],
        pip_packages=list(launch.pip_packages),
        os_packages=list(launch.os_packages),
        apk_packages=list(launch.apk_packages),
        prefix=launch.prefix,
        env={
            **(tls_env(launch.tls_dir) if launch.tls_dir else {}),
            **(worker_env(env) if launch.worker else {}),
        },
    )


def worker_env(env: Mapping[str, str]) -> dict[str, str]:
    """What a worker's nanny starts with so that it can fork its worker process.

    distributed's default (``spawn``) starts a new interpreter that imports dask
    again: measured as local processes, 0.63 s of CPU for a worker's processes
    against 0.35 s forked, 1.75 s to connected against 0.87 s, 145 MiB against
    122 (docs/performance.md); on a node, every new pod imports dask at once. A
    forked worker has its nanny's modules at once. What a spawned worker would
    have had is kept: the hash seed (every worker hashes strings alike, as
    distributed's spawned workers do), glibc's trim threshold and the BLAS thread
    counts are read as a process starts or loads numpy, which the nanny has done,
    so the nanny starts with them (:data:`PROCESS_START_ENV`: distributed's values
    unless the pod sets its own). A pod that sets
    ``DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD`` is left as it is.
    """
    if env.get(START_METHOD, "fork") != "fork":
        return {}
    out = {START_METHOD: "fork"}
    for name, default in PROCESS_START_ENV.items():
        given = env.get(name) or env.get(PRE_SPAWN + name)
        if name == "PYTHONHASHSEED" and given == "0":  # as distributed's nanny does
            given = None
        out[name] = given or default
    return out


def _prepend(env: dict[str, str], name: str, path: str) -> None:
    env[name] = path + (os.pathsep + env[name] if env.get(name) else "")


def site_packages(prefix: str) -> str:
    """Where ``pip install --prefix`` puts modules for this Python."""
    v = sys.version_info
    return os.path.join(prefix, "lib", f"python{v.major}.{v.minor}", "site-packages")


def install_pip(packages: Sequence[str], prefix: str, env: dict[str, str]) -> None:
    """Install ``packages`` with pip into ``prefix`` and put them on the paths in ``env``.

    Packages the image already has are kept, not installed again.
    """
    print(f"minimaldask: installing EXTRA_PIP_PACKAGES: {' '.join(packages)}", flush=True)
    cmd = [
        sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
        "--no-input", "--no-warn-script-location", "--prefix", prefix, *packages,
    ]  # fmt: skip
    pip_env = {**env, "PIP_CACHE_DIR": os.path.join(prefix, "pip-cache")}
    result = subprocess.run(cmd, env=pip_env, capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        reason = errors[0] if errors else (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise EntrypointError(
            f"EXTRA_PIP_PACKAGES={' '.join(packages)!r} could not be installed: {reason}"
        )
    _prepend(env, "PYTHONPATH", site_packages(prefix))
    _prepend(env, "PATH", os.path.join(prefix, "bin"))


def install_apk(packages: Sequence[str]) -> None:
    """Install Alpine packages with apk, which only an Alpine image has."""
    if shutil.which("apk") is None:
        raise EntrypointError(
            "EXTRA_APK_PACKAGES is set but this image is not Alpine (there is no apk); "
            "it is Debian-based: list Debian package names in EXTRA_OS_PACKAGES instead"
        )
    print(f"minimaldask: installing EXTRA_APK_PACKAGES: {' '.join(packages)}", flush=True)
    result = subprocess.run(["apk", "add", "--no-cache", *packages], capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise EntrypointError(f"EXTRA_APK_PACKAGES could not be installed: {reason}")


def install_os(packages: Sequence[str], prefix: str, env: dict[str, str]) -> None:
    """Fetch Debian packages into ``prefix`` and put them on the paths in ``env``.

    Only in an image built by ``minimaldask image build``, which records its
    Debian suite, architecture and archive (see :mod:`minimaldask.image.debian`).
    """
    from minimaldask.exceptions import MinimalDaskError
    from minimaldask.image.debian import install_runtime_packages  # only when asked: it is big

    print(f"minimaldask: installing EXTRA_OS_PACKAGES: {' '.join(packages)}", flush=True)
    try:
        env.update(install_runtime_packages(list(packages), prefix, environ=env))
    except MinimalDaskError as e:
        raise EntrypointError(
            f"EXTRA_OS_PACKAGES={' '.join(packages)!r} could not be installed: {e}"
        ) from None


def prepare(p: Plan, env: dict[str, str]) -> None:
    """Install the extra packages the plan asks for, updating ``env`` for the dask process."""
    env.update(p.env)
    if p.apk_packages:
        install_apk(p.apk_packages)
    if p.os_packages or p.pip_packages:
        os.makedirs(p.prefix, exist_ok=True)
    # OS packages first: pip packages may need their libraries.
    if p.os_packages:
        install_os(p.os_packages, p.prefix, env)
    if p.pip_packages:
        install_pip(p.pip_packages, p.prefix, env)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the entrypoint: validate, install extras, exec dask. Never returns on success."""
    env = dict(os.environ)
    try:
        p = plan(env)
        prepare(p, env)
    except EntrypointError as e:
        print(f"minimaldask-entrypoint: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    extra = list(argv if argv is not None else sys.argv[1:])
    print(f"minimaldask: starting the {p.role}: {shlex.join(p.argv[2:] + extra)}", flush=True)
    os.execve(p.argv[0], p.argv + extra, env)


if __name__ == "__main__":
    main()
