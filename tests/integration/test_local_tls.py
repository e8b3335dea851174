"""TLS on the local backend, when asked: a CA of the cluster's own, mutual authentication."""

from __future__ import annotations

import pytest
from distributed import Client

from minimaldask import MinimalCluster

pytestmark = pytest.mark.slow


def test_a_local_cluster_with_tls_refuses_a_client_without_its_certificate(cluster_name):
    with MinimalCluster(name=cluster_name, backend="local", workers=1, tls=True) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3
        # No certificate: the TLS handshake is refused.
        with pytest.raises(OSError):
            Client(cluster.scheduler_address.replace("tls://", "tcp://"), timeout=5)
        from distributed.security import Security

        stranger = Security.temporary()  # a certificate, but not signed by this cluster's CA
        with pytest.raises(OSError):
            Client(cluster.scheduler_address, security=stranger, timeout=5)
        # Another process of this user attaches with the cluster's own files.
        again = MinimalCluster.from_name(cluster_name, backend="local")
        with Client(again) as client:
            assert client.submit(sum, [2, 3]).result(timeout=60) == 5
        again.close()


def test_the_local_backend_is_plain_tcp_on_loopback_by_default(cluster_name):
    with MinimalCluster(name=cluster_name, backend="local", workers=1) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
