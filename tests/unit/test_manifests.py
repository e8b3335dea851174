"""Manifests are pure functions of the spec: checked here without any cluster."""

from __future__ import annotations

import shlex

import pytest

from minimaldask import contract
from minimaldask.kubernetes import manifests
from minimaldask.spec import ClusterSpec
from minimaldask.tls import Credentials


def spec(**options):
    options.setdefault("name", "demo")
    options.setdefault("namespace", "team")
    options.setdefault("backend", "kubernetes")
    return ClusterSpec.from_options(**options)


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


CREDENTIALS = Credentials.make("demo", [])


def objects(s, *args, **kwargs):
    return manifests.cluster_objects(s, *args, credentials=CREDENTIALS, **kwargs)


def by_kind(objects):
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_objects_are_named_per_cluster():
    objs = by_kind(objects(spec()))
    assert set(objs) == {
        ("Deployment", "demo-scheduler"),
        ("Deployment", "demo-worker"),
        ("Service", "demo-scheduler"),
        ("ServiceAccount", "demo-scheduler"),
        ("Role", "demo-janitor"),
        ("RoleBinding", "demo-janitor"),
        ("ConfigMap", "demo-cluster"),
        ("Secret", "demo-tls"),
        ("NetworkPolicy", "demo-network"),
    }
    for obj in objs.values():
        assert obj["metadata"]["namespace"] == "team"
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "minimaldask"
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "minimaldask"
        assert labels["app.kubernetes.io/component"] in ("scheduler", "worker")


def test_two_clusters_do_not_share_names_or_selectors():
    a = objects(spec(name="a"))
    b = objects(spec(name="b"))
    assert not {o["metadata"]["name"] for o in a} & {o["metadata"]["name"] for o in b}
    (sched_a,) = [
        o for o in a if o["metadata"]["name"] == "a-scheduler" and o["kind"] == "Deployment"
    ]
    (sched_b,) = [
        o for o in b if o["metadata"]["name"] == "b-scheduler" and o["kind"] == "Deployment"
    ]
    assert sched_a["spec"]["selector"]["matchLabels"] != sched_b["spec"]["selector"]["matchLabels"]


def test_every_object_is_owned_by_the_root():
    owner = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "demo-cluster", "uid": "1234"},
    }
    objs = objects(spec(), owner)
    assert objs[0]["kind"] == "ConfigMap" and objs[0]["metadata"]["name"] == "demo-cluster"
    assert "ownerReferences" not in objs[0]["metadata"]
    for child in objs[1:]:
        assert child["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "demo-cluster", "uid": "1234"}
        ]


def test_service_ports_are_named_and_select_the_scheduler():
    svc = manifests.scheduler_service(spec(port=9000, dashboard_port=9001))
    assert svc["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [
        ("tcp-comm", 9000),
        ("http-dashboard", 9001),
    ]
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "scheduler"


@pytest.mark.parametrize(
    ("expose", "kind"), [("nodeport", "NodePort"), ("loadbalancer", "LoadBalancer")]
)
def test_expose_changes_the_service_type(expose, kind):
    assert manifests.scheduler_service(spec(expose=expose))["spec"]["type"] == kind


def test_scheduler_and_workers_are_sized_separately():
    s = spec(resources={"cpu": "2", "memory": "4Gi"})
    sched = manifests.scheduler_deployment(s)["spec"]["template"]["spec"]["containers"][0]
    worker = manifests.worker_deployment(s)["spec"]["template"]["spec"]["containers"][0]
    assert sched["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"memory": "512Mi"},
    }
    assert worker["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "4Gi"},
    }


def test_worker_arguments_come_from_resources_and_pod():
    s = spec(resources={"cpu": "1500m", "memory": "1Gi"}, death_timeout="45s", workers=4)
    dep = manifests.worker_deployment(s)
    assert dep["spec"]["replicas"] == 4
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    names = [e["name"] for e in container["env"]]
    # $(POD_NAME) only expands if POD_NAME is defined before ARGUMENTS.
    assert names.index("POD_NAME") < names.index("ARGUMENTS")
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["WORKER"] == "1"
    assert env["DASK_SCHEDULER_ADDRESS"] == "tls://demo-scheduler:8786"
    assert env["MINIMALDASK_TLS_DIR"] == "/etc/minimaldask/tls"
    plain = env_of(
        manifests.worker_deployment(spec(tls=False))["spec"]["template"]["spec"]["containers"][0]
    )
    assert plain["DASK_SCHEDULER_ADDRESS"] == "tcp://demo-scheduler:8786"
    assert "MINIMALDASK_TLS_DIR" not in plain
    args = shlex.split(env["ARGUMENTS"])
    assert args[args.index("--name") + 1] == "$(POD_NAME)"
    assert args[args.index("--nthreads") + 1] == "2"
    assert args[args.index("--memory-limit") + 1] == str(2**30)
    assert args[args.index("--death-timeout") + 1] == "45s"


def test_worker_options_come_last():
    s = spec(worker_options="--nthreads 8 --resources GPU=1")
    args = shlex.split(
        env_of(manifests.worker_deployment(s)["spec"]["template"]["spec"]["containers"][0])[
            "ARGUMENTS"
        ]
    )
    assert args[-4:] == ["--nthreads", "8", "--resources", "GPU=1"]


@pytest.mark.parametrize(
    "builder",
    [
        manifests.worker_deployment,
        lambda s: manifests.scheduler_deployment(s, janitor=False),
        manifests.scheduler_deployment,
    ],
)
def test_pods_are_locked_down(builder):
    pod = builder(spec())["spec"]["template"]["spec"]
    # No container gets a token but the janitor's own: see the next test.
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
    assert tmp["emptyDir"]["sizeLimit"]  # a worker that fills it is evicted, not the node
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"


def test_only_the_janitors_container_mounts_the_token():
    pod = manifests.scheduler_deployment(spec())["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "demo-scheduler"
    scheduler, janitor = pod["containers"]
    assert janitor["name"] == "janitor"
    assert janitor["command"] == ["python3", "-m", "minimaldask.pod.janitor"]
    assert all(
        m["mountPath"] != "/var/run/secrets/kubernetes.io/serviceaccount"
        for m in scheduler["volumeMounts"]
    )
    assert {
        "name": "janitor-token",
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
        "readOnly": True,
    } in janitor["volumeMounts"]
    assert env_of(scheduler)["MINIMALDASK_JANITOR_PORT"] == "8789"
    no_janitor = manifests.scheduler_deployment(spec(), janitor=False)["spec"]["template"]["spec"]
    assert len(no_janitor["containers"]) == 1
    assert "MINIMALDASK_JANITOR_PORT" not in env_of(no_janitor["containers"][0])


def test_workers_report_ready_while_unretired_and_drain_before_they_stop():
    s = spec(resources={"cpu": "1", "memory": "2Gi"})
    pod = manifests.worker_deployment(s)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/minimaldask/ready", "port": "http-health"}
    assert c["lifecycle"]["preStop"]["exec"]["command"] == [
        "python3",
        "-m",
        "minimaldask.pod.drain",
    ]
    # 2Gi moves in about 43 s at 50 MB/s: 30 s more for the rest.
    assert pod["terminationGracePeriodSeconds"] == 30 + 43
    assert env_of(c)["MINIMALDASK_DRAIN_TIMEOUT"] == str(73 - 10)
    assert "--preload" in shlex.split(env_of(c)["ARGUMENTS"])
    pod = manifests.worker_deployment(spec(worker_grace_period=600))["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 600


def test_scheduler_probes_its_dashboard_and_exposes_named_ports():
    c = manifests.scheduler_deployment(spec())["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http-dashboard"}
    assert {p["name"] for p in c["ports"]} == {"tcp-comm", "http-dashboard"}


def test_packages_and_env_reach_both_roles():
    s = spec(pip_packages="camelcase pymongo", os_packages=["libgomp1"], env={"A": "1"})
    for builder in (manifests.scheduler_deployment, manifests.worker_deployment):
        env = env_of(builder(s)["spec"]["template"]["spec"]["containers"][0])
        assert env["EXTRA_PIP_PACKAGES"] == "camelcase pymongo"
        assert env["EXTRA_OS_PACKAGES"] == "libgomp1"
        assert env["A"] == "1"


def test_cost_controls_are_readable_by_the_janitor():
    s = spec(idle_timeout="10 minutes", no_client_timeout=None, max_lifetime="2h")
    env = env_of(manifests.scheduler_deployment(s)["spec"]["template"]["spec"]["containers"][0])
    assert env["MINIMALDASK_IDLE_TIMEOUT"] == "600"
    assert env["MINIMALDASK_NO_CLIENT_TIMEOUT"] == ""
    assert env["MINIMALDASK_MAX_LIFETIME"] == "7200"
    assert env["MINIMALDASK_CLUSTER_NAME"] == "demo"


def test_placement_options():
    s = spec(
        node_selector={"pool": "spot"},
        tolerations=[{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
        image_pull_secrets="regcred",
        annotations={"team": "data"},
        labels={"cost-center": "42"},
    )
    for builder in (manifests.scheduler_deployment, manifests.worker_deployment):
        dep = builder(s)
        pod = dep["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"pool": "spot"}
        assert pod["tolerations"][0]["key"] == "spot"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert dep["metadata"]["annotations"] == {"team": "data"}
        assert dep["spec"]["template"]["metadata"]["labels"]["cost-center"] == "42"
        # The user's labels never replace ours.
        assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"


def test_raw_patch_merges_into_each_object():
    s = spec(
        patch={
            "worker": {"spec": {"template": {"spec": {"priorityClassName": "low"}}}},
            "scheduler": {"spec": {"template": {"spec": {"nodeSelector": {"pool": "stable"}}}}},
            "service": {"metadata": {"annotations": {"x": "y"}}},
        }
    )
    assert manifests.worker_deployment(s)["spec"]["template"]["spec"]["priorityClassName"] == "low"
    w = manifests.worker_deployment(s)["spec"]["template"]["spec"]
    assert w["containers"][0]["name"] == "worker"
    assert manifests.scheduler_deployment(s)["spec"]["template"]["spec"]["nodeSelector"] == {
        "pool": "stable"
    }
    assert manifests.scheduler_service(s)["metadata"]["annotations"] == {"x": "y"}


def test_deep_merge_removes_with_none():
    assert manifests.deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": None}}) == {"a": {"c": 2}}


def test_label_selector():
    assert contract.label_selector("demo", "worker") == (
        "app.kubernetes.io/name=minimaldask,app.kubernetes.io/instance=demo,"
        "app.kubernetes.io/component=worker"
    )


def test_the_janitor_may_touch_only_this_clusters_objects():
    objs = by_kind(objects(spec()))
    rules = objs[("Role", "demo-janitor")]["rules"]
    assert all(r.get("resourceNames") for r in rules), "every right names its objects"
    assert not [r for r in rules if "pods" in r["resources"]], "no right on pods"
    deployments = next(r for r in rules if r["resources"] == ["deployments"])
    assert deployments["resourceNames"] == ["demo-scheduler", "demo-worker"]
    # No patch: a patched pod template could name any ServiceAccount of the namespace.
    assert set(deployments["verbs"]) == {"get"}
    root = next(r for r in rules if r["resources"] == ["configmaps"])
    assert root["resourceNames"] == ["demo-cluster"]
    assert set(root["verbs"]) == {"get", "patch", "delete"}
    scale = next(r for r in rules if r["resources"] == ["deployments/scale"])
    assert scale["resourceNames"] == ["demo-worker"]
    binding = objs[("RoleBinding", "demo-janitor")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "demo-scheduler", "namespace": "team"}
    ]
    sa = objs[("ServiceAccount", "demo-scheduler")]
    assert sa["automountServiceAccountToken"] is False  # only the janitor's container mounts one
    args = shlex.split(
        env_of(objs[("Deployment", "demo-scheduler")]["spec"]["template"]["spec"]["containers"][0])[
            "ARGUMENTS"
        ]
    )
    assert args[:2] == ["--preload", "minimaldask.pod.plugin"]


def test_without_the_janitor_the_scheduler_has_no_token():
    objs = by_kind(objects(spec(), janitor=False))
    assert ("Role", "demo-janitor") not in objs
    pod = objs[("Deployment", "demo-scheduler")]["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize(
    ("patch", "found"),
    [
        ({"worker": {"spec": {"template": {"spec": {"hostNetwork": True}}}}}, "hostNetwork"),
        (
            {"scheduler": {"spec": {"template": {"spec": {"securityContext": None}}}}},
            "runAsNonRoot is not true",
        ),
        (
            {
                "worker": {
                    "spec": {
                        "template": {
                            "spec": {"volumes": [{"name": "docker", "hostPath": {"path": "/var"}}]}
                        }
                    }
                }
            },
            "hostPath volume 'docker'",
        ),
        (
            {
                "worker": {
                    "spec": {
                        "template": {
                            "spec": {"initContainers": [{"name": "setup", "image": "busybox"}]}
                        }
                    }
                }
            },
            "container 'setup': allowPrivilegeEscalation is not false",
        ),
    ],
)
def test_a_patch_that_weakens_the_pods_is_refused_unless_allowed(patch, found):
    with pytest.raises(ValueError, match="weakens the pods' security") as info:
        manifests.check_patch(spec(patch=patch))
    assert found in str(info.value)
    assert "allow_unsafe_patch=True" in str(info.value)
    manifests.check_patch(spec(patch=patch, allow_unsafe_patch=True))


def test_the_default_pods_and_a_harmless_patch_pass_the_check():
    assert manifests.security_weakenings(spec()) == []
    manifests.check_patch(spec(patch={"worker": {"metadata": {"labels": {"team": "a"}}}}))


def test_the_network_policy_admits_the_cluster_the_named_peers_and_what_expose_needs():
    jupyter = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hub"}}}
    policy = manifests.network_policy(spec(allow_from=[jupyter]))
    own = {"app.kubernetes.io/name": "minimaldask", "app.kubernetes.io/instance": "demo"}
    assert policy["spec"]["podSelector"] == {"matchLabels": own}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": own}}, jupyter]
    # NodePort: the comm port (TLS) from anywhere, and the dashboard not published at all.
    s = spec(expose="nodeport")
    _, anywhere = manifests.network_policy(s)["spec"]["ingress"]
    assert anywhere["ports"] == [{"port": 8786, "protocol": "TCP"}]
    assert [p["name"] for p in manifests.scheduler_service(s)["spec"]["ports"]] == ["tcp-comm"]
    ports = manifests.scheduler_service(spec())["spec"]["ports"]
    assert [p["name"] for p in ports] == ["tcp-comm", "http-dashboard"]


def test_the_pods_mount_the_cluster_certificate_but_not_the_clients_key():
    s = spec()
    secret = manifests.tls_secret(s, CREDENTIALS)
    assert set(secret["stringData"]) == {"ca.crt", "tls.crt", "tls.key", "client.crt", "client.key"}
    for build in (manifests.scheduler_deployment, manifests.worker_deployment):
        pod = build(s)["spec"]["template"]["spec"]
        (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert tls["secret"]["secretName"] == "demo-tls"
        assert {i["key"] for i in tls["secret"]["items"]} == {"ca.crt", "tls.crt", "tls.key"}
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "tls", "mountPath": "/etc/minimaldask/tls", "readOnly": True} in mounts
    with pytest.raises(ValueError, match="credentials"):
        manifests.tls_secret(s, None)


def test_the_workers_find_the_scheduler_by_the_address_the_api_server_gave_its_service():
    from minimaldask.kubernetes.manifests import pin_scheduler_address, worker_deployment

    spec = ClusterSpec.from_options(name="demo", namespace="ns")
    service = {"metadata": {"name": "demo-scheduler"}, "spec": {"clusterIP": "10.96.7.8"}}
    pod = pin_scheduler_address(worker_deployment(spec), service)["spec"]["template"]["spec"]
    assert pod["hostAliases"] == [{"ip": "10.96.7.8", "hostnames": ["demo-scheduler"]}]
    # The name it pins is the one the workers connect to.
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["DASK_SCHEDULER_ADDRESS"].split("//")[-1] == "demo-scheduler:8786"
    # Applied again: one entry, the Service's.
    deployment = worker_deployment(spec)
    deployment["spec"]["template"]["spec"]["hostAliases"] = [
        {"ip": "10.96.7.8", "hostnames": ["demo-scheduler"]},
        {"ip": "192.0.2.1", "hostnames": ["db"]},
    ]
    pinned = pin_scheduler_address(deployment, service)["spec"]["template"]["spec"]
    assert pinned["hostAliases"] == [
        {"ip": "192.0.2.1", "hostnames": ["db"]},
        {"ip": "10.96.7.8", "hostnames": ["demo-scheduler"]},
    ]
    # No address to pin (a headless Service, or none yet): the name, as in printed manifests.
    for ip in ("None", None):
        headless = {"metadata": {"name": "demo-scheduler"}, "spec": {"clusterIP": ip}}
        pod = pin_scheduler_address(worker_deployment(spec), headless)["spec"]["template"]["spec"]
        assert "hostAliases" not in pod
