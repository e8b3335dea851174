"""The contract between the client and the code that runs in the pods.

Every fact that both sides need is written here once: the names and labels
of a cluster's objects, the keys of its janitor's ConfigMap, the handlers the
janitor adds to the scheduler, and the environment of the entrypoint and of
the janitor, each with its encoding (client side) and decoding (pod side)
next to each other.

Imported by the client and by the pod alike, so it imports nothing but the
standard library.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# -- the objects of a cluster -------------------------------------------------------------------

#: ``app.kubernetes.io/name`` of every object of every cluster.
APP = "minimaldask"
#: ``app.kubernetes.io/managed-by`` of every object we make.
MANAGER = "minimaldask"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
SCHEDULER = "scheduler"
WORKER = "worker"


def scheduler_name(cluster: str) -> str:
    """Name of the scheduler's Deployment, Service and ServiceAccount."""
    return f"{cluster}-{SCHEDULER}"


def worker_name(cluster: str) -> str:
    """Name of the workers' Deployment."""
    return f"{cluster}-{WORKER}"


def janitor_name(cluster: str) -> str:
    """Name of the janitor's Role and RoleBinding."""
    return f"{cluster}-janitor"


def root_name(cluster: str) -> str:
    """Name of the cluster's root object, the ConfigMap that owns every other object.

    Created first, with a create that fails if it exists: of two processes that
    start the same cluster at once, exactly one creates it. Deleting it deletes
    the cluster (the garbage collector takes what it owns). It holds the
    janitor's report and saved clocks, and the adaptive policy.
    """
    return f"{cluster}-cluster"


def selector(cluster: str | None = None, component: str | None = None) -> dict[str, str]:
    """Labels that select the objects of ``cluster`` (every cluster's without it)."""
    labels = {LABEL_NAME: APP}
    if cluster:
        labels[LABEL_INSTANCE] = cluster
    if component:
        labels[LABEL_COMPONENT] = component
    return labels


def label_selector(cluster: str | None = None, component: str | None = None) -> str:
    """:func:`selector` as a ``labelSelector`` query."""
    return ",".join(f"{k}={v}" for k, v in selector(cluster, component).items())


def cluster_of(labels: Mapping[str, str]) -> str:
    """The cluster an object belongs to, from its labels ("" if none)."""
    return labels.get(LABEL_INSTANCE, "")


# -- ports, paths, modules -----------------------------------------------------------------------

DEFAULT_PORT = 8786
DEFAULT_DASHBOARD_PORT = 8787
#: Port of each worker's HTTP server (``/health``, metrics).
WORKER_HTTP_PORT = 8788
#: The one writable directory of a pod's read-only root filesystem.
TMP_DIR = "/tmp"
#: The image's user; set explicitly so that ``runAsNonRoot`` can be verified.
IMAGE_UID = 1000
#: What the image runs: ``python -m ENTRYPOINT_MODULE``.
ENTRYPOINT_MODULE = "minimaldask.pod.entrypoint"
#: The scheduler preload: heartbeats, usage, retirement, adaptive scaling.
PLUGIN_MODULE = "minimaldask.pod.plugin"
#: The worker preload: readiness, the retired flag, the drain before a pod stops.
WORKER_MODULE = "minimaldask.pod.worker"
#: The nanny preload: the nanny registers as soon as its scheduler answers.
NANNY_MODULE = "minimaldask.pod.nanny"
#: The janitor, beside the scheduler in its pod: ends the cluster, holds its rights.
JANITOR_MODULE = "minimaldask.pod.janitor"
#: The worker pod's preStop hook.
DRAIN_MODULE = "minimaldask.pod.drain"
#: Where the janitor listens for its scheduler, on the pod's loopback only.
JANITOR_PORT = 8789
#: The worker's readiness route (on WORKER_HTTP_PORT).
READY_PATH = "/minimaldask/ready"
#: The worker's drain route, called by its pod's preStop hook.
DRAIN_PATH = "/minimaldask/drain"
#: Where the kubelet mounts a pod's service account token and the cluster's CA.
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Where workers look for the scheduler by default: the article's Service name.
DEFAULT_SCHEDULER_HOST = "master-node"

# -- the janitor's handlers in the scheduler -----------------------------------------------------

#: A MinimalCluster handle says it is alive; the answer says whether the cluster is ending.
HEARTBEAT = "minimaldask_heartbeat"
#: Resource usage so far.
USAGE = "minimaldask_usage"
#: Set (or clear) the adaptive policy.
ADAPT = "minimaldask_adapt"
#: Retire workers the scheduler chooses, with a deadline (undone if it passes).
RETIRE = "minimaldask_retire"
#: The state of the workers for a scale-down: running ones, and retired ones.
WORKERS = "minimaldask_workers"
#: A worker whose pod stops asks for its data to be moved (its preStop hook).
DRAIN = "minimaldask_drain"
#: The cluster is being deleted: workers that stop need not hand their data over.
CLOSING = "minimaldask_closing"
#: Worker handlers: retired by minimaldask (its pod reports not ready), or not any more.
WORKER_RETIRED = "minimaldask_retired"
WORKER_UNRETIRED = "minimaldask_unretired"
#: Worker handler: the keys it is executing now (a retired worker's results move once they end).
WORKER_EXECUTING = "minimaldask_executing"
#: A MinimalCluster handle counts as a client while its heartbeats are this recent (seconds).
HANDLE_TTL = 10.0

# -- the cluster's root ConfigMap (root_name) -------------------------------------------------------

#: Key where the janitor reports what ``minimaldask list`` shows (JSON).
STATE_STATUS = "status"
#: Key that stores the adaptive policy (JSON), so that it survives a scheduler restart.
STATE_ADAPT = "adapt"
#: Key that says whether the cluster speaks TLS ("true" or "false"): a handle that
#: attaches while its creator still makes it waits for the certificates.
STATE_TLS = "tls"
#: Key that records what shapes the cluster (a digest per option), to tell a handle that
#: attaches with other options which ones differ.
STATE_OPTIONS = "options"
#: How often the janitor refreshes its report, in seconds.
STATUS_INTERVAL = 15.0


def encode_policy(policy: Mapping[str, Any] | None) -> str | None:
    """The adaptive policy as stored in the janitor's ConfigMap (None removes it)."""
    return None if policy is None else json.dumps(dict(policy), sort_keys=True)


def decode_policy(value: str | None) -> dict[str, Any] | None:
    """The stored adaptive policy, or None; a malformed value raises ValueError."""
    if not value:
        return None
    policy = json.loads(value)
    if policy is not None and not isinstance(policy, dict):
        raise ValueError(f"an adaptive policy is a JSON object, not {value!r}")
    return policy


def encode_status(status: Mapping[str, Any]) -> str:
    """The janitor's report as stored in its ConfigMap."""
    return json.dumps(dict(status), sort_keys=True)


def decode_status(value: str) -> dict[str, Any]:
    """The janitor's stored report; a malformed one raises ValueError."""
    status = json.loads(value)
    if not isinstance(status, dict):
        raise ValueError(f"the janitor's report is a JSON object, not {value!r}")
    return status


# -- environment ---------------------------------------------------------------------------------


class ContractError(ValueError):
    """A variable of the environment has a bad value; the message names it and the fix."""


_FALSE = ("", "0", "false", "no", "off")


def _split(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(env.get(name, "")))
    except ValueError as e:
        raise ContractError(f"{name} could not be split like a shell would: {e}") from None


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ContractError(
            f"{name}={raw!r} is not a port number; use 1-65535, e.g. {name}={default}"
        )
    return int(raw)


def _seconds(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ContractError(f"{name}={raw!r} is not a number of seconds") from None
    return value if value > 0 and math.isfinite(value) else None


def _format_seconds(value: float | None) -> str:
    return f"{value:g}" if value else ""


@dataclass(frozen=True)
class Launch:
    """What the entrypoint starts: the environment variables of the image, decoded.

    ``WORKER`` (set: a worker, else a scheduler), ``PORT``, ``DASHBOARD_PORT``,
    ``ARGUMENTS`` (extra dask options, shell-split), ``DASK_SCHEDULER_ADDRESS``,
    ``EXTRA_PIP_PACKAGES``, ``EXTRA_OS_PACKAGES``, ``EXTRA_APK_PACKAGES`` and
    ``MINIMALDASK_PREFIX`` (where extra packages go) and ``MINIMALDASK_TLS_DIR``
    (the cluster's certificates: :func:`tls_files`; the dask process then
    speaks only TLS, with mutual authentication). See docs/entrypoint.md.
    """

    worker: bool = False
    port: int = DEFAULT_PORT
    dashboard_port: int = DEFAULT_DASHBOARD_PORT
    arguments: tuple[str, ...] = ()
    scheduler_address: str = ""
    pip_packages: tuple[str, ...] = ()
    os_packages: tuple[str, ...] = ()
    apk_packages: tuple[str, ...] = ()
    prefix: str = ""
    tls_dir: str = ""

    def to_env(self) -> dict[str, str]:
        """The variables that make the entrypoint start this (unset ones are left out)."""
        env: dict[str, str] = {"PORT": str(self.port)}
        if self.worker:
            env["WORKER"] = "1"
            if self.scheduler_address:
                env["DASK_SCHEDULER_ADDRESS"] = self.scheduler_address
        else:
            env["DASHBOARD_PORT"] = str(self.dashboard_port)
        for name, packages in (
            ("EXTRA_PIP_PACKAGES", self.pip_packages),
            ("EXTRA_OS_PACKAGES", self.os_packages),
            ("EXTRA_APK_PACKAGES", self.apk_packages),
        ):
            if packages:
                env[name] = shlex.join(packages)
        if self.prefix:
            env["MINIMALDASK_PREFIX"] = self.prefix
        if self.tls_dir:
            env["MINIMALDASK_TLS_DIR"] = self.tls_dir
        env["ARGUMENTS"] = shlex.join(self.arguments)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Launch:
        """Decode the variables; a bad one raises :class:`ContractError` naming it."""
        port = _port(env, "PORT", DEFAULT_PORT)
        worker = env.get("WORKER", "").strip().lower() not in _FALSE
        address = ""
        if worker:
            address = (
                env.get("DASK_SCHEDULER_ADDRESS", "").strip() or f"{DEFAULT_SCHEDULER_HOST}:{port}"
            )
            if any(c.isspace() for c in address):
                raise ContractError(
                    f"DASK_SCHEDULER_ADDRESS={address!r} is not an address; use host:port or "
                    "tcp://host:port"
                )
        prefix = env.get("MINIMALDASK_PREFIX", "").strip() or os.path.join(
            env.get("TMPDIR", "") or tempfile.gettempdir(), "minimaldask"
        )
        return cls(
            worker=worker,
            port=port,
            dashboard_port=_port(env, "DASHBOARD_PORT", DEFAULT_DASHBOARD_PORT),
            arguments=_split(env, "ARGUMENTS"),
            scheduler_address=address,
            pip_packages=_split(env, "EXTRA_PIP_PACKAGES"),
            os_packages=_split(env, "EXTRA_OS_PACKAGES"),
            apk_packages=_split(env, "EXTRA_APK_PACKAGES"),
            prefix=prefix,
            tls_dir=env.get("MINIMALDASK_TLS_DIR", "").strip(),
        )


@dataclass(frozen=True)
class JanitorSettings:
    """The janitor's settings, carried by the scheduler's environment.

    ``MINIMALDASK_CLUSTER_NAME``, ``MINIMALDASK_NAMESPACE`` (empty outside
    Kubernetes), ``MINIMALDASK_IDLE_TIMEOUT``, ``MINIMALDASK_NO_CLIENT_TIMEOUT``,
    ``MINIMALDASK_MAX_LIFETIME`` (seconds; empty is off),
    ``MINIMALDASK_JANITOR_INTERVAL`` (seconds between two looks) and
    ``MINIMALDASK_JANITOR_PORT`` (where the janitor beside the scheduler listens).
    """

    cluster: str = ""
    namespace: str = ""
    idle_timeout: float | None = None
    no_client_timeout: float | None = None
    max_lifetime: float | None = None
    interval: float = 1.0
    #: Where the janitor beside the scheduler listens (Kubernetes with a janitor only).
    janitor_port: int | None = None

    #: The variable that carries the namespace (set from the pod's metadata on Kubernetes).
    NAMESPACE_VARIABLE = "MINIMALDASK_NAMESPACE"

    def to_env(self) -> dict[str, str]:
        """The variables, as the client sets them."""
        env = {
            "MINIMALDASK_CLUSTER_NAME": self.cluster,
            "MINIMALDASK_IDLE_TIMEOUT": _format_seconds(self.idle_timeout),
            "MINIMALDASK_NO_CLIENT_TIMEOUT": _format_seconds(self.no_client_timeout),
            "MINIMALDASK_MAX_LIFETIME": _format_seconds(self.max_lifetime),
        }
        if self.interval != 1.0:
            env["MINIMALDASK_JANITOR_INTERVAL"] = _format_seconds(self.interval)
        if self.janitor_port:
            env["MINIMALDASK_JANITOR_PORT"] = str(self.janitor_port)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> JanitorSettings:
        """The settings the variables carry; missing ones are off."""
        return cls(
            cluster=env.get("MINIMALDASK_CLUSTER_NAME", ""),
            namespace=env.get(cls.NAMESPACE_VARIABLE, ""),
            idle_timeout=_seconds(env, "MINIMALDASK_IDLE_TIMEOUT"),
            no_client_timeout=_seconds(env, "MINIMALDASK_NO_CLIENT_TIMEOUT"),
            max_lifetime=_seconds(env, "MINIMALDASK_MAX_LIFETIME"),
            interval=_seconds(env, "MINIMALDASK_JANITOR_INTERVAL") or 1.0,
            janitor_port=_port(env, "MINIMALDASK_JANITOR_PORT", 0) or None,
        )


#: Variables the pods' environment carries for us; the user's ``env`` may not set them.
RESERVED_VARIABLES = {
    "WORKER": "minimaldask runs scheduler and workers itself",
    "PORT": "use port=...",
    "DASHBOARD_PORT": "use dashboard_port=...",
    "ARGUMENTS": "use scheduler_options=... or worker_options=...",
    "DASK_SCHEDULER_ADDRESS": "workers find their own scheduler",
    "EXTRA_PIP_PACKAGES": "use pip_packages=...",
    "EXTRA_OS_PACKAGES": "use os_packages=...",
    "EXTRA_APK_PACKAGES": "use apk_packages=...",
    "POD_NAME": "each worker is named after its pod",
}
#: Any variable with this prefix is ours too (the janitor's settings, the package prefix).
RESERVED_PREFIX = "MINIMALDASK_"


def reserved_variable(name: str) -> str | None:
    """Why ``name`` may not be set by the user (what to use instead), or None if it may."""
    if name in RESERVED_VARIABLES:
        return RESERVED_VARIABLES[name]
    if name.startswith(RESERVED_PREFIX):
        return f"variables starting with {RESERVED_PREFIX} are minimaldask's own"
    return None


# -- TLS -----------------------------------------------------------------------------------------

#: Where the pods mount the cluster's certificates (the Secret tls_name).
TLS_DIR = "/etc/minimaldask/tls"
#: The files of a cluster's certificates: its CA, and the certificate and key its scheduler
#: and workers share. The client's own certificate and key stay in the Secret only.
TLS_CA, TLS_CERT, TLS_KEY = "ca.crt", "tls.crt", "tls.key"
TLS_CLIENT_CERT, TLS_CLIENT_KEY = "client.crt", "client.key"


def network_policy_name(cluster: str) -> str:
    """Name of the NetworkPolicy that guards the cluster's scheduler and workers."""
    return f"{cluster}-network"


def tls_name(cluster: str) -> str:
    """Name of the Secret that holds the cluster's CA, certificates and keys."""
    return f"{cluster}-tls"


def tls_env(tls_dir: str) -> dict[str, str]:
    """Dask's configuration, as environment variables, for TLS with the files in ``tls_dir``.

    Every role (scheduler, worker, and a client inside the cluster) uses the
    cluster's certificate; every connection must be TLS and both ends must
    show a certificate signed by the cluster's CA.
    """
    ca, cert, key = (os.path.join(tls_dir, f) for f in (TLS_CA, TLS_CERT, TLS_KEY))
    env = {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": ca,
    }
    for role in ("SCHEDULER", "WORKER", "CLIENT"):
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] = cert
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] = key
    return env


def scheme(tls: bool) -> str:
    """``tls://`` or ``tcp://``."""
    return "tls://" if tls else "tcp://"


# -- the dask command lines ----------------------------------------------------------------------


#: Options of ``dask worker`` that minimaldask sets: the user's may not, and what to use instead.
MANAGED_WORKER_OPTIONS = {
    "--nworkers": "minimaldask runs one worker per pod (or process): use workers=N",
    "--nprocs": "minimaldask runs one worker per pod (or process): use workers=N",
    "--name": "each worker is named after its pod",
    "--dashboard-address": "the worker's HTTP port is part of the pod's probes",
    "--death-timeout": "use death_timeout=...",
}
#: Options of ``dask scheduler`` that minimaldask sets.
MANAGED_SCHEDULER_OPTIONS = {
    "--port": "use port=...",
    "--dashboard-address": "use dashboard_port=...",
    "--idle-timeout": "use idle_timeout=...: the janitor then ends the whole cluster, "
    "not only its scheduler",
    "--host": "the scheduler listens where its pod (or this machine) can be reached",
}


def managed_option(arguments: Sequence[str], managed: Mapping[str, str]) -> tuple[str, str] | None:
    """The first of ``arguments`` that sets one of ``managed`` options, and why it may not."""
    for argument in arguments:
        flag = argument.split("=", 1)[0]
        if flag in managed:
            return flag, managed[flag]
    return None


def scheduler_arguments(extra: Sequence[str] = ()) -> list[str]:
    """Options of ``dask scheduler``: the plugin, then the user's."""
    return ["--preload", PLUGIN_MODULE, *extra]


def worker_arguments(
    name: str,
    nthreads: int,
    death_timeout: float,
    memory_limit: int | None,
    extra: Sequence[str] = (),
) -> list[str]:
    """Options of ``dask worker``: name, threads, memory, patience, and our preload.

    The preload answers the readiness probe, takes the retired flag and drains
    the worker before its pod stops (:mod:`minimaldask.pod.worker`). The nanny's
    preload (:data:`NANNY_MODULE`) is the image's entrypoint's to add.
    """
    arguments = [
        "--name", name,
        "--nthreads", str(nthreads),
        "--death-timeout", f"{death_timeout:g}s",
        "--preload", WORKER_MODULE,
    ]  # fmt: skip
    if memory_limit:
        arguments += ["--memory-limit", str(memory_limit)]
    return [*arguments, *extra]
