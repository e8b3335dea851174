"""Options refused on the client: the error comes before any request to Kubernetes.

The kubeconfig points at a port where nothing listens: had the client sent a
request first, the error would be a connection failure, not the ValueError.
"""

from __future__ import annotations

import pytest

from minimaldask import MinimalCluster


@pytest.fixture
def unreachable_kubernetes(tmp_path, monkeypatch):
    config = tmp_path / "kubeconfig"
    config.write_text(
        """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: default}}]
current-context: x
"""
    )
    monkeypatch.setenv("KUBECONFIG", str(config))


def test_an_invalid_name(unreachable_kubernetes):
    with pytest.raises(ValueError, match=r"invalid name='Not_A_Name'.*DNS-1123"):
        MinimalCluster(name="Not_A_Name", backend="kubernetes")


def test_apk_packages_with_the_debian_image(unreachable_kubernetes):
    with pytest.raises(ValueError, match=r"Debian-based.*os_packages"):
        MinimalCluster(name="broken", backend="kubernetes", apk_packages="apache2 php7-apache2")
