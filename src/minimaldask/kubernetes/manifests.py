"""The Kubernetes objects of one cluster, as pure functions of its :class:`ClusterSpec`.

No I/O here: ``minimaldask manifests`` prints these objects and the backend
applies them. A cluster is the list of :func:`cluster_parts`; per cluster
``NAME`` in a namespace:

- Deployment ``NAME-scheduler`` (one scheduler, the owner of the rest),
- Service ``NAME-scheduler`` (ports ``tcp-comm`` and ``http-dashboard``; its
  type is the ``expose`` mode's),
- Deployment ``NAME-worker`` (``spec.workers`` replicas),
- ServiceAccount ``NAME-scheduler``, Role, RoleBinding and ConfigMap
  ``NAME-janitor``: the janitor's identity and rights (delete its own cluster,
  scale its workers) and its report, when the user may grant them,
- whatever the ``expose`` mode adds.

Every object carries the ``app.kubernetes.io/{name,instance,component,managed-by}``
labels; the others carry an ownerReference to the scheduler Deployment once its
uid is known, so deleting it garbage-collects the rest. Adding an object is
adding a :class:`~minimaldask.kubernetes.objects.Part` to :func:`cluster_parts`:
its kind, the rights to make it and its place in the delete order follow.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from minimaldask import contract
from minimaldask.contract import IMAGE_UID, TMP_DIR, WORKER_HTTP_PORT
from minimaldask.kubernetes import expose
from minimaldask.kubernetes.objects import (
    CONFIG_MAP,
    DEPLOYMENT,
    NETWORK_POLICY,
    ROLE,
    ROLE_BINDING,
    SECRET,
    SERVICE,
    SERVICE_ACCOUNT,
    Obj,
    Part,
    Stage,
)
from minimaldask.spec import ClusterSpec
from minimaldask.tls import Credentials

#: Seconds the scheduler pod gets to exit after SIGTERM.
SCHEDULER_GRACE_PERIOD = 30


def _labels(spec: ClusterSpec, component: str) -> dict[str, str]:
    return {
        **spec.labels,
        **contract.selector(spec.name, component),
        contract.LABEL_MANAGED_BY: contract.MANAGER,
    }


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


def _env(spec: ClusterSpec, launch: contract.Launch) -> list[Obj]:
    """The user's variables, then the entrypoint's, ``ARGUMENTS`` last.

    Kubernetes expands ``$(POD_NAME)`` in ``ARGUMENTS`` because POD_NAME comes before.
    """
    ours = launch.to_env()
    arguments = ours.pop("ARGUMENTS")
    env: list[Obj] = [{"name": k, "value": v} for k, v in spec.env.items()]
    env += [{"name": k, "value": v} for k, v in ours.items()]
    return [*env, {"name": "ARGUMENTS", "value": arguments}]


def _packages(spec: ClusterSpec) -> dict[str, Any]:
    return {
        "pip_packages": spec.pip_packages,
        "os_packages": spec.os_packages,
        "apk_packages": spec.apk_packages,
    }


#: A container's start may last this long (extra packages installed at start included);
#: its startup probe asks every second, so that a started one is seen at once.
STARTUP_PROBE_SECONDS = 300


def _probe(port: str | int, period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": "/health", "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _tmp_size(spec: ClusterSpec, role: str) -> str:
    """The size limit of a pod's /tmp: ``tmp_size``, or room to spill and install packages."""
    if spec.tmp_size:
        return spec.tmp_size
    if role == contract.WORKER:
        return f"{math.ceil(2 * (spec.memory_limit or 0) / 2**20) + 1024}Mi"
    return "2Gi"


def _pod_spec(spec: ClusterSpec, container: Obj, grace: int) -> Obj:
    tmp: Obj = {"name": "tmp", "emptyDir": {"sizeLimit": _tmp_size(spec, container["name"])}}
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
        "volumes": [tmp],
    }
    if spec.uses_tls:
        pod["volumes"].append(
            {
                "name": "tls",
                "secret": {
                    "secretName": contract.tls_name(spec.name),
                    # Not the client's key: the pods are the cluster's members, not its users.
                    "items": [
                        {"key": f, "path": f}
                        for f in (contract.TLS_CA, contract.TLS_CERT, contract.TLS_KEY)
                    ],
                    "defaultMode": 0o440,
                },
            }
        )
        container["volumeMounts"].append(
            {"name": "tls", "mountPath": contract.TLS_DIR, "readOnly": True}
        )
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
            "selector": {"matchLabels": contract.selector(spec.name, component)},
            "template": {"metadata": template_meta, "spec": pod},
        },
    }


def janitor_rules(spec: ClusterSpec) -> list[Obj]:
    """What the janitor may do: read, scale and delete this cluster, nothing else.

    Every rule names its objects. No verb on pods (retired workers leave by
    readiness, see :mod:`minimaldask.pod.scaling`), and no ``patch`` on
    Deployments: a pod template can name any ServiceAccount of the namespace,
    so patching one is as strong as all of them; ``deployments/scale`` changes
    replicas only.
    """
    scheduler, worker = contract.scheduler_name(spec.name), contract.worker_name(spec.name)
    return [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": [scheduler, worker],
            "verbs": ["get"],
        },
        {
            "apiGroups": ["apps"],
            "resources": ["deployments/scale"],
            "resourceNames": [worker],
            "verbs": ["get", "patch"],
        },
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [contract.root_name(spec.name)],
            "verbs": ["get", "patch", "delete"],
        },
    ]


def janitor_service_account(spec: ClusterSpec) -> Obj:
    """ServiceAccount ``NAME-scheduler``: the identity of the scheduler pod."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(spec, contract.scheduler_name(spec.name), contract.SCHEDULER),
        "automountServiceAccountToken": False,
    }


def janitor_role(spec: ClusterSpec) -> Obj:
    """Role ``NAME-janitor``: see :func:`janitor_rules`."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(spec, contract.janitor_name(spec.name), contract.SCHEDULER),
        "rules": janitor_rules(spec),
    }


def janitor_role_binding(spec: ClusterSpec) -> Obj:
    """RoleBinding ``NAME-janitor``: the Role to the scheduler's ServiceAccount."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(spec, contract.janitor_name(spec.name), contract.SCHEDULER),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": contract.janitor_name(spec.name),
        },
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": contract.scheduler_name(spec.name),
                "namespace": spec.namespace,
            }
        ],
    }


def cluster_root(spec: ClusterSpec) -> Obj:
    """ConfigMap ``NAME-cluster``: the cluster's root, owner of every other object.

    It holds the janitor's report and saved clocks, and the adaptive policy
    (see :func:`minimaldask.contract.root_name`).
    """
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(spec, contract.root_name(spec.name), contract.SCHEDULER),
    }


#: Resources of the janitor's container: a small standard-library Python process.
JANITOR_RESOURCES = {"requests": {"cpu": "10m", "memory": "48Mi"}, "limits": {"memory": "64Mi"}}
#: Where the janitor's container finds its service account token (only it mounts one).
_TOKEN_VOLUME = "janitor-token"


def janitor_container(spec: ClusterSpec, settings: contract.JanitorSettings) -> Obj:
    """The janitor's container, beside the scheduler: the only one with the cluster's token."""
    env = [{"name": k, "value": v} for k, v in settings.to_env().items()]
    env.append(_namespace_variable())
    return {
        "name": "janitor",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["python3", "-m", contract.JANITOR_MODULE],
        "env": env,
        "resources": JANITOR_RESOURCES,
        "securityContext": _security_context(),
        "volumeMounts": [
            {"name": _TOKEN_VOLUME, "mountPath": contract.TOKEN_DIR, "readOnly": True}
        ],
    }


def _token_volume() -> Obj:
    """The service account token, as the kubelet would mount it, for the janitor only."""
    return {
        "name": _TOKEN_VOLUME,
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
            ]
        },
    }


def _namespace_variable() -> Obj:
    return {
        "name": contract.JanitorSettings.NAMESPACE_VARIABLE,
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }


def scheduler_deployment(spec: ClusterSpec, janitor: bool = True) -> Obj:
    """Deployment ``NAME-scheduler``: one scheduler, sized by ``scheduler_resources``.

    With ``janitor``, the pod runs as ServiceAccount ``NAME-scheduler``, and its
    second container, the janitor, is the only one that mounts the token (code
    run on the scheduler cannot read it). Without, nothing ends the cluster but
    its user, and the plugin says so.
    """
    launch = contract.Launch(
        port=spec.port,
        dashboard_port=spec.dashboard_port,
        arguments=tuple(contract.scheduler_arguments(spec.scheduler_options)),
        tls_dir=contract.TLS_DIR if spec.uses_tls else "",
        **_packages(spec),
    )
    settings = contract.JanitorSettings(
        cluster=spec.name,
        idle_timeout=spec.idle_timeout,
        no_client_timeout=spec.no_client_timeout,
        max_lifetime=spec.max_lifetime,
        janitor_port=contract.JANITOR_PORT if janitor else None,
    )
    env: list[Obj] = [
        # Read by the plugin; empty timeouts are off.
        *({"name": k, "value": v} for k, v in settings.to_env().items()),
        _namespace_variable(),
        *_env(spec, launch),
    ]
    container = _container(spec, contract.SCHEDULER, env, spec.scheduler_resources.to_kubernetes())
    container["ports"] = [
        {"name": "tcp-comm", "containerPort": spec.port, "protocol": "TCP"},
        {"name": "http-dashboard", "containerPort": spec.dashboard_port, "protocol": "TCP"},
    ]
    # Installing extra packages delays the first answer: the startup probe allows 5 minutes.
    # Every second: the client reaches the scheduler once its pod is Ready, so a
    # longer period is time added to every start (see docs/performance.md).
    container["startupProbe"] = _probe("http-dashboard", 1, STARTUP_PROBE_SECONDS)
    container["readinessProbe"] = _probe("http-dashboard", 1, 10)
    container["livenessProbe"] = _probe("http-dashboard", 10, 6)
    pod = _pod_spec(spec, container, grace=SCHEDULER_GRACE_PERIOD)
    if janitor:
        pod["serviceAccountName"] = contract.scheduler_name(spec.name)
        pod["containers"].append(janitor_container(spec, settings))
        pod["volumes"].append(_token_volume())
    deployment = _deployment(spec, contract.scheduler_name(spec.name), contract.SCHEDULER, 1, pod)
    # A second scheduler would be a second cluster: replace, never overlap.
    deployment["spec"]["strategy"] = {"type": "Recreate"}
    return deep_merge(deployment, spec.patch.get("scheduler", {}))


#: Bytes per second a worker's data moves to the others when its pod stops (a cautious
#: figure for a pod network): the grace period grows with the worker's memory.
DRAIN_RATE = 50e6
#: Seconds a worker needs to close once its data moved.
WORKER_CLOSE = 10


def worker_grace_period(spec: ClusterSpec) -> int:
    """Seconds a worker pod gets, once told to stop, to hand over its data and close.

    ``worker_grace_period``, or 30 s plus the time its memory takes to move at
    :data:`DRAIN_RATE` (2Gi: 73 s).
    """
    if spec.worker_grace_period:
        return math.ceil(spec.worker_grace_period)
    return 30 + math.ceil((spec.memory_limit or 0) / DRAIN_RATE)


def worker_deployment(spec: ClusterSpec) -> Obj:
    """Deployment ``NAME-worker``: ``spec.workers`` workers, sized by ``resources``.

    A worker's pod is Ready while its worker runs and was not retired (the
    readiness probe asks the worker, see :mod:`minimaldask.pod.worker`), and
    its preStop hook moves its data elsewhere before it stops.
    """
    launch = contract.Launch(
        worker=True,
        port=spec.port,
        # The short Service name resolves in the pod's own namespace: the same manifests
        # work in any namespace (`minimaldask manifests | kubectl apply -n NS -f -`).
        scheduler_address=(
            f"{contract.scheme(spec.uses_tls)}{contract.scheduler_name(spec.name)}:{spec.port}"
        ),
        tls_dir=contract.TLS_DIR if spec.uses_tls else "",
        arguments=tuple(
            contract.worker_arguments(
                "$(POD_NAME)",
                spec.nthreads,
                spec.death_timeout,
                spec.memory_limit,
                ["--dashboard-address", f":{WORKER_HTTP_PORT}", "--no-dashboard"],
            )
            + list(spec.worker_options)
        ),
        **_packages(spec),
    )  # fmt: skip
    grace = worker_grace_period(spec)
    env: list[Obj] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "MINIMALDASK_DRAIN_TIMEOUT", "value": str(max(grace - WORKER_CLOSE, 1))},
        *_env(spec, launch),
    ]
    container = _container(spec, contract.WORKER, env, spec.resources.to_kubernetes())
    container["ports"] = [{"name": "http-health", "containerPort": WORKER_HTTP_PORT}]
    container["startupProbe"] = _probe("http-health", 1, STARTUP_PROBE_SECONDS)
    container["livenessProbe"] = _probe("http-health", 10, 6)
    # Every second, and patient with a busy worker (three misses of 5 s), so that a
    # not-Ready worker pod is one that holds nothing: see minimaldask.pod.scaling.
    container["readinessProbe"] = {
        **_probe("http-health", 1, 3),
        "httpGet": {"path": contract.READY_PATH, "port": "http-health"},
        "timeoutSeconds": 5,
    }
    container["lifecycle"] = {
        "preStop": {"exec": {"command": ["python3", "-m", contract.DRAIN_MODULE]}}
    }
    pod = _pod_spec(spec, container, grace=grace)
    deployment = _deployment(
        spec, contract.worker_name(spec.name), contract.WORKER, spec.workers, pod
    )
    return deep_merge(deployment, spec.patch.get("worker", {}))


def scheduler_service(spec: ClusterSpec) -> Obj:
    """Service ``NAME-scheduler``: the comm and dashboard ports of the scheduler."""
    service: Obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, contract.scheduler_name(spec.name), contract.SCHEDULER),
        "spec": {
            "type": expose.service_type(spec.expose),
            "selector": contract.selector(spec.name, contract.SCHEDULER),
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
            ],
        },
    }
    if expose.publishes_dashboard(spec.expose):
        service["spec"]["ports"].append(
            {
                "name": "http-dashboard",
                "port": spec.dashboard_port,
                "targetPort": "http-dashboard",
                "protocol": "TCP",
            }
        )
    return deep_merge(service, spec.patch.get("service", {}))


def scheduler_hosts(spec: ClusterSpec) -> list[str]:
    """The names of the scheduler inside the cluster (its certificate carries them)."""
    service = contract.scheduler_name(spec.name)
    return [service, f"{service}.{spec.namespace}", f"{service}.{spec.namespace}.svc", "localhost"]


def network_policy(spec: ClusterSpec) -> Obj:
    """NetworkPolicy ``NAME-network``: who may connect to the scheduler and workers.

    The cluster's own pods, the peers in ``allow_from``, and whatever the
    ``expose`` mode needs. A port-forward enters the pod's own network
    namespace and is not filtered.
    """
    peers = [{"podSelector": {"matchLabels": contract.selector(spec.name)}}, *spec.allow_from]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(spec, contract.network_policy_name(spec.name), contract.SCHEDULER),
        "spec": {
            "podSelector": {"matchLabels": contract.selector(spec.name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [dict(p) for p in peers]},
                *expose.EXPOSURES[spec.expose]().ingress(spec),
            ],
        },
    }


def tls_secret(spec: ClusterSpec, credentials: Credentials | None) -> Obj:
    """Secret ``NAME-tls``: the cluster's CA, its members' and clients' certificates and keys.

    See :mod:`minimaldask.tls`.
    """
    if credentials is None:
        raise ValueError("the TLS Secret is made from the cluster's credentials: none given")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(spec, contract.tls_name(spec.name), contract.SCHEDULER),
        "type": "Opaque",
        "stringData": credentials.files(),
    }


def security_weakenings(spec: ClusterSpec) -> list[str]:
    """What the user's ``patch`` weakens in the pods' security; empty when nothing.

    The pods run as a non-root user with no privileges, no capabilities, the
    runtime's seccomp profile, a read-only root and no host namespaces or paths
    (Pod Security "restricted"): a patch may add to them but not take that away
    unless ``allow_unsafe_patch`` says so.
    """
    found: list[str] = []
    for deployment in (scheduler_deployment(spec), worker_deployment(spec)):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        found += [f"{name}: {key}" for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
        found += [
            f"{name}: hostPath volume {v.get('name')!r}"
            for v in pod.get("volumes") or []
            if "hostPath" in v
        ]
        context = pod.get("securityContext") or {}
        if context.get("runAsNonRoot") is not True:
            found.append(f"{name}: securityContext.runAsNonRoot is not true")
        if context.get("runAsUser") == 0:
            found.append(f"{name}: securityContext.runAsUser is 0 (root)")
        if (context.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: securityContext.seccompProfile is not RuntimeDefault")
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            where = f"{name}: container {container.get('name')!r}"
            c = container.get("securityContext") or {}
            if c.get("privileged"):
                found.append(f"{where}: privileged")
            if c.get("allowPrivilegeEscalation") is not False:
                found.append(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in ((c.get("capabilities") or {}).get("drop") or []):
                found.append(f"{where}: capabilities are not all dropped")
            if (c.get("capabilities") or {}).get("add"):
                found.append(f"{where}: capabilities added")
            if c.get("readOnlyRootFilesystem") is not True:
                found.append(f"{where}: the root filesystem is writable")
            if c.get("runAsUser") == 0 or c.get("runAsNonRoot") is False:
                found.append(f"{where}: runs as root")
    return found


def check_patch(spec: ClusterSpec) -> None:
    """Refuse a ``patch`` that weakens the pods' security, unless ``allow_unsafe_patch``."""
    weakened = security_weakenings(spec)
    if weakened and not spec.allow_unsafe_patch:
        raise ValueError(
            f"invalid patch={dict(spec.patch)!r}: it weakens the pods' security "
            f"({'; '.join(weakened)}); keep the pods restricted, or pass "
            "allow_unsafe_patch=True if you mean it"
        )


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


def cluster_parts(
    spec: ClusterSpec, janitor: bool = True, credentials: Credentials | None = None
) -> list[Part]:
    """Every object of the cluster, in the order they are applied: the root first.

    Without ``janitor``, the janitor's objects are left out (the user may not
    grant it its rights). The TLS Secret is built from ``credentials``.
    """
    scheduler, worker, role = contract.scheduler_name, contract.worker_name, contract.janitor_name
    parts = [
        Part(CONFIG_MAP, contract.root_name, cluster_root, Stage.ROOT),
        Part(SERVICE_ACCOUNT, scheduler, janitor_service_account, janitor=True),
        Part(ROLE, role, janitor_role, janitor=True),
        Part(ROLE_BINDING, role, janitor_role_binding, janitor=True),
        *(
            [Part(SECRET, contract.tls_name, lambda s: tls_secret(s, credentials))]
            if spec.uses_tls
            else []
        ),
        Part(NETWORK_POLICY, contract.network_policy_name, network_policy),
        Part(DEPLOYMENT, scheduler, lambda s: scheduler_deployment(s, janitor)),
        Part(SERVICE, scheduler, scheduler_service),
        Part(DEPLOYMENT, worker, worker_deployment),
        *expose.EXPOSURES[spec.expose]().parts(spec),
    ]
    return [p for p in parts if janitor or not p.janitor]


def cluster_objects(
    spec: ClusterSpec,
    owner: Mapping[str, Any] | None = None,
    janitor: bool = True,
    credentials: Credentials | None = None,
) -> list[Obj]:
    """Every object of the cluster, the root first.

    ``owner`` is the root as the API server returned it; with it, the others
    carry an ownerReference to it. Without it (``minimaldask manifests``),
    delete the cluster by its label: see docs/kubernetes.md.
    """
    return [
        p.build(spec) if p.stage == Stage.ROOT else owned(p.build(spec), owner)
        for p in cluster_parts(spec, janitor, credentials)
    ]


def apply_order(objects: list[Obj], spec: ClusterSpec) -> list[Obj]:
    """``objects`` in the order ``kubectl apply`` should create them: the parts' order.

    The scheduler pod runs as the janitor's ServiceAccount, which must exist before it.
    """
    order = {(p.kind.name, p.name(spec.name)): i for i, p in enumerate(cluster_parts(spec))}
    return sorted(objects, key=lambda o: order.get((o["kind"], o["metadata"]["name"]), len(order)))


def pin_scheduler_address(deployment: Obj, service: Obj) -> Obj:
    """``deployment`` whose pods find the scheduler's Service by its address, not by DNS.

    A cluster started again under the name of one just ended gets a new Service
    of the same name and a new address, and the cluster's DNS answers with the
    old one for as long as it caches it: 30 s in kubeadm's CoreDNS (``ttl 30``,
    ``cache 30``), in which the new workers could not connect (measured: a start
    of 2.6 s took 29 s). The pods' ``/etc/hosts`` (``hostAliases``) holds the
    address the API server gave the Service, which is the Service's for its whole
    life. Manifests printed for ``kubectl apply`` have no address to pin and
    keep the name.
    """
    ip = (service.get("spec") or {}).get("clusterIP")
    if not ip or ip == "None":
        return deployment
    pod = deployment["spec"]["template"]["spec"]
    name = service["metadata"]["name"]
    aliases = [a for a in pod.get("hostAliases", []) if a.get("ip") != ip]
    pod["hostAliases"] = [*aliases, {"ip": ip, "hostnames": [name]}]
    return deployment
