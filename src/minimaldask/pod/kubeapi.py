"""The few Kubernetes API calls the janitor makes, with its pod's service account.

The image has no Kubernetes client library and needs none: this is urllib,
the token and the cluster's CA that the kubelet mounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import urllib.error
import urllib.request
from typing import Any

from minimaldask.contract import TOKEN_DIR


class KubernetesAPI:
    """The few REST calls the janitor needs, with the pod's service account.

    The image has no Kubernetes client library and needs none: this is
    urllib, the token and the cluster CA the kubelet mounts.
    """

    def __init__(self, namespace: str, token_dir: str = TOKEN_DIR) -> None:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        self.base = f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}"
        self.namespace = namespace
        self.token_path = os.path.join(token_dir, "token")
        self.ssl = ssl.create_default_context(cafile=os.path.join(token_dir, "ca.crt"))

    @classmethod
    def available(cls, token_dir: str = TOKEN_DIR) -> bool:
        """Whether this process runs in a pod with a service account token."""
        return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(
            os.path.join(token_dir, "token")
        )

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "") -> Any:
        with open(self.token_path) as f:  # re-read: projected tokens rotate
            token = f.read().strip()
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Authorization": f"Bearer {token}"}
        )
        if data is not None:
            request.add_header("Content-Type", content_type or "application/json")
        try:
            with urllib.request.urlopen(request, context=self.ssl, timeout=10) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            with contextlib.suppress(ValueError, KeyError):
                detail = json.loads(detail)["message"]
            raise RuntimeError(f"{method} {path}: HTTP {e.code}: {detail}") from None
        return json.loads(payload) if payload else None

    async def call(self, method: str, path: str, body: Any = None, content_type: str = "") -> Any:
        """One API call, off the event loop."""
        return await asyncio.to_thread(self._call, method, path, body, content_type)

    def _deployment(self, name: str) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}"

    async def delete_deployment(self, name: str) -> None:
        """Delete a Deployment; its dependents are garbage-collected."""
        await self.call("DELETE", self._deployment(name), {"propagationPolicy": "Background"})

    async def get_deployment(self, name: str) -> dict[str, Any]:
        """A Deployment object."""
        result: dict[str, Any] = await self.call("GET", self._deployment(name))
        return result

    async def set_replicas(self, name: str, replicas: int) -> None:
        """Patch a Deployment's scale subresource."""
        await self.call(
            "PATCH",
            self._deployment(name) + "/scale",
            {"spec": {"replicas": replicas}},
            "application/merge-patch+json",
        )

    def _config_map(self, name: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps/{name}"

    async def get_config_map(self, name: str) -> dict[str, str]:
        """The data of a ConfigMap."""
        result: dict[str, Any] = await self.call("GET", self._config_map(name))
        return dict(result.get("data") or {})

    async def set_config_map_data(self, name: str, data: dict[str, str]) -> None:
        """Merge keys into a ConfigMap's data."""
        await self.call(
            "PATCH", self._config_map(name), {"data": data}, "application/merge-patch+json"
        )

    async def annotate_pod(self, name: str, annotations: dict[str, str]) -> None:
        """Merge annotations into a pod."""
        await self.call(
            "PATCH",
            f"/api/v1/namespaces/{self.namespace}/pods/{name}",
            {"metadata": {"annotations": annotations}},
            "application/merge-patch+json",
        )
