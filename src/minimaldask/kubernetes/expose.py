"""How a client reaches a cluster's scheduler: one strategy object per ``expose`` mode.

Each mode owns everything about itself: the type of the scheduler's Service,
any object of its own, the rights the user needs for it, how the client finds
the scheduler's address, and how it follows a scheduler pod that was replaced.
Adding a mode is adding one class to :data:`EXPOSURES` (and its tests).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from minimaldask import contract
from minimaldask.kubernetes.objects import POD, Access, Obj, Part

if TYPE_CHECKING:
    from minimaldask.spec import ClusterSpec


#: Seconds a port-forward has to stop.
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Endpoint:
    """Where this client reaches the scheduler, and its dashboard."""

    address: str
    dashboard: str


@dataclass
class Connection:
    """What a strategy may use to find the scheduler: the API client, the spec, a way to say."""

    api: Any
    spec: ClusterSpec
    say: Callable[[str], None]
    #: Reads the scheduler's Service as the API server has it now.
    service: Callable[[], Awaitable[Obj | None]]


class Exposure(abc.ABC):
    """How a client outside the Kubernetes cluster reaches the scheduler."""

    #: The value of ``expose=...``.
    name: ClassVar[str]
    #: One line for the docs and ``--help``.
    help: ClassVar[str]
    #: Type of the Service NAME-scheduler.
    service_type: ClassVar[str] = "ClusterIP"
    #: Whether the Service publishes the dashboard, which has no authentication: not
    #: beyond the Kubernetes cluster (reach it through `minimaldask dashboard`).
    publishes_dashboard: ClassVar[bool] = True

    def ingress(self, spec: ClusterSpec) -> list[Obj]:
        """NetworkPolicy ingress rules this mode needs beyond the cluster's own pods."""
        return []

    def parts(self, spec: ClusterSpec) -> list[Part]:
        """Objects of the cluster this mode adds (none by default)."""
        return []

    def access(self) -> list[Access]:
        """Rights the user needs for this mode, beyond making the cluster's objects."""
        return []

    @abc.abstractmethod
    async def connect(self, conn: Connection, pod: Obj) -> Endpoint | None:
        """The scheduler (running in ``pod``) as this client reaches it; None: not yet."""

    async def close(self) -> None:  # noqa: B027  (optional hook)
        """Release what this client holds (a port-forward)."""


class InCluster(Exposure):
    """The Service's DNS name: for a client running in the same Kubernetes cluster."""

    name = "none"
    help = "nothing exposed; the client runs in the same Kubernetes cluster"

    async def connect(self, conn: Connection, pod: Obj) -> Endpoint:
        """The Service's name, which resolves inside the cluster."""
        spec = conn.spec
        host = f"{contract.scheduler_name(spec.name)}.{spec.namespace}.svc"
        return Endpoint(
            f"{contract.scheme(spec.uses_tls)}{host}:{spec.port}",
            f"http://{host}:{spec.dashboard_port}/status",
        )


class PortForward(Exposure):
    """Port-forwards over the API server to the scheduler pod: nothing is exposed.

    The forwards follow the scheduler: each new connection reaches the pod that
    serves now (:class:`~minimaldask.kubernetes.api.Forward`), so a replaced
    scheduler pod is reached at the same local address.
    """

    name = "port-forward"
    help = "forward local ports to the scheduler pod over the API server (nothing exposed)"

    def __init__(self) -> None:
        self._forwards: list[Any] = []
        self._endpoint: Endpoint | None = None

    def access(self) -> list[Access]:
        """Port-forwarding to a pod."""
        return [Access("create", POD, "portforward")]

    async def connect(self, conn: Connection, pod: Obj) -> Endpoint:
        """Forward two free local ports to the scheduler's, whichever pod runs it."""
        from minimaldask.kubernetes import api

        if self._endpoint is None:
            spec = conn.spec
            selector = contract.label_selector(spec.name, contract.SCHEDULER)
            comm = await api.port_forward(conn.api, spec.namespace, selector, spec.port)
            self._forwards.append(comm)
            dash = await api.port_forward(conn.api, spec.namespace, selector, spec.dashboard_port)
            self._forwards.append(dash)
            self._endpoint = Endpoint(
                f"{contract.scheme(spec.uses_tls)}127.0.0.1:{comm.local_port}",
                f"http://127.0.0.1:{dash.local_port}/status",
            )
        return self._endpoint

    async def close(self) -> None:
        """Stop the forwards (each within a few seconds: a dead connection may not answer)."""
        for forward in self._forwards:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(forward.stop(), STOP_TIMEOUT)
        self._forwards.clear()
        self._endpoint = None


def _ports(service: Obj | None) -> dict[str, Obj]:
    return {p["name"]: p for p in ((service or {}).get("spec") or {}).get("ports", [])}


def _from_anywhere(spec: ClusterSpec) -> list[Obj]:
    """The scheduler's comm port open to any address (TLS authenticates who connects)."""
    return [
        {
            "ports": [{"port": spec.port, "protocol": "TCP"}],
            "from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}],
        }
    ]


class NodePort(Exposure):
    """A NodePort Service: the scheduler at a port of the node it runs on."""

    name = "nodeport"
    help = "a NodePort Service: the scheduler (TLS only) at a port of its node"
    service_type = "NodePort"
    publishes_dashboard = False

    def ingress(self, spec: ClusterSpec) -> list[Obj]:
        """Clients come from outside the cluster, through the node."""
        return _from_anywhere(spec)

    async def connect(self, conn: Connection, pod: Obj) -> Endpoint | None:
        """The node's address and the Service's node port; no dashboard (not published)."""
        host = (pod.get("status") or {}).get("hostIP")
        comm = _ports(await conn.service()).get("tcp-comm", {})
        if not host or not comm.get("nodePort"):
            return None
        scheme = contract.scheme(conn.spec.uses_tls)
        return Endpoint(f"{scheme}{host}:{comm['nodePort']}", "")


class LoadBalancer(Exposure):
    """A LoadBalancer Service: the scheduler at the load balancer's address."""

    name = "loadbalancer"
    help = "a LoadBalancer Service: the scheduler (TLS only) at the load balancer's address"
    service_type = "LoadBalancer"
    publishes_dashboard = False

    def ingress(self, spec: ClusterSpec) -> list[Obj]:
        """Clients come from outside the cluster, through the load balancer."""
        return _from_anywhere(spec)

    async def connect(self, conn: Connection, pod: Obj) -> Endpoint | None:
        """The load balancer's address, once the controller gave one."""
        service = await conn.service()
        ingress = (((service or {}).get("status") or {}).get("loadBalancer") or {}).get(
            "ingress"
        ) or []
        if not ingress:
            conn.say("Waiting for the load balancer's address")
            return None
        host = ingress[0].get("ip") or ingress[0].get("hostname")
        spec = conn.spec
        return Endpoint(f"{contract.scheme(spec.uses_tls)}{host}:{spec.port}", "")

    def no_address(self, spec: ClusterSpec) -> str:
        """Why a start failed when the scheduler runs but has no address."""
        return (
            f"the LoadBalancer Service {contract.scheduler_name(spec.name)} got no address within "
            f"startup_timeout={spec.startup_timeout:g}s: does this Kubernetes have a "
            "load-balancer controller? Use expose='port-forward' (the default) otherwise"
        )


#: Every mode, by the value of ``expose=...``.
EXPOSURES: dict[str, type[Exposure]] = {
    cls.name: cls for cls in (PortForward, NodePort, LoadBalancer, InCluster)
}


def exposure(name: str) -> Exposure:
    """The strategy for ``expose=name`` as this client runs it.

    Inside a pod, port-forwarding to a neighbour makes no sense: the Service's
    name resolves there, so ``port-forward`` becomes ``none``.
    """
    if name == PortForward.name and os.environ.get("KUBERNETES_SERVICE_HOST"):
        name = InCluster.name
    return EXPOSURES[name]()


def service_type(name: str) -> str:
    """Type of the scheduler's Service for ``expose=name``."""
    return EXPOSURES[name].service_type


def publishes_dashboard(name: str) -> bool:
    """Whether the scheduler's Service carries the dashboard's port for ``expose=name``."""
    return EXPOSURES[name].publishes_dashboard
