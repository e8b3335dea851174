"""The few Kubernetes API calls the janitor makes, with its pod's service account.

The image has no Kubernetes client library and needs none: this is urllib,
the token and the cluster's CA that the kubelet mounts. Every call has a
deadline; a refusal raises :class:`APIError` with the HTTP status, so that the
janitor tells a lasting refusal (403) from a passing one by its code.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from minimaldask.contract import TOKEN_DIR

#: Seconds one API call may take.
TIMEOUT = 10.0


class APIError(Exception):
    """The API server refused a call, or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def timestamp(value: str) -> float:
    """Seconds since the epoch of an API timestamp (``2026-11-29T10:00:00Z``)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class KubernetesAPI:
    """The calls the janitor needs, each on one object of its own cluster."""

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

    def call(self, method: str, path: str, body: Any = None, content_type: str = "") -> Any:
        """One API call; raises :class:`APIError`."""
        with open(self.token_path) as f:  # re-read: projected tokens rotate
            token = f.read().strip()
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Authorization": f"Bearer {token}"}
        )
        if data is not None:
            request.add_header("Content-Type", content_type or "application/json")
        try:
            with urllib.request.urlopen(request, context=self.ssl, timeout=TIMEOUT) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            with contextlib.suppress(ValueError, KeyError):
                detail = json.loads(detail)["message"]
            raise APIError(e.code, f"{method} {path}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise APIError(0, f"{method} {path}: {getattr(e, 'reason', e)}") from None
        return json.loads(payload) if payload else None

    def _deployment(self, name: str) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}"

    def _config_map(self, name: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps/{name}"

    def get_deployment(self, name: str) -> dict[str, Any]:
        """A Deployment, with its status."""
        result: dict[str, Any] = self.call("GET", self._deployment(name))
        return result

    def set_replicas(self, name: str, replicas: int) -> None:
        """Change a Deployment's replicas through its scale subresource (nothing else)."""
        self.call(
            "PATCH",
            self._deployment(name) + "/scale",
            {"spec": {"replicas": replicas}},
            "application/merge-patch+json",
        )

    def get_config_map(self, name: str) -> dict[str, Any]:
        """A ConfigMap (its data, and its metadata: when it was made)."""
        result: dict[str, Any] = self.call("GET", self._config_map(name))
        return result

    def set_config_map_data(self, name: str, data: dict[str, str]) -> None:
        """Merge keys into a ConfigMap's data."""
        self.call("PATCH", self._config_map(name), {"data": data}, "application/merge-patch+json")

    def delete_config_map(self, name: str) -> None:
        """Delete a ConfigMap; whatever it owns is garbage-collected."""
        self.call("DELETE", self._config_map(name), {"propagationPolicy": "Background"})
