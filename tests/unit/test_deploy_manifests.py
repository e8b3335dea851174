"""deploy/kubernetes/ holds the output of `minimaldask manifests` for kubectl and GitOps users."""

from __future__ import annotations

from pathlib import Path

import dask

from minimaldask.cli.kube import default_manifests

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "dask.yaml"


def test_deploy_manifests_are_in_sync_with_the_code():
    # Regenerate with: python -m minimaldask.cli.kube > deploy/kubernetes/dask.yaml
    with dask.config.set({"minimaldask.image.tag": None}):
        assert DEPLOY.read_text() == default_manifests(), (
            f"{DEPLOY} is stale; regenerate it: python -m minimaldask.cli.kube > {DEPLOY}"
        )
