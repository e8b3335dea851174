"""A small client of the OCI distribution API: push an image, read its versions.

Standard library only. Credentials come from the docker config file
(``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``, the ``auths``
entries); anonymous access otherwise. Bearer-token and basic challenges are
both answered. Plain http only with ``insecure=True``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from minimaldask.exceptions import MinimalDaskError

__all__ = [
    "AuthenticationRequiredError",
    "ImageNotFoundError",
    "Reference",
    "RegistryError",
    "check",
    "image_digest",
    "image_platforms",
    "image_versions",
    "parse_reference",
    "pinned",
    "push",
]

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
VERSION_KEYS = {
    "dask": "org.minimaldask.dask.version",
    "distributed": "org.minimaldask.distributed.version",
    "python": "org.minimaldask.python.version",
}


class RegistryError(MinimalDaskError):
    """The registry could not be reached, refused us, or has no such image."""


class ImageNotFoundError(RegistryError, LookupError):
    """The registry answered: it has no such image (tag or digest)."""


class AuthenticationRequiredError(RegistryError, PermissionError):
    """The registry answered 401 to a request made with the credentials this client has."""


@dataclass(frozen=True)
class Reference:
    """``registry/repository:tag`` or ``...@sha256:...``, split."""

    registry: str
    repository: str
    tag: str

    def __str__(self) -> str:
        sep = "@" if self.tag.startswith("sha256:") else ":"
        return f"{self.registry}/{self.repository}{sep}{self.tag}"


def parse_reference(ref: str) -> Reference:
    """Split an image reference; a name without a registry is an error.

    Registries are never guessed: ``localhost:5000/minimaldask:tag``, not
    ``minimaldask:tag``.
    """
    name, digest_sep, digest = ref.partition("@")
    tag = digest if digest_sep else "latest"
    if not digest_sep:
        head, colon, maybe_tag = name.rpartition(":")
        if colon and "/" not in maybe_tag:
            name, tag = head, maybe_tag
    registry, slash, repository = name.partition("/")
    if not slash or not ("." in registry or ":" in registry or registry == "localhost"):
        raise RegistryError(
            f"{ref!r} names no registry: write it as registry.example:5000/repository:tag"
        )
    if not re.fullmatch(r"[a-z0-9]+(?:[._/-][a-z0-9]+)*", repository):
        raise RegistryError(f"invalid repository name {repository!r} in {ref!r}")
    return Reference(registry, repository, tag)


def _docker_auth(registry: str) -> str | None:
    """The base64 ``user:password`` for a registry from the docker config file."""
    directory = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
    try:
        with open(os.path.join(directory, "config.json")) as f:
            auths = json.load(f).get("auths", {})
    except (OSError, ValueError):
        return None
    for key, value in auths.items():
        host = re.sub(r"^https?://", "", key).split("/")[0]
        if host == registry and isinstance(value, dict):
            if value.get("auth"):
                return str(value["auth"])
            if value.get("username") and value.get("password"):
                pair = f"{value['username']}:{value['password']}"
                return base64.b64encode(pair.encode()).decode()
    return None


@dataclass
class Client:
    """Requests to one registry, with the authentication it asks for."""

    registry: str
    insecure: bool = False
    timeout: float = 30
    _auth: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        """``https://registry`` (``http://`` when insecure)."""
        return f"{'http' if self.insecure else 'https'}://{self.registry}"

    def request(
        self,
        method: str,
        url: str,
        scope: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send a request; answer an authentication challenge once; return status, headers, body."""
        if not url.startswith("http"):
            url = self.base + url
        for attempt in (0, 1):
            req = urllib.request.Request(url, data=data, method=method)
            for key, value in (headers or {}).items():
                req.add_header(key, value)
            if scope in self._auth:
                req.add_header("Authorization", self._auth[scope])
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return resp.status, dict(resp.headers.items()), resp.read()
            except urllib.error.HTTPError as e:
                if e.code == 401 and attempt == 0:
                    self._authenticate(e.headers.get("WWW-Authenticate", ""), scope)
                    continue
                if e.code == 404 and method in ("HEAD", "GET"):
                    return 404, dict(e.headers.items()), b""
                body = e.read().decode("utf-8", "replace")[:300]
                error = AuthenticationRequiredError if e.code == 401 else RegistryError
                raise error(f"{method} {url}: HTTP {e.code} {e.reason} {body}".strip()) from e
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                hint = "" if self.insecure else " (a plain-http registry needs --insecure)"
                raise RegistryError(
                    f"cannot reach the registry {self.registry}: {reason}{hint}"
                ) from e
        raise AuthenticationRequiredError(f"{method} {url}: authentication refused")

    def _authenticate(self, challenge: str, scope: str) -> None:
        scheme, _, params = challenge.partition(" ")
        creds = _docker_auth(self.registry)
        if scheme.lower() == "basic":
            if creds is None:
                raise RegistryError(
                    f"{self.registry} asks for a login: run 'docker login {self.registry}'"
                )
            self._auth[scope] = f"Basic {creds}"
            return
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        if scheme.lower() != "bearer" or "realm" not in fields:
            raise RegistryError(f"{self.registry}: unsupported authentication {challenge!r}")
        query = {"service": fields.get("service", ""), "scope": fields.get("scope", scope)}
        req = urllib.request.Request(f"{fields['realm']}?{urllib.parse.urlencode(query)}")
        if creds:
            req.add_header("Authorization", f"Basic {creds}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                token = json.load(resp)
        except urllib.error.HTTPError as e:
            error = AuthenticationRequiredError if e.code == 401 else RegistryError
            raise error(
                f"{self.registry} refused a token for {scope} (HTTP {e.code}):"
                f" run 'docker login {self.registry}'"
            ) from e
        except (urllib.error.URLError, OSError) as e:
            raise RegistryError(f"cannot reach the token service {fields['realm']}: {e}") from e
        self._auth[scope] = f"Bearer {token.get('token') or token.get('access_token')}"

    def get_json(self, ref: Reference, what: str, accept: str = ACCEPT) -> tuple[str, Any]:
        """GET a manifest (``what`` = tag or digest); return media type and JSON."""
        scope = f"repository:{ref.repository}:pull"
        status, headers, body = self.request(
            "GET", f"/v2/{ref.repository}/manifests/{what}", scope, headers={"Accept": accept}
        )
        if status == 404:
            raise ImageNotFoundError(f"no image {ref.registry}/{ref.repository}:{what}")
        data = json.loads(body)
        media = headers.get("Content-Type", data.get("mediaType", "")).split(";")[0]
        return media, data

    def get_blob(self, ref: Reference, digest: str) -> bytes:
        """GET a blob by digest."""
        scope = f"repository:{ref.repository}:pull"
        status, _, body = self.request("GET", f"/v2/{ref.repository}/blobs/{digest}", scope)
        if status == 404:
            raise RegistryError(f"blob {digest} missing in {ref.registry}/{ref.repository}")
        return body

    def push_blob(self, ref: Reference, digest: str, data: bytes) -> bool:
        """Upload a blob unless the registry has it; return whether it was sent."""
        scope = f"repository:{ref.repository}:pull,push"
        path = f"/v2/{ref.repository}/blobs/{digest}"
        status, _, _ = self.request("HEAD", path, scope)
        if status == 200:
            return False
        _, headers, _ = self.request("POST", f"/v2/{ref.repository}/blobs/uploads/", scope)
        location = headers.get("Location", "")
        if location.startswith("/"):
            location = self.base + location
        sep = "&" if "?" in location else "?"
        self.request(
            "PUT",
            f"{location}{sep}digest={urllib.parse.quote(digest)}",
            scope,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return True

    def push_manifest(self, ref: Reference, what: str, media_type: str, data: bytes) -> None:
        """PUT a manifest or index under a tag or digest."""
        scope = f"repository:{ref.repository}:pull,push"
        self.request(
            "PUT",
            f"/v2/{ref.repository}/manifests/{what}",
            scope,
            data=data,
            headers={"Content-Type": media_type},
        )


def _platform_of(entry: dict[str, Any]) -> str:
    plat = entry.get("platform", {})
    name = f"{plat.get('os', '?')}/{plat.get('architecture', '?')}"
    return f"{name}/{plat['variant']}" if plat.get("variant") else name


def image_platforms(ref: str, insecure: bool = False) -> list[str]:
    """The platforms of an image in a registry, e.g. ``['linux/amd64', 'linux/arm64']``."""
    parsed = parse_reference(ref)
    client = Client(parsed.registry, insecure)
    media, data = client.get_json(parsed, parsed.tag)
    if media in INDEX_TYPES or "manifests" in data:
        return sorted(_platform_of(m) for m in data.get("manifests", []) if "platform" in m)
    config = json.loads(client.get_blob(parsed, data["config"]["digest"]))
    plat = {"platform": {k: config.get(k) for k in ("os", "architecture", "variant")}}
    return [_platform_of(plat)]


def image_digest(ref: str, insecure: bool = False) -> str:
    """The digest a tag names now (of its index, or of its manifest): ``sha256:...``.

    A cluster runs ``repository@digest``, so that its scheduler and every worker
    run the same build, whatever the tag names later.
    """
    parsed = parse_reference(ref)
    if parsed.tag.startswith("sha256:"):
        return parsed.tag
    client = Client(parsed.registry, insecure)
    scope = f"repository:{parsed.repository}:pull"
    status, _, body = client.request(
        "GET", f"/v2/{parsed.repository}/manifests/{parsed.tag}", scope, headers={"Accept": ACCEPT}
    )
    if status == 404:
        raise ImageNotFoundError(f"no image {parsed.registry}/{parsed.repository}:{parsed.tag}")
    return "sha256:" + hashlib.sha256(body).hexdigest()


def pinned(ref: str, digest: str) -> str:
    """``ref`` with its tag replaced by ``digest``: ``registry/repository@sha256:...``."""
    parsed = parse_reference(ref)
    return f"{parsed.registry}/{parsed.repository}@{digest}"


def image_versions(ref: str, insecure: bool = False) -> dict[str, str]:
    """The dask, distributed and Python versions an image was built with.

    Read from the image index's annotations, else from the labels of the
    (first) image's config. Returns ``{"dask": ..., "distributed": ...,
    "python": "3.11"}``; a key is missing when the image does not record it.
    """
    parsed = parse_reference(ref)
    client = Client(parsed.registry, insecure)
    media, data = client.get_json(parsed, parsed.tag)
    annotations = data.get("annotations") or {}
    found = {k: annotations[v] for k, v in VERSION_KEYS.items() if v in annotations}
    if len(found) == len(VERSION_KEYS):
        return found
    if media in INDEX_TYPES or "manifests" in data:
        manifests = data.get("manifests", [])
        if not manifests:
            raise RegistryError(f"{ref} is an empty image index")
        _, data = client.get_json(parsed, manifests[0]["digest"])
    config = json.loads(client.get_blob(parsed, data["config"]["digest"]))
    labels = (config.get("config") or {}).get("Labels") or {}
    return {k: labels[v] for k, v in VERSION_KEYS.items() if v in labels}


def check(ref: str, insecure: bool = False) -> None:
    """Fail early, before a build, when a registry cannot be reached."""
    parsed = parse_reference(ref)
    client = Client(parsed.registry, insecure, timeout=10)
    # A registry that answers 401 to an anonymous look is reachable: the push logs in.
    with contextlib.suppress(AuthenticationRequiredError):
        client.request("GET", "/v2/", f"repository:{parsed.repository}:pull")


def push(
    ref: str,
    blobs: Iterable[tuple[str, bytes]],
    manifests: Iterable[tuple[str, str, bytes]],
    index: tuple[str, str, bytes],
    insecure: bool = False,
) -> int:
    """Push blobs, then manifests by digest, then the index under the reference's tag.

    ``blobs`` are ``(digest, data)``; ``manifests`` and ``index`` are
    ``(digest, media type, data)``. Returns the number of blobs uploaded.
    """
    parsed = parse_reference(ref)
    client = Client(parsed.registry, insecure)
    sent = sum(client.push_blob(parsed, digest, data) for digest, data in blobs)
    for digest, media, data in manifests:
        client.push_manifest(parsed, digest, media, data)
    client.push_manifest(parsed, parsed.tag, index[1], index[2])
    return sent
