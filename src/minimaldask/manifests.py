"""The Kubernetes objects of one cluster, as pure functions of its :class:`ClusterSpec`.

No I/O here: ``minimaldask manifests`` prints these objects and
:mod:`minimaldask.kube` applies them. Per cluster ``NAME`` in a namespace:

- Service ``NAME-scheduler`` (ports ``tcp-comm`` and ``http-dashboard``),
- Deployment ``NAME-scheduler`` (one scheduler, the owner of the rest),
- Deployment ``NAME-worker`` (``spec.workers`` replicas),
- ServiceAccount ``NAME-scheduler``, Role and RoleBinding ``NAME-janitor``: the
  rights of the scheduler's janitor (delete its own cluster, scale its workers),
  and ConfigMap ``NAME-janitor`` (its report, the adaptive policy), when the user
  may grant them (``janitor=True``).

Every object carries the ``app.kubernetes.io/{name,instance,component,managed-by}``
labels; the children carry an ownerReference to the scheduler Deployment once
its uid is known, so deleting it garbage-collects the rest. Adding an object
kind is adding a builder to :data:`CHILD_BUILDERS`.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from minimaldask.spec import ClusterSpec, janitor_env

APP = "minimaldask"
MANAGER = "minimaldask"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
#: Annotation the ReplicaSet controller reads to choose which pods go first.
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
#: Port of each worker's HTTP server (``/health``, metrics).
WORKER_HTTP_PORT = 8788
#: Where the read-only root filesystem gets its one writable directory.
TMP_DIR = "/tmp"
#: The image's user (see docs/image.md); set explicitly so ``runAsNonRoot`` can be verified.
IMAGE_UID = 1000
#: Seconds the scheduler pod gets to exit after SIGTERM.
SCHEDULER_GRACE_PERIOD = 30

Obj = dict[str, Any]


def scheduler_name(spec: ClusterSpec) -> str:
    """Name of the scheduler's Service and Deployment."""
    return f"{spec.name}-scheduler"


def worker_name(spec: ClusterSpec) -> str:
    """Name of the workers' Deployment."""
    return f"{spec.name}-worker"


def scheduler_host(spec: ClusterSpec) -> str:
    """The Service's DNS name, as pods of the cluster reach it."""
    return f"{scheduler_name(spec)}.{spec.namespace}.svc"


def scheduler_address(spec: ClusterSpec) -> str:
    """The scheduler's address from inside the Kubernetes cluster."""
    return f"tcp://{scheduler_host(spec)}:{spec.port}"


def selector(name: str, component: str | None = None) -> dict[str, str]:
    """Labels that select the objects of cluster ``name`` (one component, or all)."""
    labels = {LABEL_NAME: APP, LABEL_INSTANCE: name}
    if component:
        labels[LABEL_COMPONENT] = component
    return labels


def label_selector(name: str, component: str | None = None) -> str:
    """:func:`selector` as a ``labelSelector`` query string."""
    return ",".join(f"{k}={v}" for k, v in selector(name, component).items())


def _labels(spec: ClusterSpec, component: str) -> dict[str, str]:
    return {**spec.labels, **selector(spec.name, component), LABEL_MANAGED_BY: MANAGER}


def _metadata(spec: ClusterSpec, name: str, component: str) -> Obj:
    meta: Obj = {"name": name, "namespace": spec.namespace, "labels": _labels(spec, component)}
    if spec.annotations:
        meta["annotations"] = dict(spec.annotations)
    return meta


def owner_reference(owner: Mapping[str, Any]) -> Obj:
    """An ownerReference to ``owner`` (an object as the API server returned it)."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }


def deep_merge(base: Obj, patch: Mapping[str, Any]) -> Obj:
    """``base`` with ``patch`` merged in: mappings recursively, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _security_context() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _env(spec: ClusterSpec) -> list[Obj]:
    """Variables common to scheduler and worker: the user's, then the package lists."""
    env: list[Obj] = [{"name": k, "value": v} for k, v in spec.env.items()]
    if spec.pip_packages:
        env.append({"name": "EXTRA_PIP_PACKAGES", "value": shlex.join(spec.pip_packages)})
    if spec.os_packages:
        env.append({"name": "EXTRA_OS_PACKAGES", "value": shlex.join(spec.os_packages)})
    if spec.apk_packages:
        env.append({"name": "EXTRA_APK_PACKAGES", "value": shlex.join(spec.apk_packages)})
    return env


def _probe(port: str | int, period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": "/health", "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _pod_spec(spec: ClusterSpec, container: Obj, grace: int) -> Obj:
    pod: Obj = {
        "automountServiceAccountToken": False,
        # Service links would put DASK_SCHEDULER_PORT=tcp://... into the environment of
        # a cluster named "dask", and dask reads DASK_* variables as its config.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in spec.image_pull_secrets]
    return pod


def _container(spec: ClusterSpec, role: str, env: list[Obj], resources: Obj) -> Obj:
    return {
        "name": role,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "env": env,
        "resources": resources,
        "securityContext": _security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": TMP_DIR}],
    }


def _deployment(spec: ClusterSpec, name: str, component: str, replicas: int, pod: Obj) -> Obj:
    labels = _labels(spec, component)
    template_meta: Obj = {"labels": labels}
    if spec.annotations:
        template_meta["annotations"] = dict(spec.annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, name, component),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(spec.name, component)},
            "template": {"metadata": template_meta, "spec": pod},
        },
    }


def janitor_name(spec: ClusterSpec) -> str:
    """Name of the janitor's Role and RoleBinding."""
    return f"{spec.name}-janitor"


def janitor_rules(spec: ClusterSpec) -> list[Obj]:
    """What the janitor may do: only to this cluster's objects, where Kubernetes allows.

    Pods cannot be named in advance (the ReplicaSet names them), so patching
    pods (the deletion-cost annotation of retired workers) is namespace-wide.
    """
    return [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": [scheduler_name(spec), worker_name(spec)],
            "verbs": ["get", "delete"],
        },
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [janitor_name(spec)],
            "verbs": ["get", "patch"],
        },
        {
            "apiGroups": ["apps"],
            "resources": ["deployments/scale"],
            "resourceNames": [worker_name(spec)],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]},
    ]


def janitor_service_account(spec: ClusterSpec) -> Obj:
    """ServiceAccount ``NAME-scheduler``: the identity of the scheduler pod."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(spec, scheduler_name(spec), "scheduler"),
        "automountServiceAccountToken": False,
    }


def janitor_role(spec: ClusterSpec) -> Obj:
    """Role ``NAME-janitor``: see :func:`janitor_rules`."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(spec, janitor_name(spec), "scheduler"),
        "rules": janitor_rules(spec),
    }


def janitor_role_binding(spec: ClusterSpec) -> Obj:
    """RoleBinding ``NAME-janitor``: the Role to the scheduler's ServiceAccount."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(spec, janitor_name(spec), "scheduler"),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": janitor_name(spec),
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": scheduler_name(spec), "namespace": spec.namespace}
        ],
    }


def janitor_state(spec: ClusterSpec) -> Obj:
    """ConfigMap ``NAME-janitor``: the janitor's report and the adaptive policy."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(spec, janitor_name(spec), "scheduler"),
    }


#: The janitor's objects, applied before the scheduler Deployment (its pod needs them).
JANITOR_BUILDERS: list[Callable[[ClusterSpec], Obj]] = [
    janitor_service_account,
    janitor_role,
    janitor_role_binding,
    janitor_state,
]


def scheduler_arguments(spec: ClusterSpec) -> list[str]:
    """Options of ``dask scheduler``: the janitor, then the user's."""
    return ["--preload", "minimaldask.janitor", *spec.scheduler_options]


def scheduler_deployment(spec: ClusterSpec, janitor: bool = True) -> Obj:
    """Deployment ``NAME-scheduler``: one scheduler, sized by ``scheduler_resources``.

    With ``janitor``, the pod runs as ServiceAccount ``NAME-scheduler`` with its
    token mounted (the only pod of the cluster that has one); without, the
    janitor cannot delete or scale the cluster and says so.
    """
    env: list[Obj] = [
        {"name": "PORT", "value": str(spec.port)},
        {"name": "DASHBOARD_PORT", "value": str(spec.dashboard_port)},
        # Read by the scheduler-side janitor (cost controls); empty means off.
        *({"name": k, "value": v} for k, v in janitor_env(spec).items()),
        {
            "name": "MINIMALDASK_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        *_env(spec),
    ]
    env.append({"name": "ARGUMENTS", "value": shlex.join(scheduler_arguments(spec))})
    container = _container(spec, "scheduler", env, spec.scheduler_resources.to_kubernetes())
    container["ports"] = [
        {"name": "tcp-comm", "containerPort": spec.port, "protocol": "TCP"},
        {"name": "http-dashboard", "containerPort": spec.dashboard_port, "protocol": "TCP"},
    ]
    # Installing extra packages delays the first answer: the startup probe allows 5 minutes.
    container["startupProbe"] = _probe("http-dashboard", 2, 150)
    container["readinessProbe"] = _probe("http-dashboard", 5, 2)
    container["livenessProbe"] = _probe("http-dashboard", 10, 6)
    pod = _pod_spec(spec, container, grace=SCHEDULER_GRACE_PERIOD)
    if janitor:
        pod["serviceAccountName"] = scheduler_name(spec)
        pod["automountServiceAccountToken"] = True
    deployment = _deployment(spec, scheduler_name(spec), "scheduler", 1, pod)
    # A second scheduler would be a second cluster: replace, never overlap.
    deployment["spec"]["strategy"] = {"type": "Recreate"}
    return deep_merge(deployment, spec.patch.get("scheduler", {}))


def worker_arguments(spec: ClusterSpec) -> list[str]:
    """Options of ``dask worker``: threads and memory from resources, name from the pod."""
    arguments = [
        "--name", "$(POD_NAME)",
        "--nthreads", str(spec.nthreads),
        "--death-timeout", f"{spec.death_timeout:g}s",
        "--dashboard-address", f":{WORKER_HTTP_PORT}",
        "--no-dashboard",
    ]  # fmt: skip
    if spec.memory_limit:
        arguments += ["--memory-limit", str(spec.memory_limit)]
    return [*arguments, *spec.worker_options]


def worker_grace_period(spec: ClusterSpec) -> int:
    """Seconds a worker pod gets to exit after SIGTERM (a retired worker hands over its data)."""
    return max(30, int(spec.death_timeout))


def worker_deployment(spec: ClusterSpec) -> Obj:
    """Deployment ``NAME-worker``: ``spec.workers`` workers, sized by ``resources``."""
    env: list[Obj] = [
        {"name": "WORKER", "value": "1"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "PORT", "value": str(spec.port)},
        # The short Service name resolves in the pod's own namespace: the same manifests
        # work in any namespace (`minimaldask manifests | kubectl apply -n NS -f -`).
        {"name": "DASK_SCHEDULER_ADDRESS", "value": f"tcp://{scheduler_name(spec)}:{spec.port}"},
        *_env(spec),
        # Kubernetes expands $(POD_NAME) here because POD_NAME is defined above.
        {"name": "ARGUMENTS", "value": shlex.join(worker_arguments(spec))},
    ]
    container = _container(spec, "worker", env, spec.resources.to_kubernetes())
    container["ports"] = [{"name": "http-health", "containerPort": WORKER_HTTP_PORT}]
    container["startupProbe"] = _probe("http-health", 2, 150)
    container["livenessProbe"] = _probe("http-health", 10, 6)
    pod = _pod_spec(spec, container, grace=worker_grace_period(spec))
    deployment = _deployment(spec, worker_name(spec), "worker", spec.workers, pod)
    return deep_merge(deployment, spec.patch.get("worker", {}))


_SERVICE_TYPES = {"nodeport": "NodePort", "loadbalancer": "LoadBalancer"}


def scheduler_service(spec: ClusterSpec) -> Obj:
    """Service ``NAME-scheduler``: the comm and dashboard ports of the scheduler."""
    service: Obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, scheduler_name(spec), "scheduler"),
        "spec": {
            "type": _SERVICE_TYPES.get(spec.expose, "ClusterIP"),
            "selector": selector(spec.name, "scheduler"),
            # Route to the scheduler as soon as it has an address: workers starting with it
            # get "connection refused" and retry, instead of a Service without endpoints.
            "publishNotReadyAddresses": True,
            "ports": [
                {
                    "name": "tcp-comm",
                    "port": spec.port,
                    "targetPort": "tcp-comm",
                    "protocol": "TCP",
                },
                {
                    "name": "http-dashboard",
                    "port": spec.dashboard_port,
                    "targetPort": "http-dashboard",
                    "protocol": "TCP",
                },
            ],
        },
    }
    return deep_merge(service, spec.patch.get("service", {}))


#: Builders of the objects owned by the scheduler Deployment, in the order they are applied.
CHILD_BUILDERS: list[Callable[[ClusterSpec], Obj]] = [scheduler_service, worker_deployment]


def owned(obj: Obj, owner: Mapping[str, Any] | None) -> Obj:
    """``obj`` with an ownerReference to ``owner`` (unchanged when ``owner`` is None)."""
    if owner is None:
        return obj
    out = copy.deepcopy(obj)
    out["metadata"]["ownerReferences"] = [owner_reference(owner)]
    return out


def without_namespace(obj: Obj) -> Obj:
    """``obj`` without ``metadata.namespace``, for ``kubectl apply -n NAMESPACE``."""
    out = copy.deepcopy(obj)
    out["metadata"].pop("namespace", None)
    return out


def cluster_objects(
    spec: ClusterSpec, owner: Mapping[str, Any] | None = None, janitor: bool = True
) -> list[Obj]:
    """Every object of the cluster, the owner (scheduler Deployment) first.

    ``owner`` is the scheduler Deployment as the API server returned it; with
    it, the children carry an ownerReference to it. Without it (``minimaldask
    manifests``), delete the cluster by its label: see docs/kubernetes.md.
    """
    builders = [*CHILD_BUILDERS, *(JANITOR_BUILDERS if janitor else [])]
    return [scheduler_deployment(spec, janitor), *(owned(b(spec), owner) for b in builders)]


def apply_order(objects: list[Obj]) -> list[Obj]:
    """``objects`` in the order ``kubectl apply`` should create them: identities first.

    The scheduler pod runs as its ServiceAccount, which must exist before it.
    """
    first = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap")
    return sorted(objects, key=lambda o: o["kind"] not in first)
