"""A cluster started again under the name of one just ended reaches its own scheduler.

The new Service has a new address, and the cluster's DNS answers with the old
one for as long as it caches it (30 s in kubeadm's CoreDNS and in localkube);
its workers must not depend on that answer.
"""

from __future__ import annotations

import pytest
from distributed import Client

from minimaldask import MinimalCluster

pytestmark = [pytest.mark.kube, pytest.mark.slow]


def test_a_cluster_started_again_under_its_name_pins_its_new_service_address(kube, cluster_name):
    # Local: sent to the workers by value (they cannot import this module).
    def dns_answer(name: str) -> list[str]:
        """The A records the pod's nameserver gives for ``name`` (its search list applied).

        A query of our own: the resolver of the C library would read /etc/hosts first.
        """
        import random
        import socket
        import struct

        with open("/etc/resolv.conf") as f:
            conf = f.read().split("\n")
        server = next(line.split()[1] for line in conf if line.startswith("nameserver"))
        search = next((line.split()[1:] for line in conf if line.startswith("search")), [])
        fqdn = f"{name}.{search[0]}" if search else name
        qid = random.randrange(65536)
        question = b"".join(bytes([len(p)]) + p.encode() for p in fqdn.split(".")) + b"\0"
        query = (
            struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(query, (server, 53))
            reply = s.recv(4096)
        answers = struct.unpack(">H", reply[6:8])[0]
        at = 12 + len(question) + 4
        found = []
        for _ in range(answers):
            at += 2 if reply[at] & 0xC0 == 0xC0 else len(question)  # a pointer to the question
            kind, _, _, length = struct.unpack(">HHIH", reply[at : at + 10])
            at += 10
            if kind == 1 and length == 4:
                found.append(socket.inet_ntoa(reply[at : at + 4]))
            at += length
        return found

    service = f"{cluster_name}-scheduler"
    with MinimalCluster(name=cluster_name, workers=1, quiet=True) as first:
        old_ip = kube.get("service", service)["spec"]["clusterIP"]
        with Client(first) as client:
            # The cluster's DNS has answered for the name (and caches the answer).
            (seen,) = client.run(dns_answer, service).values()
            assert seen == [old_ip]
    with MinimalCluster(name=cluster_name, workers=2, quiet=True) as second:
        new_ip = kube.get("service", service)["spec"]["clusterIP"]
        assert new_ip != old_ip, "the Service got its old address again: nothing to tell apart"
        for pod in kube.pods(cluster_name, "worker").values():
            assert pod["spec"]["hostAliases"] == [{"ip": new_ip, "hostnames": [service]}]
        with Client(second) as client:
            client.wait_for_workers(2, timeout=120)
            resolved = client.run(__import__("socket").gethostbyname, service)
            assert set(resolved.values()) == {new_ip}, resolved
            dns = client.run(dns_answer, service)
        stale = [ip for answer in dns.values() for ip in answer if ip == old_ip]
        print(
            f"Service {service}: {old_ip}, then {new_ip}; the workers resolve {new_ip}; "
            f"the cluster's DNS answered {sorted(dns.values())}"
            + (" (the old address: without the pin the workers would wait)" if stale else "")
        )
