"""ClusterSpec: every option of a cluster, validated before anything is created.

Defaults come from dask config (``minimaldask.yaml``) through
:mod:`minimaldask.config`. Every invalid option raises a :class:`ValueError`
that names the option, the value given and what would be valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.metadata
import json
import math
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dask.utils import parse_timedelta

from minimaldask import config, contract
from minimaldask.backend import BACKENDS
from minimaldask.kubernetes.expose import EXPOSURES
from minimaldask.options import Flag, markdown_table, option, options_of

PULL_POLICIES = ("Always", "IfNotPresent", "Never")
# NAME-scheduler must fit in a 63-character DNS label.
MAX_NAME_LENGTH = 53
#: Less memory than this cannot run a dask process (and usually means a wrong suffix).
MIN_MEMORY = 16 * 2**20

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
# A Kubernetes quantity: a decimal number with an optional suffix.
_QUANTITY = re.compile(
    r"^(?P<num>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>[a-zA-Z]*|[eE][-+]?[0-9]+)$"
)
_SUFFIXES = {
    "": 1.0,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}
_QUANTITY_HELP = "a Kubernetes quantity such as '500m' or '2' for cpu, '512Mi' or '4Gi' for memory"


def _invalid(option: str, value: Any, valid: str) -> ValueError:
    return ValueError(f"invalid {option}={value!r}: {valid}")


def parse_quantity(value: str | int | float, option: str = "quantity") -> float:
    """Parse a Kubernetes quantity (``"500m"``, ``"4Gi"``, ``2``) to a number.

    Raises :class:`ValueError` naming ``option`` when ``value`` is malformed.
    """
    if isinstance(value, bool):
        raise _invalid(option, value, f"expected {_QUANTITY_HELP}")
    if isinstance(value, (int, float)):
        if value < 0 or not math.isfinite(value):
            raise _invalid(option, value, f"expected a non-negative {_QUANTITY_HELP}")
        return float(value)
    if not isinstance(value, str):
        raise _invalid(option, value, f"expected {_QUANTITY_HELP}")
    match = _QUANTITY.match(value.strip())
    if not match:
        raise _invalid(option, value, f"expected {_QUANTITY_HELP}")
    number = float(match["num"])
    suffix = match["suffix"]
    if suffix[:1] in ("e", "E") and suffix[1:].lstrip("+-").isdigit():
        return number * 10.0 ** int(suffix[1:])
    if suffix not in _SUFFIXES:
        raise _invalid(
            option,
            value,
            f"unknown suffix {suffix!r}; use one of m, k, M, G, T, Ki, Mi, Gi, Ti "
            f"({_QUANTITY_HELP})",
        )
    return number * _SUFFIXES[suffix]


def split_packages(value: str | Iterable[str] | None, option: str) -> tuple[str, ...]:
    """Normalise a package list: the article's space-separated string or a list."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    try:
        items = list(value)
    except TypeError:
        raise _invalid(option, value, "expected a space-separated string or a list") from None
    packages: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise _invalid(option, value, "every package must be a string")
        packages.extend(item.split())
    return tuple(packages)


def parse_timeout(value: Any, option: str, allow_none: bool = True) -> float | None:
    """Seconds from ``"30 minutes"``, ``"90s"``, ``120`` or ``None`` (off)."""
    if (
        value is None
        or value is False
        or (isinstance(value, str) and value.lower() in ("", "off", "none"))
    ):
        if allow_none:
            return None
        raise _invalid(option, value, "a timeout is required here, such as '120s' or '5 minutes'")
    try:
        seconds = parse_timedelta(value, default="seconds")
    except (ValueError, KeyError, TypeError):
        raise _invalid(
            option, value, "expected a duration such as 300, '90s', '5 minutes' or '1h'"
        ) from None
    if seconds is None or seconds < 0:
        raise _invalid(option, value, "expected a positive duration such as '90s' or '5 minutes'")
    if seconds == 0:
        if allow_none:
            return None
        raise _invalid(option, value, "expected a positive duration such as '90s' or '5 minutes'")
    return float(seconds)


@dataclass(frozen=True)
class Resources:
    """Requests and limits of one container, as Kubernetes quantities."""

    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)

    @property
    def cpu(self) -> float | None:
        """CPU cores (limit if set, else request)."""
        value = self.limits.get("cpu", self.requests.get("cpu"))
        return None if value is None else parse_quantity(value)

    @property
    def memory(self) -> int | None:
        """Memory in bytes (limit if set, else request)."""
        value = self.limits.get("memory", self.requests.get("memory"))
        return None if value is None else int(parse_quantity(value))

    @property
    def nthreads(self) -> int:
        """Threads a dask worker of this size should run: its cores, at least 1."""
        cpu = self.cpu
        return max(1, math.ceil(cpu - 1e-9)) if cpu else 1

    def to_kubernetes(self) -> dict[str, dict[str, str]]:
        """The ``resources`` field of a Kubernetes container."""
        out: dict[str, dict[str, str]] = {}
        if self.requests:
            out["requests"] = dict(self.requests)
        if self.limits:
            out["limits"] = dict(self.limits)
        return out

    @classmethod
    def parse(cls, value: Any, option: str) -> Resources:
        """Resources from ``{"cpu": "1", "memory": "4Gi"}`` or a Kubernetes dict.

        The short form requests ``cpu`` and sets ``memory`` as request and limit
        (a dask worker that exceeds its memory is better restarted by dask than
        killed by the kernel, and equal request and limit avoids eviction).
        """
        if isinstance(value, Resources):
            return value
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise _invalid(
                option,
                value,
                "expected a mapping such as {'cpu': '1', 'memory': '4Gi'} or "
                "{'requests': {...}, 'limits': {...}}",
            )
        if set(value) <= {"requests", "limits"} and value:
            requests = cls._quantities(value.get("requests") or {}, f"{option}['requests']")
            limits = cls._quantities(value.get("limits") or {}, f"{option}['limits']")
        else:
            requests = cls._quantities(value, option)
            limits = {k: v for k, v in requests.items() if k == "memory"}
        for name in set(requests) & set(limits):
            if parse_quantity(requests[name]) > parse_quantity(limits[name]):
                raise _invalid(
                    f"{option}[{name!r}]",
                    requests[name],
                    f"the request exceeds the limit {limits[name]!r}; lower the request",
                )
        return cls(requests=requests, limits=limits)

    @staticmethod
    def _quantities(value: Any, option: str) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise _invalid(option, value, "expected a mapping of resource name to quantity")
        out: dict[str, str] = {}
        for name, quantity in value.items():
            if not isinstance(name, str) or not _QUALIFIED_NAME.match(name):
                raise _invalid(
                    option, name, "resource names look like 'cpu', 'memory' or 'nvidia.com/gpu'"
                )
            if quantity is None:
                continue
            where = f"{option}[{name!r}]"
            number = parse_quantity(quantity, where)
            if name == "cpu" and number <= 0:
                raise _invalid(where, quantity, "expected more than 0 cores, e.g. '500m' or '2'")
            if name == "memory" and number < MIN_MEMORY:
                hint = (
                    f"; did you mean {quantity[:-1] + 'Mi'!r}? ('m' is a thousandth)"
                    if str(quantity).endswith("m")
                    else ""
                )
                raise _invalid(
                    where, quantity, f"expected at least 16Mi, e.g. '512Mi' or '4Gi'{hint}"
                )
            out[name] = str(quantity)
        return out


def default_image_tag() -> str:
    """The image tag that matches this client: ``<dask version>-py<major.minor>``."""
    return (
        f"{importlib.metadata.version('dask')}-py{sys.version_info.major}.{sys.version_info.minor}"
    )


def _dns_label(option: str, value: Any, max_length: int) -> str:
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        raise _invalid(
            option,
            value,
            "expected a DNS-1123 label: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, e.g. 'my-cluster'",
        )
    if len(value) > max_length:
        raise _invalid(
            option,
            value,
            f"{len(value)} characters is too long; at most {max_length}"
            + (" so that NAME-scheduler fits in 63" if option == "name" else ""),
        )
    return value


def _dns_subdomain(option: str, value: Any) -> str:
    if (
        not isinstance(value, str)
        or len(value) > 253
        or not all(_DNS_LABEL.match(label) for label in value.split("."))
    ):
        raise _invalid(
            option,
            value,
            "expected a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', "
            "e.g. 'registry-credentials' or 'team.registry'",
        )
    return value


def _workers(value: Any, option: str = "workers") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _invalid(option, value, "expected a whole number >= 0, e.g. workers=3")
    ceiling = config.get("max-workers")
    if value > ceiling:
        raise _invalid(
            option,
            value,
            f"at most {ceiling} (minimaldask.max-workers); to run more, raise it: "
            f"dask.config.set({{'minimaldask.max-workers': {value}}})",
        )
    return value


def _port(option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _invalid(option, value, "expected a port number between 1 and 65535")
    return value


def _required_timeout(option: str, value: Any) -> float:
    seconds = parse_timeout(value, option, allow_none=False)
    assert seconds is not None  # parse_timeout raised otherwise
    return seconds


def _env(value: Mapping[str, Any] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _invalid("env", value, "expected a mapping of variable name to value")
    out: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise _invalid("env", key, "variable names are letters, digits, '_', '-' and '.'")
        if (why := contract.reserved_variable(key)) is not None:
            raise _invalid("env", key, f"minimaldask sets this variable itself: {why}")
        if val is None:
            raise _invalid(f"env[{key!r}]", val, "expected a string value")
        out[key] = str(val)
    return out


def _string_map(option: str, value: Mapping[str, Any] | None, label_values: bool) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _invalid(option, value, "expected a mapping of string to string")
    out: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not _QUALIFIED_NAME.match(key) or len(key) > 316:
            raise _invalid(option, key, "keys look like 'name' or 'example.com/name'")
        if not isinstance(val, str):
            raise _invalid(f"{option}[{key!r}]", val, "expected a string value")
        if label_values and (len(val) > 63 or not _LABEL_VALUE.match(val)):
            raise _invalid(
                f"{option}[{key!r}]",
                val,
                "label values are at most 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit",
            )
        out[key] = val
    return out


_TOLERATION_OPERATORS = ("Exists", "Equal")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _tolerations(value: Iterable[Mapping[str, Any]] | None) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
    out = []
    for item in value:
        if not isinstance(item, Mapping) or not set(item) <= allowed:
            raise _invalid(
                "tolerations",
                item,
                "expected Kubernetes tolerations such as "
                "{'key': 'spot', 'operator': 'Exists', 'effect': 'NoSchedule'}",
            )
        if item.get("operator", "Equal") not in _TOLERATION_OPERATORS:
            raise _invalid(
                "tolerations[...]['operator']",
                item["operator"],
                f"expected one of {', '.join(map(repr, _TOLERATION_OPERATORS))}",
            )
        if item.get("effect", "") not in ("", *_TAINT_EFFECTS):
            raise _invalid(
                "tolerations[...]['effect']",
                item["effect"],
                f"expected one of {', '.join(map(repr, _TAINT_EFFECTS))} (or none: every effect)",
            )
        out.append(dict(item))
    return tuple(out)


def _quantity_at_least(option: str, value: Any, minimum: float) -> str:
    if parse_quantity(value, option) < minimum:
        raise _invalid(option, value, "expected at least 16Mi, e.g. '10Gi'")
    return str(value)


_PEER_KEYS = {"podSelector", "namespaceSelector", "ipBlock"}


def _peers(option: str, value: Any) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        value = [value]
    peers = []
    for peer in value:
        if not isinstance(peer, Mapping) or not peer or not set(peer) <= _PEER_KEYS:
            raise _invalid(
                option,
                peer,
                "expected NetworkPolicy peers: mappings of podSelector, namespaceSelector "
                "and/or ipBlock, e.g. {'namespaceSelector': {'matchLabels': "
                "{'kubernetes.io/metadata.name': 'jupyter'}}}",
            )
        peers.append(dict(peer))
    return tuple(peers)


def _patch(value: Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not set(value) <= {"scheduler", "worker", "service"}:
        raise _invalid(
            "patch",
            value,
            "expected {'scheduler': {...}, 'worker': {...}, 'service': {...}}: "
            "partial objects merged into the generated manifests",
        )
    return {k: dict(v) for k, v in value.items()}


def _options(option: str, value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Command-line options: a string split like a shell would, or a list."""
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as e:
            raise _invalid(option, value, f"could not split it like a shell would ({e})") from None
    return tuple(str(v) for v in value)


def client_versions() -> dict[str, str]:
    """The versions an image must match: dask, distributed and Python (major.minor)."""
    return {
        "dask": importlib.metadata.version("dask"),
        "distributed": importlib.metadata.version("distributed"),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


#: Options that do not shape the running pods: an attaching handle may differ in them.
_NOT_SHAPING = {
    "allow_from",
    "name",
    "namespace",
    "backend",
    "workers",
    "startup_timeout",
    "keep_on_failure",
    "allow_unsafe_patch",
    "expose",
}


def _image_default() -> str:
    return f"{config.get('image.repository')}:{config.get('image.tag') or default_image_tag()}"


def _choice(choices: Iterable[str]) -> Callable[[str, Any], str]:
    choices = tuple(choices)

    def parse(option: str, value: Any) -> str:
        if value not in choices:
            raise _invalid(option, value, f"expected one of {', '.join(map(repr, choices))}")
        return str(value)

    return parse


def _image(option: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise _invalid(option, value, "expected an image reference such as 'repo/name:tag'")
    return value


def _resources_default(role: str) -> Callable[[], dict[str, Any]]:
    return lambda: {"cpu": config.get(f"{role}.cpu"), "memory": config.get(f"{role}.memory")}


def _env_flag(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"invalid --env {item!r}: expected NAME=VALUE")
        env[key] = value
    return env


def _secrets(option: str, value: Any) -> tuple[str, ...]:
    return tuple(_dns_subdomain(option, s) for s in split_packages(value, option))


def _pip_packages(option: str, value: Any) -> tuple[str, ...]:
    packages = split_packages(value, option)
    for package in packages:
        if package.startswith("-"):
            raise _invalid(
                option,
                package,
                "expected package names or requirements such as 'pandas>=2'; pip options "
                "are not passed on (put an index URL in the image's pip configuration)",
            )
    return packages


def _dask_options(
    managed: Mapping[str, str], command: str
) -> Callable[[str, Any], tuple[str, ...]]:
    def parse(option: str, value: Any) -> tuple[str, ...]:
        arguments = _options(option, value)
        if (found := contract.managed_option(arguments, managed)) is not None:
            flag, why = found
            raise _invalid(option, shlex.join(arguments), f"minimaldask sets {flag} itself: {why}")
        if arguments:
            _check_with_dask(option, arguments, command)
        return arguments

    return parse


def _check_with_dask(option: str, arguments: tuple[str, ...], command: str) -> None:
    """Parse the options as ``dask worker`` or ``dask scheduler`` would, here, before any pod.

    A preload of the user's may take options of its own, which only it knows:
    options with ``--preload`` are left to dask in the pods.
    """
    if any(a.split("=", 1)[0] == "--preload" for a in arguments):
        return
    import click
    from distributed.cli import dask_scheduler, dask_worker

    if command == "worker":
        main, args = dask_worker.main, ["tcp://scheduler:8786", *arguments]
    else:
        main, args = dask_scheduler.main, list(arguments)
    try:
        main.make_context(f"dask {command}", args)
    except click.ClickException as e:
        raise _invalid(
            option, shlex.join(arguments), f"{e.format_message()} (see `dask {command} --help`)"
        ) from None


@dataclass(frozen=True)
class ClusterSpec:
    """Every option of one cluster, validated. Build it with :meth:`from_options`.

    Each field is declared once, with its config key, validator, help and flag:
    ``from_options``, the flags of ``minimaldask up`` and docs/options.md are
    made from these declarations.
    """

    name: str = option(
        "Cluster name; its objects are called NAME-scheduler and NAME-worker.",
        lambda o, v: _dns_label(o, v, MAX_NAME_LENGTH),
        key="name",
        flag=Flag(("name",), positional=True),
    )
    namespace: str = option(
        "Namespace the cluster lives in (Kubernetes).",
        lambda o, v: _dns_label(o, v, 63),
        key="namespace",
        flag=Flag(("-n", "--namespace")),
    )
    workers: int = option(
        "Number of workers.",
        lambda o, v: _workers(v, o),
        key="workers",
        flag=Flag(("--workers",), type=int),
    )
    backend: str = option(
        "Where the cluster runs: 'kubernetes' (pods) or 'local' (processes on this machine).",
        _choice(BACKENDS),
        key="backend",
    )
    image: str = option(
        "Image of the scheduler and workers; the default matches this client's dask and "
        "Python: REPOSITORY:DASK-pyX.Y.",
        _image,
        default=_image_default,
        default_keys=("image.repository", "image.tag"),
        flag=Flag(("--image",)),
    )
    image_pull_policy: str = option(
        "When the nodes pull the image: Always, IfNotPresent or Never.",
        _choice(PULL_POLICIES),
        key="image.pull-policy",
    )
    pip_packages: tuple[str, ...] = option(
        "Extra pip packages installed in each pod at start (a list, or space-separated).",
        lambda o, v: _pip_packages(o, v),
        flag=Flag(("--pip",), metavar="PACKAGES"),
    )
    os_packages: tuple[str, ...] = option(
        "Extra Debian packages unpacked in each pod at start.",
        lambda o, v: split_packages(v, o),
        flag=Flag(("--os-packages",), metavar="PACKAGES"),
    )
    apk_packages: tuple[str, ...] = option(
        "Alpine packages: only for an Alpine image of your own (ours is Debian-based).",
        lambda o, v: split_packages(v, o),
    )
    env: Mapping[str, str] = option(
        "Environment variables of the scheduler and workers.",
        lambda o, v: _env(v),
        flag=Flag(("--env",), metavar="NAME=VALUE", action="append", convert=_env_flag),
    )
    resources: Resources = option(
        "Resources of each worker: cpu sets --nthreads, memory --memory-limit.",
        lambda o, v: Resources.parse(v, o),
        default=_resources_default("worker"),
        default_keys=("worker.cpu", "worker.memory"),
    )
    scheduler_resources: Resources = option(
        "Resources of the scheduler.",
        lambda o, v: Resources.parse(v, o),
        default=_resources_default("scheduler"),
        default_keys=("scheduler.cpu", "scheduler.memory"),
    )
    port: int = option("The scheduler's port.", _port, key="port")
    dashboard_port: int = option("The dashboard's port.", _port, key="dashboard-port")
    expose: str = option(
        "How a client outside Kubernetes reaches the scheduler: "
        + "; ".join(f"'{name}': {mode.help}" for name, mode in EXPOSURES.items())
        + ".",
        _choice(EXPOSURES),
        key="expose",
        flag=Flag(("--expose",), metavar="MODE"),
    )
    idle_timeout: float | None = option(
        "The cluster deletes itself after this long with no task to run; None: never.",
        lambda o, v: parse_timeout(v, o),
        key="idle-timeout",
        nullable=True,
    )
    no_client_timeout: float | None = option(
        "The cluster deletes itself after this long with no client; None: never.",
        lambda o, v: parse_timeout(v, o),
        key="no-client-timeout",
        nullable=True,
    )
    max_lifetime: float | None = option(
        "The cluster deletes itself this long after it started, busy or not; None: never.",
        lambda o, v: parse_timeout(v, o),
        key="max-lifetime",
        nullable=True,
    )
    death_timeout: float = option(
        "A worker that has lost its scheduler exits after this long.",
        _required_timeout,
        key="death-timeout",
    )
    worker_grace_period: float | None = option(
        "Seconds a worker pod gets to hand its data to the others before it stops (deleted, "
        "evicted, a node drained or reclaimed); None: 30 s plus 1 s per 50 MB of its memory.",
        lambda o, v: parse_timeout(v, o),
        key="worker.grace-period",
        nullable=True,
    )
    startup_timeout: float = option(
        "Deadline for the start: the scheduler up and every worker connected.",
        _required_timeout,
        key="startup-timeout",
        flag=Flag(("--timeout",), metavar="DURATION"),
    )
    keep_on_failure: bool = option(
        "Keep the objects of a cluster that failed to start, for debugging.",
        lambda o, v: bool(v),
        key="keep-on-failure",
        flag=Flag(("--keep-on-failure",), action="store_true"),
    )
    node_selector: Mapping[str, str] = option(
        "Node labels the pods must run on.",
        lambda o, v: _string_map(o, v, label_values=True),
    )
    tolerations: tuple[Mapping[str, Any], ...] = option(
        "Kubernetes tolerations of the pods.", lambda o, v: _tolerations(v)
    )
    image_pull_secrets: tuple[str, ...] = option(
        "Secrets with the credentials of a private registry.", _secrets
    )
    annotations: Mapping[str, str] = option(
        "Annotations of every object and pod.",
        lambda o, v: _string_map(o, v, label_values=False),
    )
    labels: Mapping[str, str] = option(
        "Extra labels of every object and pod.",
        lambda o, v: _string_map(o, v, label_values=True),
    )
    patch: Mapping[str, Any] = option(
        "Partial objects merged into the generated ones: {'scheduler': ..., 'worker': ..., "
        "'service': ...}.",
        lambda o, v: _patch(v),
    )
    scheduler_options: tuple[str, ...] = option(
        "Extra options of dask scheduler.",
        _dask_options(contract.MANAGED_SCHEDULER_OPTIONS, "scheduler"),
    )
    worker_options: tuple[str, ...] = option(
        "Extra options of dask worker.", _dask_options(contract.MANAGED_WORKER_OPTIONS, "worker")
    )
    tls: bool | None = option(
        "TLS with mutual authentication between the client, the scheduler and the workers, "
        "with a CA of the cluster's own; None: on for Kubernetes, off for the local backend "
        "(loopback only).",
        lambda o, v: None if v is None else bool(v),
        key="tls",
        nullable=True,
        flag=Flag(("--no-tls",), action="store_const", const=False),
    )
    allow_from: tuple[Mapping[str, Any], ...] = option(
        "Who else may connect to the scheduler and workers on Kubernetes, as NetworkPolicy "
        "peers, e.g. [{'podSelector': {'matchLabels': {'app': 'jupyterhub'}}}]; the "
        "cluster's own pods always may.",
        lambda o, v: _peers(o, v),
    )
    tmp_size: str | None = option(
        "Size limit of each pod's /tmp, where workers spill and extra packages go (a worker "
        "that fills it is evicted alone); None: twice a worker's memory plus 1Gi, 2Gi for the "
        "scheduler.",
        lambda o, v: None if v is None else _quantity_at_least(o, v, MIN_MEMORY),
        key="tmp-size",
        nullable=True,
    )
    allow_unsafe_patch: bool = option(
        "Let patch weaken the pods' security (privileges, host namespaces, a writable root).",
        lambda o, v: bool(v),
        key="allow-unsafe-patch",
    )

    def __post_init__(self) -> None:
        if self.port == self.dashboard_port:
            raise _invalid(
                "dashboard_port",
                self.dashboard_port,
                f"the scheduler's port is {self.port} already; pick another, e.g. "
                f"dashboard_port={self.port + 1}",
            )

    @property
    def uses_tls(self) -> bool:
        """Whether the cluster speaks TLS (``tls``, or the backend's default)."""
        return self.backend == "kubernetes" if self.tls is None else self.tls

    @property
    def nthreads(self) -> int:
        """Threads per worker, from the worker's cpu."""
        return self.resources.nthreads

    @property
    def memory_limit(self) -> int | None:
        """Memory limit of a worker in bytes, from the worker's memory."""
        return self.resources.memory

    def fingerprint(self) -> dict[str, str]:
        """A digest of each option that shapes the pods: what an attaching handle compares."""
        return {
            f.name: hashlib.sha256(
                json.dumps(getattr(self, f.name), default=repr, sort_keys=True).encode()
            ).hexdigest()[:12]
            for f in dataclasses.fields(self)
            if f.name not in _NOT_SHAPING
        }

    def with_workers(self, workers: int) -> ClusterSpec:
        """A copy with another number of workers (validated)."""
        return replace(self, workers=_workers(workers))

    @classmethod
    def from_options(cls, **options: Any) -> ClusterSpec:
        """Validate every option, fill defaults from dask config, return the spec.

        Leaving an option out (or passing None) takes its configured default;
        timeouts accept seconds, strings such as ``"5 minutes"``, or ``None``
        (off). See docs/options.md for every option.
        """
        declared = options_of(cls)
        unknown = sorted(set(options) - {o.name for o in declared})
        if unknown:
            names = [o.name for o in declared]
            hints = []
            for u in unknown:
                close = difflib.get_close_matches(u, names, n=1)
                hints.append(f"{u!r} (did you mean {close[0]!r}?)" if close else repr(u))
            raise ValueError(
                f"unknown option {', '.join(hints)}; the options are: {', '.join(names)}"
            )
        values = {}
        for o in declared:
            value = options.get(o.name)
            if o.name not in options or (value is None and not o.nullable):
                value = config.get(o.key) if o.key else o.default()
            values[o.name] = o.parse(o.name, value)
        return cls(**values)


OPTIONS = options_of(ClusterSpec)


def options_table() -> str:
    """The table of docs/options.md: every option with its config key and shipped default."""
    return markdown_table(OPTIONS, config.shipped_defaults())
