"""A cluster started again under the name of one just ended reaches its own scheduler.

The new Service has a new address, and the cluster's DNS answers with the old
one for as long as it caches it (30 s in kubeadm's CoreDNS and in localkube);
its workers must not depend on that answer.
"""

from __future__ import annotations

import pytest
from distributed import Client

import localkube
from minimaldask import MinimalCluster

pytestmark = [pytest.mark.kube, pytest.mark.slow]


def test_a_cluster_started_again_under_its_name_pins_its_new_service_address(kube, cluster_name):
    service = f"{cluster_name}-scheduler"
    # The cluster's DNS, asked directly (a resolver would read /etc/hosts first).
    fqdn = f"{service}.{kube.namespace}.svc.{localkube.CLUSTER_DOMAIN}"
    with MinimalCluster(name=cluster_name, workers=1, quiet=True):
        old_ip = kube.get("service", service)["spec"]["clusterIP"]
        # The cluster's DNS has answered for the name (and caches the answer).
        assert localkube.dns_query(fqdn) == [old_ip]
    with MinimalCluster(name=cluster_name, workers=2, quiet=True) as second:
        new_ip = kube.get("service", service)["spec"]["clusterIP"]
        assert new_ip != old_ip, "the Service got its old address again: nothing to tell apart"
        for pod in kube.pods(cluster_name, "worker").values():
            assert pod["spec"]["hostAliases"] == [{"ip": new_ip, "hostnames": [service]}]
        with Client(second) as client:
            client.wait_for_workers(2, timeout=120)
            resolved = client.run(__import__("socket").gethostbyname, service)
            assert set(resolved.values()) == {new_ip}, resolved
        dns = localkube.dns_query(fqdn)
        print(
            f"Service {service}: {old_ip}, then {new_ip}; the workers resolve {new_ip}; "
            f"the cluster's DNS answered {dns}"
            + (
                " (the old address: without the pin the workers would wait)"
                if old_ip in dns
                else ""
            )
        )
