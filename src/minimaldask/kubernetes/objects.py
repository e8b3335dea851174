"""The kinds of Kubernetes objects minimaldask makes or watches, and the parts of a cluster.

A :class:`Kind` says where the API serves objects of one kind; a :class:`Part`
is one object of a cluster: its kind, its name, its builder and when it is
applied. What a cluster is made of is a list of parts
(:func:`minimaldask.kubernetes.manifests.cluster_parts`); the kinds it has,
the order to delete it in and the rights a user needs are derived from it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from minimaldask.spec import ClusterSpec

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """One kind of object: its API group and version, its name, its plural (the URL part).

    ``children`` are the kinds that controllers make for an object of this kind
    (a Deployment's ReplicaSets and Pods): they belong to a cluster too.
    """

    group: str
    version: str
    name: str
    plural: str
    children: tuple[Kind, ...] = ()

    @property
    def api_version(self) -> str:
        """``apiVersion`` of the objects: ``v1`` or ``group/v1``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    def resource(self, subresource: str = "") -> str:
        """How RBAC and ``kubectl auth can-i`` name it: ``deployments.apps/scale``."""
        full = f"{self.plural}.{self.group}" if self.group else self.plural
        return f"{full}/{subresource}" if subresource else full


POD = Kind("", "v1", "Pod", "pods")
REPLICA_SET = Kind("apps", "v1", "ReplicaSet", "replicasets", children=(POD,))
DEPLOYMENT = Kind("apps", "v1", "Deployment", "deployments", children=(REPLICA_SET, POD))
ENDPOINTS = Kind("", "v1", "Endpoints", "endpoints")
ENDPOINT_SLICE = Kind("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")
SERVICE = Kind("", "v1", "Service", "services", children=(ENDPOINTS, ENDPOINT_SLICE))
SERVICE_ACCOUNT = Kind("", "v1", "ServiceAccount", "serviceaccounts")
CONFIG_MAP = Kind("", "v1", "ConfigMap", "configmaps")
SECRET = Kind("", "v1", "Secret", "secrets")
ROLE = Kind("rbac.authorization.k8s.io", "v1", "Role", "roles")
ROLE_BINDING = Kind("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings")
NETWORK_POLICY = Kind("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies")
EVENT = Kind("", "v1", "Event", "events")
NAMESPACE = Kind("", "v1", "Namespace", "namespaces")
NODE = Kind("", "v1", "Node", "nodes")


class Stage(enum.IntEnum):
    """When a part is applied."""

    #: The root: created first, and only if it does not exist (the claim on the name).
    ROOT = 0
    #: Every other part, with an ownerReference to the root.
    OWNED = 1


@dataclass(frozen=True)
class Part:
    """One object of a cluster: its kind, its name (from the cluster's name) and builder."""

    kind: Kind
    name: Callable[[str], str]
    build: Callable[[ClusterSpec], Obj]
    stage: Stage = Stage.OWNED
    #: One of the janitor's objects: made only when the user may grant the janitor its rights.
    janitor: bool = False


def cluster_kinds(parts: Iterable[Part]) -> list[Kind]:
    """The kinds a cluster's objects have, and those that controllers make for them."""
    out: dict[str, Kind] = {}
    for part in parts:
        for k in (part.kind, *part.kind.children):
            out.setdefault(k.name, k)
    return list(out.values())


def delete_order(parts: Iterable[Part]) -> list[Part]:
    """The root first (what it owns goes with it), then every part in the order it was made.

    The delete sends the root's first and the others' at once
    (:func:`minimaldask.kubernetes.api.delete_cluster`): the garbage collector
    deletes the root's dependents meanwhile anyway. A scheduler that closes ends
    its workers through their nannies (``Plugin.before_close``).
    """
    parts = list(parts)
    return [p for p in parts if p.stage == Stage.ROOT] + [p for p in parts if p.stage != Stage.ROOT]


@dataclass(frozen=True)
class Access:
    """A right a user needs in a namespace: a verb on a kind (or one of its subresources)."""

    verb: str
    kind: Kind
    subresource: str = ""

    def __str__(self) -> str:
        return f"{self.verb} {self.kind.resource(self.subresource)}"


#: What making and removing an object takes.
MANAGE = ("create", "patch", "get", "delete")


def access_to_make(parts: Iterable[Part]) -> list[Access]:
    """The rights to create, update, read and delete every part."""
    kinds: dict[str, Kind] = {p.kind.name: p.kind for p in parts}
    return [Access(verb, k) for k in kinds.values() for verb in MANAGE]
