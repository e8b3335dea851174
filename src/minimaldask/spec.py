"""ClusterSpec: every option of a cluster, validated before anything is created.

Defaults come from dask config (``minimaldask.yaml``) through
:mod:`minimaldask.config`. Every invalid option raises a :class:`ValueError`
that names the option, the value given and what would be valid.
"""

from __future__ import annotations

import importlib.metadata
import math
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dask.utils import parse_timedelta

from minimaldask import config

BACKENDS = ("kubernetes", "local")
EXPOSE_MODES = ("port-forward", "nodeport", "loadbalancer", "none")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
# NAME-scheduler must fit in a 63-character DNS label.
MAX_NAME_LENGTH = 53

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
            parse_quantity(quantity, f"{option}[{name!r}]")
            out[name] = str(quantity)
        return out


def default_image_tag() -> str:
    """The image tag that matches this client: ``<dask version>-py<major.minor>``."""
    return (
        f"{importlib.metadata.version('dask')}-py{sys.version_info.major}.{sys.version_info.minor}"
    )


@dataclass(frozen=True)
class ClusterSpec:
    """Every option of one cluster, validated. Build it with :meth:`from_options`."""

    name: str
    namespace: str
    workers: int
    backend: str
    image: str
    image_pull_policy: str
    pip_packages: tuple[str, ...]
    os_packages: tuple[str, ...]
    apk_packages: tuple[str, ...]
    env: Mapping[str, str]
    resources: Resources
    scheduler_resources: Resources
    port: int
    dashboard_port: int
    expose: str
    idle_timeout: float | None
    no_client_timeout: float | None
    max_lifetime: float | None
    death_timeout: float
    startup_timeout: float
    keep_on_failure: bool
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    image_pull_secrets: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    patch: Mapping[str, Any] = field(default_factory=dict)
    scheduler_options: tuple[str, ...] = ()
    worker_options: tuple[str, ...] = ()

    @property
    def nthreads(self) -> int:
        """Threads per worker, from the worker's cpu."""
        return self.resources.nthreads

    @property
    def memory_limit(self) -> int | None:
        """Memory limit of a worker in bytes, from the worker's memory."""
        return self.resources.memory

    def with_workers(self, workers: int) -> ClusterSpec:
        """A copy with another number of workers (validated)."""
        return replace(self, workers=_workers(workers))

    @classmethod
    def from_options(
        cls,
        *,
        name: str | None = None,
        namespace: str | None = None,
        workers: int | None = None,
        backend: str | None = None,
        image: str | None = None,
        image_pull_policy: str | None = None,
        pip_packages: str | Iterable[str] | None = None,
        os_packages: str | Iterable[str] | None = None,
        apk_packages: str | Iterable[str] | None = None,
        env: Mapping[str, Any] | None = None,
        resources: Mapping[str, Any] | None = None,
        scheduler_resources: Mapping[str, Any] | None = None,
        port: int | None = None,
        dashboard_port: int | None = None,
        expose: str | None = None,
        idle_timeout: Any = "config",
        no_client_timeout: Any = "config",
        max_lifetime: Any = "config",
        death_timeout: Any = None,
        startup_timeout: Any = None,
        keep_on_failure: bool | None = None,
        node_selector: Mapping[str, str] | None = None,
        tolerations: Iterable[Mapping[str, Any]] | None = None,
        image_pull_secrets: str | Iterable[str] | None = None,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        patch: Mapping[str, Any] | None = None,
        scheduler_options: str | Iterable[str] | None = None,
        worker_options: str | Iterable[str] | None = None,
    ) -> ClusterSpec:
        """Validate every option, fill defaults from dask config, return the spec.

        Timeouts accept seconds, strings such as ``"5 minutes"``, or ``None``
        (off); leaving them out takes the configured default.
        """
        name = _dns_label("name", config.get("name", name), MAX_NAME_LENGTH)
        namespace = _dns_label("namespace", config.get("namespace", namespace), 63)
        backend = config.get("backend", backend)
        if backend not in BACKENDS:
            raise _invalid("backend", backend, f"expected one of {', '.join(map(repr, BACKENDS))}")
        expose = config.get("expose", expose)
        if expose not in EXPOSE_MODES:
            raise _invalid(
                "expose", expose, f"expected one of {', '.join(map(repr, EXPOSE_MODES))}"
            )
        pull_policy = config.get("image.pull-policy", image_pull_policy)
        if pull_policy not in PULL_POLICIES:
            raise _invalid(
                "image_pull_policy", pull_policy, f"expected one of {', '.join(PULL_POLICIES)}"
            )
        if image is None:
            image = (
                f"{config.get('image.repository')}:{config.get('image.tag') or default_image_tag()}"
            )
        elif not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
            raise _invalid("image", image, "expected an image reference such as 'repo/name:tag'")

        worker_defaults = {"cpu": config.get("worker.cpu"), "memory": config.get("worker.memory")}
        scheduler_defaults = {
            "cpu": config.get("scheduler.cpu"),
            "memory": config.get("scheduler.memory"),
        }
        apk = split_packages(apk_packages, "apk_packages")
        return cls(
            name=name,
            namespace=namespace,
            workers=_workers(config.get("workers", workers)),
            backend=backend,
            image=image,
            image_pull_policy=pull_policy,
            pip_packages=split_packages(pip_packages, "pip_packages"),
            os_packages=split_packages(os_packages, "os_packages"),
            apk_packages=apk,
            env=_env(env),
            resources=Resources.parse(
                resources if resources is not None else worker_defaults, "resources"
            ),
            scheduler_resources=Resources.parse(
                scheduler_resources if scheduler_resources is not None else scheduler_defaults,
                "scheduler_resources",
            ),
            port=_port("port", config.get("port", port)),
            dashboard_port=_port("dashboard_port", config.get("dashboard-port", dashboard_port)),
            expose=expose,
            idle_timeout=_timeout("idle_timeout", idle_timeout),
            no_client_timeout=_timeout("no_client_timeout", no_client_timeout),
            max_lifetime=_timeout("max_lifetime", max_lifetime),
            death_timeout=_required_timeout("death_timeout", death_timeout),
            startup_timeout=_required_timeout("startup_timeout", startup_timeout),
            keep_on_failure=bool(config.get("keep-on-failure", keep_on_failure)),
            node_selector=_string_map("node_selector", node_selector, label_values=True),
            tolerations=_tolerations(tolerations),
            image_pull_secrets=tuple(
                _dns_label("image_pull_secrets", s, 253)
                for s in split_packages(image_pull_secrets, "image_pull_secrets")
            ),
            annotations=_string_map("annotations", annotations, label_values=False),
            labels=_string_map("labels", labels, label_values=True),
            patch=_patch(patch),
            scheduler_options=_options("scheduler_options", scheduler_options),
            worker_options=_options("worker_options", worker_options),
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


def _workers(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _invalid("workers", value, "expected a whole number >= 0, e.g. workers=3")
    return value


def _port(option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _invalid(option, value, "expected a port number between 1 and 65535")
    return value


def _timeout(option: str, value: Any) -> float | None:
    if isinstance(value, str) and value == "config":
        value = config.get(option.replace("_", "-"))
    return parse_timeout(value, option)


def _required_timeout(option: str, value: Any) -> float:
    seconds = parse_timeout(config.get(option.replace("_", "-"), value), option, allow_none=False)
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
        out.append(dict(item))
    return tuple(out)


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


def janitor_env(spec: ClusterSpec) -> dict[str, str]:
    """Environment of the scheduler that configures the janitor (minimaldask.janitor)."""

    def seconds(value: float | None) -> str:
        return f"{value:g}" if value else ""

    return {
        "MINIMALDASK_CLUSTER_NAME": spec.name,
        "MINIMALDASK_IDLE_TIMEOUT": seconds(spec.idle_timeout),
        "MINIMALDASK_NO_CLIENT_TIMEOUT": seconds(spec.no_client_timeout),
        "MINIMALDASK_MAX_LIFETIME": seconds(spec.max_lifetime),
    }
