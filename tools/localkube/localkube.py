#!/usr/bin/env python3
"""localkube: a real one-node Kubernetes cluster, built from the registries.

Usage: localkube.py up [--audit] | down | status | env | build | push-image | binfmt
                   | shaped-registry up|down|status | remove-image | audit | leaks

Standard library only: it runs before the project is installed.
See README.md next to this file.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
import datetime
import functools
import gzip
import hashlib
import io
import ipaddress
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

K8S_VERSION = "v1.33.13"
ETCD_VERSION = "v3.5.21"  # what k8s.io/kubernetes v1.33.13 requires
COREDNS_VERSION = "v1.14.7"
PAUSE_VERSION = "3.10"
KUBE_ROUTER_VERSION = "v2.1.0"  # NetworkPolicy; the only version the module proxy serves

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "recipe"
CACHE_ROOT = Path(os.environ.get("LOCALKUBE_CACHE", "/var/cache/localkube"))
STATE = Path(os.environ.get("LOCALKUBE_STATE", "/var/lib/localkube"))
RUN = Path(os.environ.get("LOCALKUBE_RUN", "/run/localkube"))
#: Present when up bound /run/netns onto itself (see share_netns_dir); down then undoes it.
NETNS_BIND = STATE / "netns-bind"

NODE_NAME = "localkube"
NODE_IFACE = "localkube0"  # portless bridge carrying the node IP
NODE_IP = "10.243.0.1"
BRIDGE = "localkube-br0"  # pods' bridge, made by the CNI bridge plugin
POD_CIDR = "10.244.0.0/16"
NODE_POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
#: How often the kubelet measures volume usage (its emptyDir sizeLimit evictions follow).
VOLUME_STATS_PERIOD = 10
APISERVER_PORT = 6443
REGISTRY_LISTEN = "127.0.0.1:5000"
REGISTRY = "localhost:5000"  # the name pods use in image references
# The registry behind a shaped link (`shaped-registry up`): its own network namespace,
# reached through a veth pair, serving the local registry's storage read-only.
SHAPED_NETNS = "localkube-shaped"
SHAPED_HOST_IFACE = "lkshaped0"  # host side of the veth pair
SHAPED_NS_IFACE = "lkshaped1"  # registry side
SHAPED_HOST_IP = "10.243.1.1"
SHAPED_REGISTRY_IP = "10.243.1.2"
SHAPED_REGISTRY = "localkube-shaped:5000"  # what pods put in `image:`; containerd maps it
NFT_TABLE = "localkube"  # nftables table (family ip) that keeps the cluster's CIDRs on the node
ROUTE_PROTO = "243"  # marks the routes up adds (`ip route ... proto 243`)
USER_NAME = "minimaldask-e2e"  # the namespace-only user (client certificate CN)
USER_NAMESPACE = "minimaldask-e2e"
NETPOL_USER = "localkube:netpol"  # kube-router's client certificate CN; see netpol_objects()

APT_PACKAGES = {  # package -> a file it installs
    "containerd": "/usr/bin/containerd",
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/firewall",
    "docker-registry": "/usr/bin/docker-registry",
    "iptables": "/usr/sbin/iptables",
    "conntrack": "/usr/sbin/conntrack",
    "openssl": "/usr/bin/openssl",
    "iproute2": "/usr/sbin/ip",
    "nftables": "/usr/sbin/nft",
    "ipset": "/usr/sbin/ipset",  # kube-router's NetworkPolicy controller
    "qemu-user-static": "/usr/bin/qemu-aarch64-static",  # arm64 and armv7 pods
}
CNI_BIN_DIR = "/usr/lib/cni"

# Kernel settings that up (or the kubelet, kube-proxy, CNI plugins) change;
# down puts back the values saved before up.
SYSCTLS = [
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/netfilter/nf_conntrack_max",
    "net/ipv6/conf/all/forwarding",
]
# Directories outside STATE and RUN that the components create when missing;
# down removes those that did not exist before up.
FOREIGN_DIRS = [
    "/run/netns",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
    "/usr/libexec/kubernetes",
    "/var/lib/kubelet",
    "/etc/cni",
    "/run/containerd",
]

COMPONENTS = [
    "etcd",
    "registry",
    "containerd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "netpol",
]
K8S_BINARIES = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
]

CONTAINERD_SOCK = RUN / "containerd" / "containerd.sock"
PKI = STATE / "pki"
LOGS = STATE / "logs"
PIDS = RUN / "pids"
ADMIN_KUBECONFIG = STATE / "admin.kubeconfig"
USER_KUBECONFIG = STATE / "user.kubeconfig"


class LocalkubeError(Exception):
    """A step of localkube failed; the message says which and what to look at."""


# ----------------------------------------------------------------- helpers


def say(msg: str) -> None:
    print(f"[localkube {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextlib.contextmanager
def stage(name: str, timings: dict | None = None):
    start = time.monotonic()
    say(f"{name} ...")
    yield
    took = time.monotonic() - start
    if timings is not None:
        timings[name] = round(took, 1)
    say(f"{name}: done in {took:.1f}s")


def run(cmd, *, check=True, input=None, timeout=120, env=None, cwd=None):
    """Run a command, with a deadline; raise LocalkubeError carrying its output."""
    cmd = [str(c) for c in cmd]
    try:
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
        )
    except subprocess.TimeoutExpired as e:
        raise LocalkubeError(f"`{shlex.join(cmd)}` did not finish within {timeout}s") from e
    except FileNotFoundError as e:
        raise LocalkubeError(f"`{cmd[0]}` is not installed: {e}") from e
    if check and proc.returncode != 0:
        raise LocalkubeError(
            f"`{shlex.join(cmd)}` failed with exit code {proc.returncode}:\n"
            f"{(proc.stdout + proc.stderr).strip()[-3000:]}"
        )
    return proc


def wait_for(what: str, timeout: float, probe, hint=None, interval: float = 0.5):
    """Call probe() until it returns a true value; raise after timeout seconds.

    hint: a callable giving text for the error (e.g. a log tail), called only on failure.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt finished"
    while True:
        try:
            result = probe()
            if result:
                return result
            last = f"not yet ({result!r})"
        except Exception as e:  # the probe's failure is the reason we report
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            extra = ""
            if hint is not None:
                try:
                    extra = "\n" + hint()
                except Exception as e:
                    extra = f"\n(no more details: {e})"
            raise LocalkubeError(
                f"{what}: not ready after {timeout:.0f}s; last check: {last}{extra}"
            )
        time.sleep(interval)


def log_tail(component: str, lines: int = 30) -> str:
    path = LOGS / f"{component}.log"
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"last lines of {path}:\n" + "\n".join(text)


def write(path: Path, text: str | bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    path.chmod(mode)
    return path


def require_root() -> None:
    if os.geteuid() != 0:
        raise LocalkubeError("localkube must run as root (it runs a kubelet and containerd)")


# ----------------------------------------------------------------- packages


def ensure_packages() -> None:
    missing = [pkg for pkg, path in APT_PACKAGES.items() if not Path(path).exists()]
    if not missing:
        return
    say(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # A policy-rc.d that says 101 keeps the packages' services (a system
    # containerd, a system registry) from starting: localkube runs its own.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        write(policy, "#!/bin/sh\nexit 101\n", 0o755)
    try:
        run(["apt-get", "update"], timeout=600, env=env)
        run(
            ["apt-get", "install", "-y", "--no-install-recommends", *missing], timeout=1200, env=env
        )
    finally:
        if made_policy:
            policy.unlink()


# ----------------------------------------------------------------- build


# (GOARCH, GOARM, name) of the builds of recipe/images/arch: bin/arch-NAME, pushed as
# single-platform images by push_arch_image().
ARCH_BUILDS = [("arm64", "", "arm64"), ("arm", "7", "armv7")]
ARCH_PLATFORMS = {"arm64": ("arm64", "v8"), "armv7": ("arm", "v7")}


def netpol_shim_files() -> dict[str, bytes]:
    """kube-router's PATH directory: its iptables-restore is netpol_shim.py, its iptables
    sends a delete by position there and the rest to the real command (netpol_shim.py
    says why)."""
    source = (HERE / "netpol_shim.py").read_bytes()
    files = {name: source for name in ("iptables-shim", "iptables-restore", "ip6tables-restore")}
    for family in ("iptables", "ip6tables"):
        files[family] = f"""#!/bin/sh
# localkube: kube-router's {family}; a delete goes to iptables-shim (netpol_shim.py)
case " $* " in *" -D "*) exec python3 "$(dirname "$0")/iptables-shim" {family} "$@" ;; esac
exec "$LOCALKUBE_IPTABLES_DIR/{family}" "$@"
""".encode()
    return files


def netpol_shim_dir() -> Path:
    """netpol_shim_files() in the state directory (it outlives the checkout that ran up)."""
    shim = STATE / "netpol-path"
    for name, content in netpol_shim_files().items():
        write(shim / name, content, mode=0o755)
    return shim


def go_version() -> str:
    return run(["go", "env", "GOVERSION"]).stdout.strip()


def recipe_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(RECIPE.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(RECIPE)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(
        f"{K8S_VERSION} {ETCD_VERSION} {COREDNS_VERSION} {KUBE_ROUTER_VERSION} {go_version()} "
        f"{' '.join(go_ldflags())}".encode()
    )
    return h.hexdigest()[:12]


def go_ldflags() -> list[str]:
    major, minor = K8S_VERSION[1:].split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X={pkg}.gitVersion={K8S_VERSION}",
            f"-X={pkg}.gitMajor={major}",
            f"-X={pkg}.gitMinor={minor}",
            f"-X={pkg}.gitTreeState=clean",
            f"-X={pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return flags


@functools.cache
def build_dir() -> Path:
    return CACHE_ROOT / f"{K8S_VERSION}-{recipe_hash()}"


def bin_path(name: str) -> Path:
    return build_dir() / "bin" / name


def ensure_built() -> Path:
    """Build every Go binary once per machine (per version and recipe)."""
    out = build_dir()
    if (out / "complete").exists():
        return out
    if shutil.which("go") is None:
        raise LocalkubeError("`go` is not on PATH; localkube builds Kubernetes with it")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "bin").mkdir(parents=True)
    env = dict(
        os.environ,
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
        GOCACHE=str(CACHE_ROOT / "go-build"),
        GOFLAGS="-mod=readonly -buildvcs=false",
    )
    timings: dict[str, float] = {}
    ld = "-ldflags=" + " ".join(go_ldflags())
    builds = [
        (
            "kubernetes",
            RECIPE / "kubernetes",
            [
                "go",
                "build",
                "-trimpath",
                ld,
                "-o",
                f"{tmp}/bin/",
                *[f"k8s.io/kubernetes/cmd/{b}" for b in K8S_BINARIES],
            ],
        ),
        (
            "etcd",
            RECIPE / "kubernetes",
            [
                "go",
                "build",
                "-trimpath",
                "-ldflags=-s -w",
                "-o",
                f"{tmp}/bin/etcd",
                "go.etcd.io/etcd/server/v3",
            ],
        ),
        (
            "coredns",
            RECIPE / "coredns",
            ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", f"{tmp}/bin/coredns", "."],
        ),
        (
            "kube-router netpol",
            RECIPE / "netpol",
            [
                "go",
                "build",
                "-trimpath",
                "-ldflags=-s -w",
                "-o",
                f"{tmp}/bin/kube-router-netpol",
                ".",
            ],
        ),
        (
            "pause and probe",
            RECIPE / "images",
            [
                "go",
                "build",
                "-trimpath",
                "-ldflags=-s -w",
                "-o",
                f"{tmp}/bin/",
                "./pause",
                "./probe",
            ],
        ),
    ]
    # The foreign-architecture test program (recipe/images/arch), one static binary per platform.
    for goarch, goarm, suffix in ARCH_BUILDS:
        builds.append(
            (
                f"arch {suffix}",
                RECIPE / "images",
                [
                    "go",
                    "build",
                    "-trimpath",
                    f"-ldflags=-s -w -X=main.goarmValue={goarm}",
                    "-o",
                    f"{tmp}/bin/arch-{suffix}",
                    "./arch",
                ],
                {"GOARCH": goarch, "GOARM": goarm} if goarm else {"GOARCH": goarch},
            )
        )
    say(f"building {K8S_VERSION} into {out} (first time on this machine)")
    for name, cwd, cmd, *extra in builds:
        with stage(f"build {name}", timings):
            run(cmd, cwd=cwd, env=dict(env, **(extra[0] if extra else {})), timeout=3600)
    write(tmp / "timings.json", json.dumps(timings, indent=1))
    write(
        tmp / "complete",
        f"{K8S_VERSION} built {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n",
    )
    tmp.rename(out)
    return out


# ----------------------------------------------------------------- PKI

OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = {eku}
{san}
"""


def _openssl_cnf(eku="serverAuth,clientAuth", sans=()) -> str:
    san = ("subjectAltName = " + ",".join(sans)) if sans else ""
    path = PKI / "openssl.cnf.tmp"
    write(path, OPENSSL_CNF.format(eku=eku, san=san), 0o600)
    return str(path)


def _make_key(key: Path) -> None:
    """A P-256 private key for a CA or a leaf certificate."""
    run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            key,
        ]
    )


def make_ca(name: str, cn: str) -> None:
    key, crt = PKI / f"{name}.key", PKI / f"{name}.crt"
    _make_key(key)
    run(
        [
            "openssl",
            "req",
            "-x509",
            "-new",
            "-key",
            key,
            "-subj",
            f"/CN={cn}",
            "-days",
            "3650",
            "-config",
            _openssl_cnf(),
            "-extensions",
            "ca",
            "-out",
            crt,
        ]
    )
    key.chmod(0o600)


def make_cert(
    name: str, ca: str, cn: str, orgs=(), ips=(), dns=(), eku="serverAuth,clientAuth"
) -> None:
    key, crt, csr = PKI / f"{name}.key", PKI / f"{name}.crt", PKI / f"{name}.csr"
    subj = "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"
    sans = [f"IP:{i}" for i in ips] + [f"DNS:{d}" for d in dns]
    cnf = _openssl_cnf(eku, sans)
    _make_key(key)
    run(["openssl", "req", "-new", "-key", key, "-subj", subj, "-config", cnf, "-out", csr])
    run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            PKI / f"{ca}.crt",
            "-CAkey",
            PKI / f"{ca}.key",
            "-set_serial",
            "0x" + os.urandom(16).hex(),
            "-days",
            "3650",
            "-extfile",
            cnf,
            "-extensions",
            "leaf",
            "-out",
            crt,
        ]
    )
    csr.unlink()
    key.chmod(0o600)


def make_pki() -> None:
    PKI.mkdir(parents=True, exist_ok=True)
    make_ca("ca", "localkube-ca")
    make_ca("etcd-ca", "localkube-etcd-ca")  # separate: a cluster client cert must not open etcd
    make_cert("etcd-server", "etcd-ca", "localkube-etcd", ips=["127.0.0.1"], dns=["localhost"])
    make_cert("apiserver-etcd-client", "etcd-ca", "kube-apiserver-etcd-client", eku="clientAuth")
    make_cert(
        "apiserver",
        "ca",
        "kube-apiserver",
        ips=[NODE_IP, KUBERNETES_SERVICE_IP, "127.0.0.1"],
        dns=[
            "localhost",
            NODE_NAME,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
        ],
        eku="serverAuth",
    )
    make_cert(
        "apiserver-kubelet-client",
        "ca",
        "kube-apiserver-kubelet-client",
        orgs=["system:masters"],
        eku="clientAuth",
    )
    make_cert("kubelet-server", "ca", NODE_NAME, ips=[NODE_IP], dns=[NODE_NAME], eku="serverAuth")
    make_cert("kubelet", "ca", f"system:node:{NODE_NAME}", orgs=["system:nodes"], eku="clientAuth")
    make_cert("admin", "ca", "localkube-admin", orgs=["system:masters"], eku="clientAuth")
    make_cert("controller-manager", "ca", "system:kube-controller-manager", eku="clientAuth")
    make_cert("scheduler", "ca", "system:kube-scheduler", eku="clientAuth")
    make_cert("kube-proxy", "ca", "system:kube-proxy", eku="clientAuth")
    make_cert("netpol", "ca", NETPOL_USER, eku="clientAuth")
    make_cert("user", "ca", USER_NAME, eku="clientAuth")
    run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            PKI / "sa.key",
        ]
    )
    run(["openssl", "pkey", "-in", PKI / "sa.key", "-pubout", "-out", PKI / "sa.pub"])
    (PKI / "sa.key").chmod(0o600)
    (PKI / "openssl.cnf.tmp").unlink()


def kubeconfig(name: str, cert: str, namespace: str | None = None) -> Path:
    b64 = lambda p: base64.b64encode((PKI / p).read_bytes()).decode()  # noqa: E731
    context = {"cluster": "localkube", "user": cert}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "localkube",
                "cluster": {
                    "server": f"https://{NODE_IP}:{APISERVER_PORT}",
                    "certificate-authority-data": b64("ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": cert,
                "user": {
                    "client-certificate-data": b64(f"{cert}.crt"),
                    "client-key-data": b64(f"{cert}.key"),
                },
            }
        ],
        "contexts": [{"name": "localkube", "context": context}],
        "current-context": "localkube",
    }
    return write(STATE / name, json.dumps(config, indent=1), 0o600)


# ----------------------------------------------------------------- processes


def pid_of(name: str) -> int | None:
    """The pid of a component started by localkube, if it is still that process."""
    path = PIDS / f"{name}.pid"
    if not path.exists():
        return None
    pid, _, exe = path.read_text().partition(" ")
    try:
        if os.readlink(f"/proc/{pid}/exe") != exe.strip():
            return None
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return None
    except OSError:
        return None
    return int(pid)


def local_env() -> dict[str, str]:
    """The environment, with the cluster's own addresses exempt from any HTTP(S) proxy."""
    env = dict(os.environ)
    ours = f"{NODE_IP},{SERVICE_CIDR},{POD_CIDR},127.0.0.1,localhost,.svc,.{CLUSTER_DOMAIN}"
    for key in ("NO_PROXY", "no_proxy"):
        env[key] = f"{env[key]},{ours}" if env.get(key) else ours
    return env


# Requests from this process to the cluster and the registry never go through a proxy.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _enter_netns(netns: str):
    """A preexec_fn that moves the child into network namespace `netns` before it execs
    (so that the recorded pid is the program's own, not an `ip netns exec` wrapper's)."""
    import ctypes  # only the shaped registry's processes need it

    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork, not in the child

    def enter() -> None:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), f"setns into {netns}")
        finally:
            os.close(fd)

    return enter


def start(name: str, argv: list, env: dict | None = None, netns: str | None = None) -> int:
    argv = [str(a) for a in argv]
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / f"{name}.log", "ab") as logf:
        logf.write(
            f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
            f"{shlex.join(argv)}\n".encode()
        )
        logf.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd="/",
            env=dict(local_env(), **(env or {})),
            preexec_fn=_enter_netns(netns) if netns else None,
        )
    exe = os.readlink(f"/proc/{proc.pid}/exe")
    write(PIDS / f"{name}.pid", f"{proc.pid} {exe}")
    return proc.pid


def check_running(name: str) -> None:
    if pid_of(name) is None:
        raise LocalkubeError(f"{name} exited\n{log_tail(name)}")


def stop_all(names: list[str], timeout: float = 10) -> None:
    """SIGTERM the components together; SIGKILL those still there after timeout seconds."""
    pids = {name: pid_of(name) for name in names}
    for pid in pids.values():
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(pid_of(n) for n in names) and time.monotonic() < deadline:
        time.sleep(0.2)
    for name, pid in pids.items():
        if pid is not None and pid_of(name) is not None:
            say(f"{name} (pid {pid}) still running {timeout:.0f}s after SIGTERM; killing it")
            os.kill(pid, signal.SIGKILL)
            wait_for(
                f"{name} (pid {pid}) to die after SIGKILL", 10, lambda n=name: pid_of(n) is None
            )
    for name in names:
        (PIDS / f"{name}.pid").unlink(missing_ok=True)


def processes() -> dict[int, str]:
    """pid -> command line of every process."""
    result = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = (
                    Path(f"/proc/{entry}/cmdline")
                    .read_bytes()
                    .replace(b"\0", b" ")
                    .decode(errors="replace")
                )
            except OSError:
                continue
            result[int(entry)] = cmd.strip()
    return result


# ----------------------------------------------------------------- probes


def https_get(
    url: str, cert: str | None = "admin", ca: str = "ca", timeout: float = 5
) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(PKI / f"{ca}.crt"))
    if cert:
        ctx.load_cert_chain(str(PKI / f"{cert}.crt"), str(PKI / f"{cert}.key"))
    try:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
        )
        with opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def kubectl(*args, kubeconfig_path: Path = ADMIN_KUBECONFIG, input=None, timeout=60, check=True):
    return run(
        [bin_path("kubectl"), f"--kubeconfig={kubeconfig_path}", *args],
        input=input,
        timeout=timeout,
        check=check,
        env=local_env(),
    )


def dns_query(name: str, server: str = DNS_SERVICE_IP, timeout: float = 2) -> list[str]:
    """A records for name, asked over UDP (no resolver library involved)."""
    qid = int.from_bytes(os.urandom(2), "big")
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, (server, 53))
        data, _ = s.recvfrom(4096)
    rid, flags, qd, an = struct.unpack(">HHHH", data[:8])
    if rid != qid:
        raise LocalkubeError("DNS answer with a wrong id")
    if flags & 0xF:
        raise LocalkubeError(f"DNS rcode {flags & 0xF} for {name}")
    pos = 12
    for _ in range(qd):  # skip the question
        while data[pos]:
            pos += data[pos] + 1
        pos += 5
    addrs = []
    for _ in range(an):
        if data[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 1:
            addrs.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += rdlen
    return addrs


def node_ready() -> bool:
    out = kubectl(
        "get",
        "node",
        NODE_NAME,
        "-o",
        'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
        check=False,
    ).stdout
    return out.strip() == "True"


def component_health() -> dict[str, str]:
    health = {}
    for name in COMPONENTS:
        pid = pid_of(name)
        health[name] = f"running (pid {pid})" if pid else "not running"
    return health


def is_up() -> bool:
    if any(pid_of(n) is None for n in COMPONENTS) or not ADMIN_KUBECONFIG.exists():
        return False
    try:
        if https_get(f"https://{NODE_IP}:{APISERVER_PORT}/readyz")[0] != 200:
            return False
        return node_ready() and KUBERNETES_SERVICE_IP in dns_query(
            f"kubernetes.default.svc.{CLUSTER_DOMAIN}"
        )
    except Exception:
        return False


# ----------------------------------------------------------------- OCI images

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def image_blobs(
    files: dict[str, tuple[bytes, int]],
    entrypoint: list[str],
    cmd: list[str] | None = None,
    env: list[str] | None = None,
    platform: tuple[str, str | None] = ("amd64", None),
) -> tuple[bytes, dict[str, bytes]]:
    """Build a one-layer OCI image for linux/ARCH[/VARIANT]; return (manifest, {digest: blob}).

    One manifest, no index: a single-platform image, which containerd runs whatever
    the node's architecture (through qemu-user for arm64 and armv7 on this node).
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in files} - {"."} | {"tmp"})
        all_dirs = sorted(
            {"/".join(d.split("/")[: i + 1]) for d in dirs for i in range(len(d.split("/")))}
        )
        for d in all_dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        for path, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    layer = gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)  # fast: layers are ~40 MB
    arch, variant = platform
    config = json.dumps(
        {
            "architecture": arch,
            **({"variant": variant} if variant else {}),
            "os": "linux",
            "config": {
                "Entrypoint": entrypoint,
                "Cmd": cmd or [],
                "Env": env or ["PATH=/usr/local/bin:/usr/bin:/bin"],
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        sort_keys=True,
    ).encode()
    digest = lambda b: "sha256:" + hashlib.sha256(b).hexdigest()  # noqa: E731
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": digest(layer), "size": len(layer)}],
        },
        sort_keys=True,
    ).encode()
    return manifest, {digest(config): config, digest(layer): layer}


def push_image(
    repo: str,
    tag: str,
    files: dict[str, tuple[bytes, int]],
    entrypoint: list[str],
    cmd: list[str] | None = None,
    registry: str = REGISTRY_LISTEN,
    platform: tuple[str, str | None] = ("amd64", None),
) -> str:
    """Push a one-layer image to the registry; return the reference pods use."""
    manifest, blobs = image_blobs(files, entrypoint, cmd, platform=platform)
    base = f"http://{registry}/v2/{repo}"

    def request(method, url, data=None, headers=None):
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with DIRECT.open(req, timeout=60) as resp:
                return resp.status, resp.headers
        except urllib.error.HTTPError as e:
            if method == "HEAD" and e.code == 404:
                return 404, e.headers
            raise LocalkubeError(
                f"registry {method} {url}: HTTP {e.code}: {e.read().decode(errors='replace')[:500]}"
            ) from e

    for digest, blob in blobs.items():
        if request("HEAD", f"{base}/blobs/{digest}")[0] == 200:
            continue
        _, headers = request("POST", f"{base}/blobs/uploads/")
        location = headers["Location"]
        if location.startswith("/"):
            location = f"http://{registry}{location}"
        sep = "&" if "?" in location else "?"
        request(
            "PUT",
            f"{location}{sep}digest={digest}",
            blob,
            {"Content-Type": "application/octet-stream"},
        )
    request("PUT", f"{base}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST})
    return f"{REGISTRY}/{repo}:{tag}"


def oci_archive(name: str, files, entrypoint) -> bytes:
    """An OCI image layout tarball, as `ctr images import` reads it."""
    manifest, blobs = image_blobs(files, entrypoint)
    blobs["sha256:" + hashlib.sha256(manifest).hexdigest()] = manifest
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        }
    )
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path, data in [
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", index.encode()),
        ] + [(f"blobs/sha256/{d.split(':')[1]}", b) for d, b in blobs.items()]:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def pause_image() -> str:
    return f"{REGISTRY}/localkube/pause:{PAUSE_VERSION}"


def coredns_image() -> str:
    return f"{REGISTRY}/localkube/coredns:{COREDNS_VERSION}"


def push_arch_image(name: str) -> str:
    """Push recipe/images/arch built for `name` ("arm64" or "armv7") as a single-platform
    image linux/arm64 or linux/arm/v7; return its reference. Its pod prints
    "GOARCH=... machine=..." and exits 0."""
    if name not in ARCH_PLATFORMS:
        raise LocalkubeError(f"no arch build named {name!r}; known: {', '.join(ARCH_PLATFORMS)}")
    return push_image(
        "localkube/arch",
        name,
        {"arch": (bin_path(f"arch-{name}").read_bytes(), 0o755)},
        ["/arch"],
        platform=ARCH_PLATFORMS[name],
    )


def push_probe_image(tag: str = "latest") -> str:
    """Push the probe test image (see recipe/images/probe); return its reference."""
    return push_image(
        "localkube/probe",
        tag,
        {"probe": (bin_path("probe").read_bytes(), 0o755)},
        ["/probe"],
        ["serve", ":8080"],
    )


# ----------------------------------------------------------------- configuration


def upstream_resolv_conf() -> str | None:
    """A resolv.conf with non-loopback nameservers for CoreDNS to forward to, if the machine has one.

    A loopback nameserver (systemd-resolved's 127.0.0.53) would be CoreDNS itself
    inside its pod, which its loop plugin detects and dies on.
    """
    for path in ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"):
        with contextlib.suppress(OSError):
            servers = [
                line.split()[1]
                for line in Path(path).read_text().splitlines()
                if line.startswith("nameserver") and len(line.split()) > 1
            ]
            if any(not ipaddress.ip_address(s.split("%")[0]).is_loopback for s in servers):
                return path
    return None


def write_configs() -> None:
    conf = STATE / "conf"
    write(
        conf / "registry.yml",
        f"""\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {STATE / "registry"}
  delete:
    enabled: true
http:
  addr: {REGISTRY_LISTEN}
""",
    )
    certs_d = conf / "containerd-certs.d"
    write(
        certs_d / REGISTRY / "hosts.toml",
        f"""\
server = "http://{REGISTRY}"

[host."http://{REGISTRY}"]
  capabilities = ["pull", "resolve", "push"]
""",
    )
    write(
        conf / "containerd.toml",
        f"""\
version = 2
root = "{STATE / "containerd"}"
state = "{RUN / "containerd" / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{CONTAINERD_SOCK}"

[ttrpc]
  address = "{RUN / "containerd" / "containerd.sock.ttrpc"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{STATE / "containerd-opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image()}"
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  # root here lacks CAP_SYS_RESOURCE, so no process may lower its OOM score
  # below containerd's; without this runc fails on the kubelet's -998 for
  # pod sandboxes ("failed to update /proc/self/oom_score_adj").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{RUN / "runc"}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{conf / "cni"}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs_d}"
""",
    )
    write(
        conf / "cni" / "10-localkube.conflist",
        json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": "localkube",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": BRIDGE,
                        "isGateway": True,
                        "ipMasq": True,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "dataDir": str(STATE / "cni-ipam"),
                            "ranges": [[{"subnet": NODE_POD_CIDR}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                        },
                    },
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                    # Accepts the pods' traffic in the FORWARD chain, whose policy may be DROP
                    # (Docker sets that), as it is on many real nodes.
                    {"type": "firewall", "backend": "iptables"},
                ],
            },
            indent=1,
        ),
    )
    write(
        conf / "kubelet.json",
        json.dumps(
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "address": NODE_IP,
                "port": 10250,
                "readOnlyPort": 0,
                "healthzBindAddress": "127.0.0.1",
                "healthzPort": 10248,
                "authentication": {
                    "anonymous": {"enabled": False},
                    "webhook": {"enabled": True},
                    "x509": {"clientCAFile": str(PKI / "ca.crt")},
                },
                "authorization": {"mode": "Webhook"},
                "tlsCertFile": str(PKI / "kubelet-server.crt"),
                "tlsPrivateKeyFile": str(PKI / "kubelet-server.key"),
                "cgroupDriver": "cgroupfs",
                "failCgroupV1": False,
                "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
                "clusterDNS": [DNS_SERVICE_IP],
                "clusterDomain": CLUSTER_DOMAIN,
                # no upstream: an empty file, and CoreDNS answers only for the cluster
                "resolvConf": upstream_resolv_conf() or str(write(conf / "resolv.conf", "")),
                "failSwapOn": False,
                "hairpinMode": "hairpin-veth",
                "serializeImagePulls": False,
                "podLogsDir": str(STATE / "pod-logs"),
                "volumePluginDir": str(STATE / "kubelet-plugins"),
                # Measure emptyDir usage every 10 s (1 min by default): a pod over its
                # sizeLimit is evicted within seconds, which the e2e tests wait for.
                "volumeStatsAggPeriod": f"{VOLUME_STATS_PERIOD}s",
                "evictionHard": {
                    "memory.available": "100Mi",
                    "nodefs.available": "1%",
                    "imagefs.available": "1%",
                },
                "imageGCHighThresholdPercent": 100,
                "imageGCLowThresholdPercent": 99,
                "rotateCertificates": False,
                "serverTLSBootstrap": False,
            },
            indent=1,
        ),
    )
    write(
        conf / "kube-proxy.json",
        json.dumps(
            {
                "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                "kind": "KubeProxyConfiguration",
                "clientConnection": {"kubeconfig": str(STATE / "kube-proxy.kubeconfig")},
                "hostnameOverride": NODE_NAME,
                "mode": "iptables",
                "clusterCIDR": POD_CIDR,
                "bindAddress": NODE_IP,
                "healthzBindAddress": "127.0.0.1:10256",
                "metricsBindAddress": "127.0.0.1:10249",
                # zeros: leave the machine's conntrack settings alone
                "conntrack": {
                    "maxPerCore": 0,
                    "min": 0,
                    "tcpEstablishedTimeout": "0s",
                    "tcpCloseWaitTimeout": "0s",
                },
                "iptables": {"localhostNodePorts": True, "masqueradeAll": False},
            },
            indent=1,
        ),
    )


# ----------------------------------------------------------------- cluster objects


def coredns_objects() -> dict:
    corefile = f"""\
.:53 {{
    errors
    health {{
        lameduck 5s
    }}
    ready
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    {"forward . /etc/resolv.conf" if upstream_resolv_conf() else "# no upstream nameserver on this machine"}
    cache 30
    loop
    loadbalance
}}
"""
    labels = {"k8s-app": "kube-dns"}
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "system:coredns"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["endpoints", "services", "pods", "namespaces"],
                        "verbs": ["list", "watch"],
                    },
                    {
                        "apiGroups": ["discovery.k8s.io"],
                        "resources": ["endpointslices"],
                        "verbs": ["list", "watch"],
                    },
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "system:coredns"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "system:coredns",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}
                ],
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
                "data": {"Corefile": corefile},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "serviceAccountName": "coredns",
                            "dnsPolicy": "Default",
                            "priorityClassName": "system-cluster-critical",
                            "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                            "containers": [
                                {
                                    "name": "coredns",
                                    "image": coredns_image(),
                                    "imagePullPolicy": "IfNotPresent",
                                    "args": ["-conf", "/etc/coredns/Corefile"],
                                    "ports": [
                                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                    ],
                                    "resources": {
                                        "requests": {"cpu": "50m", "memory": "70Mi"},
                                        "limits": {"memory": "170Mi"},
                                    },
                                    "volumeMounts": [
                                        {
                                            "name": "config",
                                            "mountPath": "/etc/coredns",
                                            "readOnly": True,
                                        }
                                    ],
                                    "livenessProbe": {
                                        "httpGet": {"path": "/health", "port": 8080},
                                        "initialDelaySeconds": 10,
                                        "periodSeconds": 10,
                                    },
                                    "readinessProbe": {
                                        "httpGet": {"path": "/ready", "port": 8181},
                                        "periodSeconds": 2,
                                    },
                                }
                            ],
                            "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
                "spec": {
                    "selector": labels,
                    "clusterIP": DNS_SERVICE_IP,
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    ],
                },
            },
        ],
    }


def netpol_objects() -> dict:
    """What kube-router's NetworkPolicy controller may read: pods, namespaces and
    NetworkPolicies (list and watch), and this node (get). Nothing else, no writes."""
    rules = [
        {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["networkpolicies"],
            "verbs": ["list", "watch"],
        },
        {"apiGroups": [""], "resources": ["nodes"], "resourceNames": [NODE_NAME], "verbs": ["get"]},
    ]
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": NETPOL_USER},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": NETPOL_USER},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": NETPOL_USER,
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": NETPOL_USER}
                ],
            },
        ],
    }


def namespace_user_objects(namespace: str, user: str = USER_NAME) -> dict:
    """A namespace in which `user` has what the built-in `admin` role grants, and nothing outside it."""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"{user}-admin", "namespace": namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "admin",
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                ],
            },
        ],
    }


def apply(objects: dict) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(objects))


# ----------------------------------------------------------------- host network


def read_sysctl(key: str) -> str | None:
    try:
        return Path("/proc/sys", key).read_text().strip()
    except OSError:
        return None


def write_sysctl(key: str, value: str) -> None:
    Path("/proc/sys", key).write_text(value + "\n")


def check_address_plan() -> None:
    plan = [
        ipaddress.ip_network(n, strict=False)
        for n in (POD_CIDR, SERVICE_CIDR, f"{NODE_IP}/32", f"{SHAPED_HOST_IP}/30")
    ]
    routes = run(["ip", "-4", "-o", "route", "show", "table", "all"]).stdout.splitlines()
    addrs = run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines()
    for line in routes + addrs:
        if any(ours in line for ours in (BRIDGE, NODE_IFACE, SHAPED_HOST_IFACE)):
            continue
        if f"proto {ROUTE_PROTO}" in line:  # ours, left by an up that no down followed
            continue
        for word in line.split():
            try:
                net = ipaddress.ip_network(word, strict=False)
            except ValueError:
                continue
            if net.prefixlen == 0 or net.version != 4:
                continue
            for p in plan:
                if p.overlaps(net):
                    raise LocalkubeError(
                        f"this machine already uses {net} ({line.strip()}), which overlaps localkube's {p}; "
                        "edit the address plan at the top of localkube.py"
                    )


# What up listens on (etcd, registry, API server, kubelet, kube-proxy, controller-manager, scheduler).
PORTS = [
    ("127.0.0.1", 2379),
    ("127.0.0.1", 2380),
    ("127.0.0.1", 2381),
    ("127.0.0.1", 5000),
    (NODE_IP, APISERVER_PORT),
    (NODE_IP, 10250),
    ("127.0.0.1", 10248),
    ("127.0.0.1", 10249),
    ("127.0.0.1", 10256),
    ("127.0.0.1", 10257),
    ("127.0.0.1", 10259),
]


def check_ports_free() -> None:
    """Fail early, naming the holder, rather than let a component die (or, for the
    registry, talk to someone else's registry on the same port)."""
    listening = run(["ss", "-Hltnp"]).stdout.splitlines()
    for addr, port in PORTS:
        for line in listening:
            local = line.split()[3]
            host, _, lport = local.rpartition(":")
            if lport == str(port) and host.strip("[]") in (addr, "0.0.0.0", "*", "::"):
                raise LocalkubeError(
                    f"port {addr}:{port}, which localkube needs, is taken: {line.strip()}"
                )


def default_interfaces() -> list[str]:
    """The devices of this machine's IPv4 default routes, from its routing tables."""
    out = run(["ip", "-4", "-o", "route", "show", "table", "all"], check=False).stdout
    devices: list[str] = []
    for line in out.splitlines():
        if line.split()[:1] == ["default"]:
            for dev in re.findall(r"\bdev (\S+)", line):
                if dev not in devices and dev not in (NODE_IFACE, BRIDGE, SHAPED_HOST_IFACE):
                    devices.append(dev)
    return devices


# The leak counters: packets for the cluster's CIDRs that left through a default interface.
LEAK_COUNTERS = {"leak-service-cidr": SERVICE_CIDR, "leak-pod-cidr": POD_CIDR}


def nft_ruleset(default_ifaces: list[str], reject: bool = True) -> str:
    """The nftables table that keeps the Service and pod CIDRs on this node.

    Its chains hook after iptables' filter chains (priority 10 > 0). An ACCEPT there
    (the CNI firewall plugin's, kube-router's, Docker's) does not end a packet's way
    through later base chains, so these rules see every packet that iptables let
    through, whatever order kube-proxy, the CNI plugins, kube-router and Docker gave
    their jumps in FORWARD; kube-proxy's own REJECT, where reached, comes first (a drop
    is final). A packet still addressed to the Service CIDR after kube-proxy's DNAT has
    no endpoint on this node: it is refused, as kube-proxy refuses one for a Service
    without endpoints. Nothing for either CIDR may go out of a default interface; the
    postrouting counters, read by `localkube.py leaks`, would count any that did.
    reject=False: the counters alone (the test of the counters).
    """
    cidrs = f"{{ {SERVICE_CIDR}, {POD_CIDR} }}"
    out_rule = ""
    if default_ifaces:
        ifaces = "{ " + ", ".join(f'"{i}"' for i in default_ifaces) + " }"
        out_rule = (
            f"\t\toifname {ifaces} ip daddr {cidrs} counter reject with icmp type net-unreachable\n"
        )
    lines = [f"table ip {NFT_TABLE} {{"]
    lines += [f"\tcounter {name} {{ }}" for name in LEAK_COUNTERS]
    for chain in ("forward", "output") if reject else ():
        lines += [
            f"\tchain {chain} {{",
            f"\t\ttype filter hook {chain} priority 10; policy accept;",
            f"\t\tip daddr {SERVICE_CIDR} counter reject with icmp type port-unreachable",
            out_rule.rstrip("\n"),
            "\t}",
        ]
    lines += [
        "\tchain postrouting {",
        "\t\ttype filter hook postrouting priority 300; policy accept;",
    ]
    for iface in default_ifaces:
        for name, cidr in LEAK_COUNTERS.items():
            lines.append(f'\t\toifname "{iface}" ip daddr {cidr} counter name "{name}"')
    lines += ["\t}", "}"]
    return "\n".join(line for line in lines if line) + "\n"


def keep_cidrs_on_node() -> None:
    """Routes and nftables rules so that no packet for the Service or pod CIDR leaves the node."""
    ifaces = default_interfaces()
    write(STATE / "default-interfaces.json", json.dumps(ifaces))
    if not ifaces:
        say("no default route on this machine: the leak counters have no interface to watch")
    # The Service CIDR goes to the portless node bridge: host connections still get
    # kube-proxy's DNAT (an unreachable route would fail connect() before it), and what
    # is not DNATed goes nowhere. Pod IPs beyond this node's /24 exist nowhere.
    run(["ip", "route", "replace", SERVICE_CIDR, "dev", NODE_IFACE, "proto", ROUTE_PROTO])
    run(["ip", "route", "replace", "unreachable", POD_CIDR, "proto", ROUTE_PROTO])
    run(["nft", "delete", "table", "ip", NFT_TABLE], check=False)
    run(["nft", "-f", "-"], input=nft_ruleset(ifaces))


def release_cidrs() -> None:
    if shutil.which("nft"):  # not installed: no table either
        run(["nft", "delete", "table", "ip", NFT_TABLE], check=False)
    for route in ([SERVICE_CIDR], ["unreachable", POD_CIDR]):
        run(["ip", "route", "del", *route, "proto", ROUTE_PROTO], check=False)


def leak_counters() -> dict[str, dict]:
    """{counter: {"cidr", "interfaces", "packets", "bytes"}}: what left through a default interface since up."""
    out = run(["nft", "-j", "list", "counters", "table", "ip", NFT_TABLE]).stdout
    ifaces = json.loads((STATE / "default-interfaces.json").read_text())
    result = {}
    for item in json.loads(out)["nftables"]:
        counter = item.get("counter")
        if counter and counter["name"] in LEAK_COUNTERS:
            result[counter["name"]] = {
                "cidr": LEAK_COUNTERS[counter["name"]],
                "interfaces": ifaces,
                "packets": counter["packets"],
                "bytes": counter["bytes"],
            }
    return result


def share_netns_dir() -> None:
    """Make /run/netns a shared mount point of its own before any pod's namespace is in it.

    `ip netns add` (the shaped link's namespace, tests/localkube/test_network.py) does
    this when it is not yet: it binds /run/netns onto itself. Done while pods run, that
    bind covers the pods' namespace mounts made before it: down could then neither
    unmount them nor delete their files (EBUSY; a cold machine's CI run failed so).
    Done here first, `ip netns add` only shares it again, and every mount goes on top.
    down undoes the bind it made (NETNS_BIND names it).
    """
    netns = Path("/run/netns")
    netns.mkdir(exist_ok=True)
    if str(netns) not in mounts():
        run(["mount", "--rbind", str(netns), str(netns)])
        write(NETNS_BIND, "made by up\n")
    run(["mount", "--make-rshared", str(netns)])


def setup_host() -> None:
    saved = {k: read_sysctl(k) for k in SYSCTLS}
    write(STATE / "saved-sysctls.json", json.dumps(saved, indent=1))
    write(
        STATE / "saved-dirs.json", json.dumps({d: Path(d).exists() for d in FOREIGN_DIRS}, indent=1)
    )
    write(STATE / "saved-ipsets.json", json.dumps(ipsets()))
    share_netns_dir()
    if read_sysctl("net/bridge/bridge-nf-call-iptables") is None:
        run(["modprobe", "br_netfilter"], check=False)
        if read_sysctl("net/bridge/bridge-nf-call-iptables") is None:
            raise LocalkubeError(
                "net/bridge/bridge-nf-call-iptables missing: the kernel needs br_netfilter "
                "for Service traffic between pods on one bridge"
            )
    for key in (
        "net/ipv4/ip_forward",
        "net/bridge/bridge-nf-call-iptables",
        "net/bridge/bridge-nf-call-ip6tables",
    ):
        write_sysctl(key, "1")
    # A bridge without ports: the kernel here has no dummy driver, bridge is built in.
    # One left by an `up` that a concurrent `down` cut short (no state to find it by) goes.
    run(["ip", "link", "del", NODE_IFACE], check=False)
    run(["ip", "link", "add", NODE_IFACE, "type", "bridge"])
    run(["ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_IFACE])
    run(["ip", "link", "set", NODE_IFACE, "up"])
    keep_cidrs_on_node()


# ----------------------------------------------------------------- API server and its audit log

AUDIT_DIR = STATE / "audit"
AUDIT_LOG = AUDIT_DIR / "audit.log"
# Metadata for every request (who, verb, resource, namespace, name, user agent, code;
# no bodies). RequestReceived is left out: one event per request, or two for a long
# request (ResponseStarted, then ResponseComplete), which audit_events() folds into one.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


def audit_wanted(audit: bool | None) -> bool:
    """The audit setting for up: the argument, else LOCALKUBE_AUDIT=1."""
    if audit is not None:
        return audit
    return os.environ.get("LOCALKUBE_AUDIT", "") not in ("", "0")


def apiserver_argv(audit: bool) -> list:
    argv = [
        bin_path("kube-apiserver"),
        f"--advertise-address={NODE_IP}",
        f"--bind-address={NODE_IP}",
        f"--secure-port={APISERVER_PORT}",
        "--etcd-servers=https://127.0.0.1:2379",
        f"--etcd-cafile={PKI / 'etcd-ca.crt'}",
        f"--etcd-certfile={PKI / 'apiserver-etcd-client.crt'}",
        f"--etcd-keyfile={PKI / 'apiserver-etcd-client.key'}",
        f"--tls-cert-file={PKI / 'apiserver.crt'}",
        f"--tls-private-key-file={PKI / 'apiserver.key'}",
        f"--client-ca-file={PKI / 'ca.crt'}",
        f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={PKI / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true",
        f"--service-account-key-file={PKI / 'sa.pub'}",
        f"--service-account-signing-key-file={PKI / 'sa.key'}",
        f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--profiling=false",
        "--v=1",
    ]
    if audit:
        policy = write(STATE / "conf" / "audit-policy.json", json.dumps(AUDIT_POLICY, indent=1))
        AUDIT_DIR.mkdir(mode=0o700, exist_ok=True)
        argv += [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={AUDIT_LOG}",
            "--audit-log-format=json",
            # blocking: an event is written before its response goes out, so a client
            # that got its answer finds the event in the file
            "--audit-log-mode=blocking",
            "--audit-log-maxsize=200",  # MB, then rotated: audit-<time>.log, read too
            "--audit-log-maxbackup=5",
        ]
    return argv


def start_apiserver(audit: bool, timeout: float = 120) -> None:
    start("kube-apiserver", apiserver_argv(audit))
    wait_for(
        "kube-apiserver /readyz",
        timeout,
        lambda: (
            (
                check_running("kube-apiserver"),
                https_get(f"https://{NODE_IP}:{APISERVER_PORT}/readyz"),
            )[1][0]
            == 200
        ),
        hint=lambda: log_tail("kube-apiserver"),
    )


def apiserver_audits() -> bool:
    """Whether the running API server writes the audit log."""
    pid = pid_of("kube-apiserver")
    if pid is None:
        return False
    with contextlib.suppress(OSError):
        return b"--audit-log-path=" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def _timestamp(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    text = str(value).strip()
    with contextlib.suppress(ValueError):
        return float(text)
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError as e:
        raise LocalkubeError(
            f"time {value!r}: give a Unix time or RFC 3339 (e.g. 2026-01-02T03:04:05Z)"
        ) from e


def audit_events(
    since=None,
    *,
    user: str | None = None,
    user_agent: str | None = None,
    verb: str | None = None,
    resource: str | None = None,
    namespace: str | None = None,
    name: str | None = None,
) -> list[dict]:
    """The API server's audit events (one per request), oldest first, filtered.

    since: a Unix time, a datetime or an RFC 3339 string; requests received before it
    are left out. user: the exact user name (e.g. "minimaldask-e2e",
    "system:serviceaccount:NS:NAME"). user_agent: its start (e.g. "kubectl/").
    verb: "get", "list", "watch", "create", "update", "patch", "delete", ...
    resource: "pods", or "pods/log" for a subresource. namespace, name: exact.
    Each event is the API server's JSON (audit.k8s.io/v1 Event, level Metadata).
    Needs the audit log: `localkube.py up --audit` or LOCALKUBE_AUDIT=1.
    """
    if not AUDIT_LOG.exists():
        raise LocalkubeError(
            f"no audit log at {AUDIT_LOG}: start the cluster with `localkube.py up --audit` "
            "(or LOCALKUBE_AUDIT=1); on a running cluster that restarts only the API server"
        )
    floor = _timestamp(since) if since is not None else None
    events: dict[str, dict] = {}
    # Rotated files first (their names sort by time), the current one last.
    for path in [*sorted(AUDIT_DIR.glob("audit-*.log")), AUDIT_LOG]:
        with open(path, errors="replace") as f:
            for line in f:
                # cheap first look: a line that does not even contain the name cannot match
                # (the API server's JSON escapes only <, > and & in strings)
                if user is not None and not any(c in user for c in "<>&") and user not in line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line being written
                ref = event.get("objectRef") or {}
                res = ref.get("resource", "")
                if ref.get("subresource"):
                    res += "/" + ref["subresource"]
                if (
                    (user is not None and event.get("user", {}).get("username") != user)
                    or (
                        user_agent is not None
                        and not event.get("userAgent", "").startswith(user_agent)
                    )
                    or (verb is not None and event.get("verb") != verb)
                    or (resource is not None and res != resource)
                    or (namespace is not None and ref.get("namespace") != namespace)
                    or (name is not None and ref.get("name") != name)
                ):
                    continue
                if floor is not None and _timestamp(event["requestReceivedTimestamp"]) < floor:
                    continue
                events[event["auditID"]] = event  # a later stage replaces an earlier one
    return sorted(events.values(), key=lambda e: e["requestReceivedTimestamp"])


# ----------------------------------------------------------------- foreign architectures

BINFMT = Path("/proc/sys/fs/binfmt_misc")
# The binfmt_misc entries up makes sure of, named as Debian's qemu-user-static names them
# (so that binfmt-support and tools/ci/docker-up.sh see them as the same entries).
QEMU_BINFMT = {"arm64": "qemu-aarch64", "armv7": "qemu-arm"}


def _binfmt_flags(text: str) -> str:
    match = re.search(r"^flags: *(\S*)$", text, re.M)
    return match.group(1) if match else ""


def binfmt_register_line(text: str, name: str) -> str:
    """The register line that recreates an entry from its /proc/sys/fs/binfmt_misc/NAME text."""
    fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    hexes = lambda h: "".join(f"\\x{h[i : i + 2]}" for i in range(0, len(h), 2))  # noqa: E731
    return (
        f":{name}:M:{fields.get('offset', '0')}:{hexes(fields['magic'])}:"
        f"{hexes(fields.get('mask', ''))}:{fields['interpreter']}:{_binfmt_flags(text)}"
    )


def foreign_arch_missing(name: str) -> str | None:
    """Why pods of platform `name` ("arm64", "armv7") cannot run on this node, or None."""
    entry = BINFMT / QEMU_BINFMT[name]
    if not (BINFMT / "register").exists():
        return f"binfmt_misc is not mounted at {BINFMT}"
    if not entry.exists():
        return f"no binfmt_misc entry {entry.name} (localkube up registers it)"
    text = entry.read_text()
    if not text.startswith("enabled"):
        return f"binfmt_misc entry {entry.name} is disabled"
    if "F" not in _binfmt_flags(text):
        return f"binfmt_misc entry {entry.name} lacks the fix-binary (F) flag"
    return None


def setup_binfmt() -> None:
    """Register qemu-user for arm64 and armv7 with the fix-binary flag, so that a pod's
    foreign binaries run: the kernel opens qemu when the entry is registered, and
    containers, which do not have it, use that. Entries already there with F are left
    as they are; others are replaced and put back by down; what up added, down removes."""
    state: dict = {"mounted": False, "added": [], "replaced": {}}
    try:
        if not (BINFMT / "register").exists():
            run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT])
            state["mounted"] = True
        for name in QEMU_BINFMT.values():
            conf = Path(f"/usr/lib/binfmt.d/{name}.conf")
            line = conf.read_text().strip()
            if "F" not in line.rsplit(":", 1)[1]:
                say(f"{conf} has no fix-binary flag; registering {name} with F added")
                line += "F"
            entry = BINFMT / name
            if entry.exists():
                text = entry.read_text()
                if text.startswith("enabled") and "F" in _binfmt_flags(text):
                    continue
                state["replaced"][name] = text
                say(
                    f"binfmt {name} was registered without fix-binary or disabled; replacing it until down"
                )
                entry.write_text("-1")
            else:
                state["added"].append(name)
            (BINFMT / "register").write_text(line)
    except (OSError, LocalkubeError) as e:
        say(f"binfmt_misc: {e}; arm64 and armv7 pods will not run on this node")
    write(STATE / "binfmt.json", json.dumps(state, indent=1))


def restore_binfmt() -> None:
    try:
        state = json.loads((STATE / "binfmt.json").read_text())
    except (OSError, ValueError):
        return
    for name in state["added"]:
        with contextlib.suppress(OSError):
            (BINFMT / name).write_text("-1")
    for name, text in state["replaced"].items():
        with contextlib.suppress(OSError):
            if (BINFMT / name).exists():
                (BINFMT / name).write_text("-1")
            (BINFMT / "register").write_text(binfmt_register_line(text, name))
            if not text.startswith("enabled"):
                (BINFMT / name).write_text("0")
    if state["mounted"]:
        others = [p.name for p in BINFMT.glob("*") if p.name not in ("register", "status")]
        if others:
            say(
                f"binfmt_misc stays mounted: others registered {', '.join(sorted(others))} meanwhile"
            )
        else:
            run(["umount", BINFMT], check=False)


# ----------------------------------------------------------------- shaped registry

SHAPED_STATE = STATE / "shaped-registry.json"
SHAPED_QUEUE = 0  # the NFQUEUE number inside the shaped namespace (its own netfilter)


def parse_rate(rate: str) -> int:
    """tc's rate syntax ("100mbit", "20mbit", "1gbit", "512kbit", "8000bit") in bits per second."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)", rate.strip().lower())
    if not match:
        raise LocalkubeError(
            f"rate {rate!r}: give a number and a unit among bit, kbit, mbit, gbit, e.g. 100mbit"
        )
    bits = float(match.group(1)) * {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[match.group(2)]
    if not 8000 <= bits <= 10e9:
        raise LocalkubeError(f"rate {rate!r}: between 8kbit and 10gbit, please")
    return int(bits)


def parse_delay(delay: str | float) -> float:
    """A delay ("20ms", "0.5s", or a number of milliseconds) in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)?", str(delay).strip().lower())
    if not match:
        raise LocalkubeError(
            f"delay {delay!r}: give milliseconds, e.g. 20ms, or seconds, e.g. 0.5s"
        )
    seconds = float(match.group(1)) / (1 if match.group(2) == "s" else 1000)
    if seconds > 10:
        raise LocalkubeError(f"delay {delay!r}: at most 10s")
    return seconds


@dataclasses.dataclass(frozen=True)
class ShapedRegistry:
    """The registry behind the shaped link, as shaped_registry_up() made it."""

    pull_name: str  # what pods put in `image:` instead of localhost:5000
    address: str  # where it listens, in its network namespace
    rate_bits: int  # each direction
    delay_s: float  # added to every round trip

    def reference(self, image: str) -> str:
        """The same image through the shaped link: localhost:5000/x:1 -> localkube-shaped:5000/x:1."""
        return self.pull_name + "/" + image.split("/", 1)[1] if "/" in image else image


def shaped_registry_status() -> ShapedRegistry | None:
    """The running shaped registry, or None."""
    try:
        info = json.loads(SHAPED_STATE.read_text())
    except (OSError, ValueError):
        return None
    if pid_of("shaped-registry") is None:
        return None
    return ShapedRegistry(**info)


def shaped_registry_up(rate: str = "100mbit", delay: str | float = "20ms") -> ShapedRegistry:
    """Start (or re-shape) a registry that containerd reaches over a shaped link.

    A second docker-registry serves the local registry's storage read-only (push to
    127.0.0.1:5000 as usual) from network namespace localkube-shaped, reached from
    the node through a veth pair. tc's token bucket limits both directions to `rate`;
    a delay line (NFQUEUE, in that namespace, on what arrives there) adds `delay` to
    every round trip. containerd knows it as localkube-shaped:5000 (plain HTTP), so a
    pod's `image: localkube-shaped:5000/REPO:TAG` is pulled across the link.
    """
    require_root()
    if pid_of("containerd") is None:
        raise LocalkubeError("localkube is not up: run `localkube.py up` first")
    rate_bits = parse_rate(rate)
    delay_s = parse_delay(delay)
    shaped_registry_down(quiet=True)
    t0 = time.monotonic()
    run(["ip", "netns", "add", SHAPED_NETNS])
    ns = ["ip", "-n", SHAPED_NETNS]
    run(
        [
            "ip",
            "link",
            "add",
            SHAPED_HOST_IFACE,
            "type",
            "veth",
            "peer",
            "name",
            SHAPED_NS_IFACE,
            "netns",
            SHAPED_NETNS,
        ]
    )
    run(["ip", "addr", "add", f"{SHAPED_HOST_IP}/30", "dev", SHAPED_HOST_IFACE])
    run([*ns, "addr", "add", f"{SHAPED_REGISTRY_IP}/30", "dev", SHAPED_NS_IFACE])
    for cmd in (["ip"], ns):
        iface = SHAPED_HOST_IFACE if cmd == ["ip"] else SHAPED_NS_IFACE
        run([*cmd, "link", "set", iface, "up"])
    run([*ns, "link", "set", "lo", "up"])
    # Token bucket at the sending end of each direction: what the registry sends
    # (layers) and what the node sends (requests, ACKs). The bucket holds 64 KiB, the
    # queue up to 200 ms of traffic.
    for cmd, iface in (
        (["tc"], SHAPED_HOST_IFACE),
        (["ip", "netns", "exec", SHAPED_NETNS, "tc"], SHAPED_NS_IFACE),
    ):
        run([*cmd, "qdisc", "replace", "dev", iface, "root", "tbf", "rate", f"{rate_bits}bit",
             "burst", "64kb", "latency", "200ms"])  # fmt: skip
    if delay_s > 0:
        # The delay line holds each packet that reaches the registry's namespace for the
        # whole delay. Held there, not on the sender's way out: a socket's packets still
        # queued below it count against TCP small queues, which would throttle the sender.
        run(["ip", "netns", "exec", SHAPED_NETNS, "iptables", "-w", "5", "-t", "mangle", "-A",
             "PREROUTING", "-i", SHAPED_NS_IFACE, "-j", "NFQUEUE", "--queue-num", str(SHAPED_QUEUE)])  # fmt: skip
        start(
            "shaped-delay",
            [sys.executable, HERE / "localkube.py", "delayline", str(SHAPED_QUEUE), str(delay_s)],
            netns=SHAPED_NETNS,
        )
        wait_for(
            "the delay line to bind its queue",
            10,
            lambda: (check_running("shaped-delay"), "bound" in log_tail("shaped-delay", 5))[1],
            hint=lambda: log_tail("shaped-delay"),
            interval=0.1,
        )
    conf = STATE / "conf" / "shaped-registry.yml"
    write(
        conf,
        f"""\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {STATE / "registry"}
  maintenance:
    readonly:
      enabled: true
http:
  addr: {SHAPED_REGISTRY_IP}:5000
""",
    )
    start("shaped-registry", ["/usr/bin/docker-registry", "serve", conf], netns=SHAPED_NETNS)

    def registry_ok():
        check_running("shaped-registry")
        with DIRECT.open(f"http://{SHAPED_REGISTRY_IP}:5000/v2/", timeout=5) as r:
            return r.status == 200

    wait_for("shaped registry /v2/", 30, registry_ok, hint=lambda: log_tail("shaped-registry"))
    write(
        STATE / "conf" / "containerd-certs.d" / SHAPED_REGISTRY / "hosts.toml",
        f"""\
server = "http://{SHAPED_REGISTRY_IP}:5000"

[host."http://{SHAPED_REGISTRY_IP}:5000"]
  capabilities = ["pull", "resolve"]
""",
    )
    info = ShapedRegistry(SHAPED_REGISTRY, f"{SHAPED_REGISTRY_IP}:5000", rate_bits, delay_s)
    write(SHAPED_STATE, json.dumps(dataclasses.asdict(info)))
    say(
        f"shaped registry {SHAPED_REGISTRY} up in {time.monotonic() - t0:.1f}s: "
        f"{rate_bits / 1e6:g} Mbit/s each way, +{delay_s * 1000:g} ms per round trip"
    )
    return info


def shaped_registry_down(quiet: bool = False) -> None:
    """Remove the shaped registry: its processes, namespace (with the veth pair and its
    queues), containerd's hosts.toml for it. Harmless when it is not there."""
    stop_all(["shaped-registry", "shaped-delay"])
    shutil.rmtree(STATE / "conf" / "containerd-certs.d" / SHAPED_REGISTRY, ignore_errors=True)
    SHAPED_STATE.unlink(missing_ok=True)
    if Path(f"/run/netns/{SHAPED_NETNS}").exists():
        run(["ip", "netns", "del", SHAPED_NETNS], check=False)
    # Deleting the namespace deletes the veth pair; a half-made pair may be left on this side.
    if run(["ip", "link", "show", SHAPED_HOST_IFACE], check=False).returncode == 0:
        run(["ip", "link", "del", SHAPED_HOST_IFACE], check=False)
    if not quiet:
        say("shaped registry down")


# nfnetlink_queue (linux/netfilter/nfnetlink_queue.h), for the delay line.
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_PACKET, _NFQNL_MSG_CONFIG, _NFQNL_MSG_VERDICT_BATCH = 0, 2, 3


def _nfq_attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nfq_message(msg: int, queue: int, attrs: list[bytes], flags: int = 1, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    header = struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0)
    return header + body


def delayline(queue: int, delay_s: float) -> None:
    """Hold every packet of NFQUEUE `queue` for delay_s seconds, then accept it, in order.

    Runs until killed. Copies only the packets' metadata; lets the kernel queue large
    (GSO) packets whole; accepts everything due with one batch verdict.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
    sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: no lost messages
    sock.bind((0, 0))
    gso = struct.pack("!I", 4)  # NFQA_CFG_F_GSO
    steps = [
        ("bind", [_nfq_attr(1, struct.pack("!BxH", 1, socket.AF_INET))]),  # NFQNL_CFG_CMD_BIND
        ("copy metadata", [_nfq_attr(2, struct.pack("!IB", 0, 1))]),  # NFQNL_COPY_META
        ("queue length", [_nfq_attr(3, struct.pack("!I", 20000))]),
        ("GSO", [_nfq_attr(4, gso), _nfq_attr(5, gso)]),  # mask, flags
    ]
    for seq, (what, attrs) in enumerate(steps, 1):
        sock.send(_nfq_message(_NFQNL_MSG_CONFIG, queue, attrs, 1 | 4, seq))  # REQUEST|ACK
        reply = sock.recv(65536)
        if struct.unpack_from("=H", reply, 4)[0] == 2:  # NLMSG_ERROR
            (error,) = struct.unpack_from("=i", reply, 16)
            if error:
                raise LocalkubeError(f"nfqueue {queue}, {what}: {os.strerror(-error)}")
    print(f"delay line bound to queue {queue}: +{delay_s * 1000:g} ms", flush=True)
    packet_type = (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_PACKET
    pending: collections.deque[tuple[float, int]] = collections.deque()
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        timeout = None if not pending else max(0.0, (pending[0][0] - time.monotonic()) * 1000)
        if poller.poll(timeout):
            data = sock.recv(1 << 20)
            due = time.monotonic() + delay_s
            pos = 0
            while pos + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, pos)
                if kind == packet_type:
                    attr = pos + 20
                    while attr + 4 <= pos + length:
                        alen, atype = struct.unpack_from("=HH", data, attr)
                        if atype & 0x7FFF == 1:  # NFQA_PACKET_HDR: the packet id first
                            pending.append((due, struct.unpack_from("!I", data, attr + 4)[0]))
                            break
                        attr += (alen + 3) & ~3
                pos += max((length + 3) & ~3, 16)
        now = time.monotonic()
        last = None
        while pending and pending[0][0] <= now:
            last = pending.popleft()[1]
        if last is not None:  # accepts every packet up to this id
            verdict = _nfq_attr(2, struct.pack("!II", 1, last))  # NFQA_VERDICT_HDR: NF_ACCEPT
            sock.send(_nfq_message(_NFQNL_MSG_VERDICT_BATCH, queue, [verdict]))


def remove_image(reference: str) -> list[str]:
    """Remove an image from the node's containerd, so that the next pod using it pulls it
    again; return the names removed (the reference, its digest and image-ID names).
    Remove the pods that use it first. Nothing to remove is not an error."""
    ctr = ["/usr/bin/ctr", "--address", CONTAINERD_SOCK, "--namespace", "k8s.io"]
    listing = run([*ctr, "images", "ls"]).stdout.splitlines()[1:]
    targets = {line.split()[2] for line in listing if line.split()[0] == reference}
    names = [line.split()[0] for line in listing if line.split()[2] in targets]
    if names:
        # --sync: containerd's garbage collector has removed the content when this returns
        run([*ctr, "images", "rm", "--sync", *names], timeout=120)
    return names


# ----------------------------------------------------------------- up


def up(timeout_scale: float = 1.0, audit: bool | None = None) -> None:
    """Start the cluster (build first if needed); when it is up, only make sure of it.

    audit: write the API server's audit log (None: LOCALKUBE_AUDIT=1). Asked of a
    running cluster that does not write it, up restarts just the API server with it;
    up never turns a running audit log off (down and up do).
    """
    require_root()
    audit = audit_wanted(audit)
    if all(pid_of(n) for n in COMPONENTS):
        # Running: give a busy cluster time to answer before calling it broken.
        try:
            wait_for("the running cluster to be healthy", 60 * timeout_scale, is_up)
            if audit and not apiserver_audits():
                say(
                    "audit log asked for, and the running API server writes none: restarting just it"
                )
                t0 = time.monotonic()
                # it drains for longer than a restart is worth; etcd keeps the state
                stop_all(["kube-apiserver"], timeout=3)
                start_apiserver(True, 120 * timeout_scale)
                wait_for("the cluster to be healthy again", 60 * timeout_scale, is_up)
                say(f"kube-apiserver restarted with the audit log in {time.monotonic() - t0:.1f}s")
            say(f"already up; kubeconfig: {ADMIN_KUBECONFIG}")
            if apiserver_audits():
                say(f"audit log: {AUDIT_LOG}")
            return
        except LocalkubeError as e:
            say(f"{e}; restarting it")
    if STATE.exists() or RUN.exists():
        say("found leftovers of an earlier run that is not healthy; taking them down first")
        down()
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    with stage("packages", timings):
        ensure_packages()
    with stage("build (cached after the first time)", timings):
        ensure_built()
    check_address_plan()
    check_ports_free()
    for d in (STATE, RUN):
        d.mkdir(parents=True)
        d.chmod(0o700)
    with stage("host network and PKI", timings):
        setup_host()
        setup_binfmt()
        make_pki()
        kubeconfig("admin.kubeconfig", "admin")
        kubeconfig("user.kubeconfig", "user", USER_NAMESPACE)
        for name in ("controller-manager", "scheduler", "kubelet", "kube-proxy", "netpol"):
            kubeconfig(f"{name}.kubeconfig", name)
        write_configs()
    T = lambda s: s * timeout_scale  # noqa: E731

    with stage("etcd", timings):
        start(
            "etcd",
            [
                bin_path("etcd"),
                "--name",
                NODE_NAME,
                "--data-dir",
                STATE / "etcd",
                "--listen-client-urls",
                "https://127.0.0.1:2379",
                "--advertise-client-urls",
                "https://127.0.0.1:2379",
                "--listen-peer-urls",
                "https://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "https://127.0.0.1:2380",
                "--initial-cluster",
                f"{NODE_NAME}=https://127.0.0.1:2380",
                "--listen-metrics-urls",
                "http://127.0.0.1:2381",
                "--cert-file",
                PKI / "etcd-server.crt",
                "--key-file",
                PKI / "etcd-server.key",
                "--client-cert-auth",
                "--trusted-ca-file",
                PKI / "etcd-ca.crt",
                "--peer-cert-file",
                PKI / "etcd-server.crt",
                "--peer-key-file",
                PKI / "etcd-server.key",
                "--peer-client-cert-auth",
                "--peer-trusted-ca-file",
                PKI / "etcd-ca.crt",
                "--snapshot-count",
                "10000",
                "--log-level",
                "warn",
            ],
        )
        wait_for(
            "etcd health",
            T(60),
            lambda: (
                (
                    check_running("etcd"),
                    https_get(
                        "https://127.0.0.1:2379/health", cert="apiserver-etcd-client", ca="etcd-ca"
                    ),
                )[1][0]
                == 200
            ),
            hint=lambda: log_tail("etcd"),
        )

    with stage("registry", timings):
        start("registry", ["/usr/bin/docker-registry", "serve", STATE / "conf" / "registry.yml"])

        def registry_ok():
            check_running("registry")
            with DIRECT.open(f"http://{REGISTRY_LISTEN}/v2/", timeout=2) as r:
                return r.status == 200

        wait_for("registry /v2/", T(30), registry_ok, hint=lambda: log_tail("registry"))
        push_image(
            "localkube/coredns",
            COREDNS_VERSION,
            {"coredns": (bin_path("coredns").read_bytes(), 0o755)},
            ["/coredns"],
        )
        push_image(
            "localkube/pause",
            PAUSE_VERSION,
            {"pause": (bin_path("pause").read_bytes(), 0o755)},
            ["/pause"],
        )

    with stage("containerd", timings):
        (RUN / "containerd").mkdir(parents=True, exist_ok=True)
        start("containerd", ["/usr/bin/containerd", "--config", STATE / "conf" / "containerd.toml"])
        ctr = ["/usr/bin/ctr", "--address", CONTAINERD_SOCK, "--namespace", "k8s.io"]
        wait_for(
            "containerd socket",
            T(30),
            lambda: (check_running("containerd"), run([*ctr, "version"], timeout=10))[1],
            hint=lambda: log_tail("containerd"),
        )
        archive = STATE / "pause.oci.tar"
        write(
            archive,
            oci_archive(
                pause_image(), {"pause": (bin_path("pause").read_bytes(), 0o755)}, ["/pause"]
            ),
        )
        run([*ctr, "images", "import", archive], timeout=60)
        archive.unlink()

    with stage("kube-apiserver", timings):
        if audit:
            say(f"with the audit log: {AUDIT_LOG}")
        start_apiserver(audit, T(120))

    with stage("controller-manager and scheduler", timings):
        cm_kc = STATE / "controller-manager.kubeconfig"
        start(
            "kube-controller-manager",
            [
                bin_path("kube-controller-manager"),
                f"--kubeconfig={cm_kc}",
                f"--authentication-kubeconfig={cm_kc}",
                f"--authorization-kubeconfig={cm_kc}",
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={PKI / 'sa.key'}",
                f"--root-ca-file={PKI / 'ca.crt'}",
                f"--cluster-signing-cert-file={PKI / 'ca.crt'}",
                f"--cluster-signing-key-file={PKI / 'ca.key'}",
                "--allocate-node-cidrs=true",
                f"--cluster-cidr={POD_CIDR}",
                "--node-cidr-mask-size=24",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--v=1",
            ],
        )
        sch_kc = STATE / "scheduler.kubeconfig"
        start(
            "kube-scheduler",
            [
                bin_path("kube-scheduler"),
                f"--kubeconfig={sch_kc}",
                f"--authentication-kubeconfig={sch_kc}",
                f"--authorization-kubeconfig={sch_kc}",
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
                "--v=1",
            ],
        )
        apply(namespace_user_objects(USER_NAMESPACE))
        apply(netpol_objects())
        apply(coredns_objects())

    with stage("kubelet and kube-proxy", timings):
        (STATE / "kubelet").mkdir(exist_ok=True)
        start(
            "kubelet",
            [
                bin_path("kubelet"),
                f"--config={STATE / 'conf' / 'kubelet.json'}",
                f"--kubeconfig={STATE / 'kubelet.kubeconfig'}",
                f"--root-dir={STATE / 'kubelet'}",
                f"--cert-dir={STATE / 'kubelet' / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )
        start(
            "kube-proxy",
            [bin_path("kube-proxy"), f"--config={STATE / 'conf' / 'kube-proxy.json'}", "--v=1"],
        )
        wait_for(
            "node Ready",
            T(120),
            lambda: (check_running("kubelet"), check_running("kube-proxy"), node_ready())[2],
            hint=lambda: log_tail("kubelet"),
        )

    with stage("NetworkPolicy (kube-router)", timings):
        # It reads this node's object at start, so it starts once the node is registered,
        # and before the first pod (CoreDNS) runs. Its iptables-restore and its deletes
        # by position touch its own rules only (netpol_shim.py says why).
        shim = netpol_shim_dir()
        start(
            "netpol",
            [
                bin_path("kube-router-netpol"),
                f"--kubeconfig={STATE / 'netpol.kubeconfig'}",
                f"--hostname-override={NODE_NAME}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--run-loadbalancer=false",
                "--enable-ipv4=true",
                "--enable-ipv6=false",
                "--iptables-sync-period=1m",
                "--health-port=0",
                "--metrics-port=0",
                "--v=1",
            ],
            env={
                "NODE_NAME": NODE_NAME,
                "PATH": f"{shim}{os.pathsep}{local_env().get('PATH', os.defpath)}",
                "LOCALKUBE_IPTABLES_DIR": str(Path(APT_PACKAGES["iptables"]).parent),
            },
        )
        wait_for(
            "kube-router's chains in FORWARD",
            T(60),
            lambda: (
                check_running("netpol"),
                "-j KUBE-ROUTER-FORWARD" in run(["iptables", "-w", "5", "-S", "FORWARD"]).stdout,
            )[1],
            hint=lambda: log_tail("netpol"),
        )

    with stage("CoreDNS", timings):
        wait_for(
            "CoreDNS deployment available",
            T(120),
            lambda: (
                check_running("kubelet"),
                kubectl(
                    "-n",
                    "kube-system",
                    "get",
                    "deployment",
                    "coredns",
                    "-o",
                    "jsonpath={.status.availableReplicas}",
                ).stdout.strip()
                == "1",
            )[1],
            hint=lambda: kubectl("-n", "kube-system", "get", "events", check=False).stdout[-3000:],
        )
        wait_for(
            "CoreDNS answering for kubernetes.default",
            T(60),
            lambda: KUBERNETES_SERVICE_IP in dns_query(f"kubernetes.default.svc.{CLUSTER_DOMAIN}"),
            hint=lambda: log_tail("kube-proxy"),
        )

    timings["total"] = round(time.monotonic() - t0, 1)
    write(STATE / "up-timings.json", json.dumps(timings, indent=1))
    say(f"up in {timings['total']:.1f}s; stages: {json.dumps(timings)}")
    say(f"kubeconfig (admin): {ADMIN_KUBECONFIG}")
    say(f"kubeconfig (user {USER_NAME}, namespace {USER_NAMESPACE} only): {USER_KUBECONFIG}")
    say(f"registry: push to {REGISTRY_LISTEN}, pods pull {REGISTRY}/REPO:TAG")
    if audit:
        say(f"audit log: {AUDIT_LOG}")
    say('shell setup: eval "$(python3 tools/localkube/localkube.py env)"')


# ----------------------------------------------------------------- down


def mounts() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(line.split()[4].replace("\\040", " "))
    return points


def cgroup_dirs(name: str = "kubepods") -> list[Path]:
    root = Path("/sys/fs/cgroup")
    return [p for p in root.glob(f"*/{name}") if p.is_dir()]


def kill_cgroup_processes() -> None:
    def remaining():
        pids = set()
        for top in cgroup_dirs():
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids |= {int(p) for p in procs.read_text().split()}
        return pids

    def kill_all():
        pids = remaining()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not pids

    wait_for("pod processes to die", 30, kill_all)


def remove_cgroups() -> None:
    for top in cgroup_dirs():
        dirs = sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        )
        for d in [*dirs, top]:
            wait_for(f"rmdir {d}", 10, lambda d=d: (d.rmdir(), True)[1] if d.exists() else True)


def clean_iptables() -> None:
    for tool in ("iptables", "ip6tables"):
        if shutil.which(f"{tool}-save") is None:
            continue
        dump = run([f"{tool}-save"]).stdout
        table = None
        ours: dict[str, list[str]] = {}
        jumps: list[tuple[str, str]] = []
        for line in dump.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                chain = line[1:].split()[0]
                if chain.startswith(("KUBE-", "CNI-")):
                    ours.setdefault(table, []).append(chain)
            elif line.startswith("-A "):
                chain = line.split()[1]
                if not chain.startswith(("KUBE-", "CNI-")) and (
                    " KUBE-" in line or " CNI-" in line or BRIDGE in line or POD_CIDR in line
                ):
                    jumps.append((table, line))
        for table, line in jumps:
            run([tool, "-w", "5", "-t", table, "-D", *shlex.split(line)[1:]], check=False)
        for table, chains in ours.items():
            for chain in chains:
                run([tool, "-w", "5", "-t", table, "-F", chain], check=False)
            for chain in chains:
                run([tool, "-w", "5", "-t", table, "-X", chain], check=False)


def ipsets() -> list[str]:
    if shutil.which("ipset") is None:
        return []
    return run(["ipset", "list", "-n"], check=False).stdout.split()


def destroy_ipsets() -> None:
    """kube-router's ipsets (KUBE-SRC-*, KUBE-DST-*, and TMP-* of a sync cut short) that
    were not there before up; clean_iptables() has removed the rules that used them."""
    before: list[str] = []
    with contextlib.suppress(OSError, ValueError):
        before = json.loads((STATE / "saved-ipsets.json").read_text())
    for name in ipsets():
        if name.startswith(("KUBE-", "TMP-")) and name not in before:
            run(["ipset", "destroy", name], check=False)


def remove_shim_leftovers() -> None:
    """containerd 1.6 puts shim sockets in /run/containerd/s whatever its state dir; another
    containerd (e.g. Docker's) may use it too, so remove only dead sockets and empty dirs."""
    root = Path("/run/containerd")
    for sock in root.glob("s/*"):
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(sock))
            except (ConnectionRefusedError, FileNotFoundError):
                sock.unlink(missing_ok=True)
            except OSError:
                pass
    for d in [
        *sorted(
            (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ),
        root,
    ]:
        with contextlib.suppress(OSError):
            d.rmdir()


def down() -> None:
    require_root()
    t0 = time.monotonic()
    shaped_registry_down(quiet=True)
    # The kubelet first, so that it does not restart what we stop next.
    stop_all(["kubelet"])
    stop_all(
        ["netpol", "kube-proxy", "kube-scheduler", "kube-controller-manager", "kube-apiserver"]
    )
    stop_all(["etcd", "registry"])
    kill_cgroup_processes()
    stop_all(["containerd"])
    our_sock = str(CONTAINERD_SOCK)
    shims = [
        pid for pid, cmd in processes().items() if "containerd-shim" in cmd and our_sock in cmd
    ]
    for pid in shims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(
        "containerd shims to exit",
        15,
        lambda: (
            not any("containerd-shim" in cmd and our_sock in cmd for cmd in processes().values())
        ),
    )
    saved_dirs = {}
    with contextlib.suppress(OSError, ValueError):
        saved_dirs = json.loads((STATE / "saved-dirs.json").read_text())
    netns_before = saved_dirs.get("/run/netns", True)
    prefixes = (str(STATE) + "/", str(RUN) + "/", "/run/netns/cni-", "/var/run/netns/cni-")
    for point in sorted(
        (m for m in mounts() if m.startswith(prefixes) or m in (str(STATE), str(RUN))),
        key=lambda m: m.count("/"),
        reverse=True,
    ):
        if run(["umount", point], check=False).returncode != 0:
            run(["umount", "-l", point], check=False)
    for ns in Path("/run/netns").glob("cni-*"):
        ns.unlink(missing_ok=True)
    if NETNS_BIND.exists():
        run(["umount", "/run/netns"], check=False)  # a namespace not ours holds it: kept
    for link in (BRIDGE, NODE_IFACE):
        if run(["ip", "link", "show", link], check=False).returncode == 0:
            run(["ip", "link", "delete", link])
    clean_iptables()
    destroy_ipsets()
    release_cidrs()
    restore_binfmt()
    remove_cgroups()
    with contextlib.suppress(OSError, ValueError):
        for key, value in json.loads((STATE / "saved-sysctls.json").read_text()).items():
            if value is not None and read_sysctl(key) != value:
                write_sysctl(key, value)
    for d, existed in saved_dirs.items():
        if not existed and Path(d).exists():
            shutil.rmtree(d, ignore_errors=True)
    if not netns_before and Path("/run/netns").exists():
        shutil.rmtree("/run/netns", ignore_errors=True)
    if not saved_dirs.get("/run/containerd", True):
        remove_shim_leftovers()
    shutil.rmtree(STATE, ignore_errors=True)
    shutil.rmtree(RUN, ignore_errors=True)
    left = [m for m in mounts() if m.startswith(prefixes)]
    if left:
        raise LocalkubeError(f"mounts left behind after down: {left}")
    say(f"down in {time.monotonic() - t0:.1f}s")


# ----------------------------------------------------------------- CLI


def env_lines() -> list[str]:
    return [
        f"export KUBECONFIG={ADMIN_KUBECONFIG}",
        f"export LOCALKUBE_USER_KUBECONFIG={USER_KUBECONFIG}",
        f"export LOCALKUBE_USER={USER_NAME}",
        f"export LOCALKUBE_USER_NAMESPACE={USER_NAMESPACE}",
        f"export LOCALKUBE_REGISTRY={REGISTRY}",
        f"export LOCALKUBE_REGISTRY_PUSH={REGISTRY_LISTEN}",
        f"export PATH={build_dir() / 'bin'}:$PATH",
    ]


def status() -> int:
    ok = True
    for name, state in component_health().items():
        print(f"{name:25} {state}")
        ok &= state.startswith("running")
    checks = {
        "apiserver /readyz": lambda: (
            https_get(f"https://{NODE_IP}:{APISERVER_PORT}/readyz")[0] == 200
        ),
        f"node {NODE_NAME} Ready": node_ready,
        "CoreDNS answering": lambda: (
            KUBERNETES_SERVICE_IP in dns_query(f"kubernetes.default.svc.{CLUSTER_DOMAIN}")
        ),
    }
    for what, check in checks.items():
        try:
            good = bool(check())
        except Exception as e:
            good = False
            what += f" ({type(e).__name__}: {e})"
        print(f"{what:25} {'ok' if good else 'FAILED'}")
        ok &= good
    print(f"{'audit log':25} {AUDIT_LOG if apiserver_audits() else 'off'}")
    shaped = shaped_registry_status()
    print(
        f"{'shaped registry':25} "
        + (
            f"{shaped.pull_name}: {shaped.rate_bits / 1e6:g} Mbit/s, +{shaped.delay_s * 1000:g} ms"
            if shaped
            else "off"
        )
    )
    print(f"kubeconfig: {ADMIN_KUBECONFIG}" if ok else "localkube is not (fully) up")
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="localkube", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_p = sub.add_parser("up", help="build (first time) and start the cluster")
    up_p.add_argument(
        "--audit",
        action="store_true",
        default=None,
        help="write the API server's audit log (also LOCALKUBE_AUDIT=1); on a running "
        "cluster without it, restarts just the API server",
    )
    sub.add_parser("down", help="stop everything and remove what up created")
    sub.add_parser("status", help="show components and health; exit 1 unless fully up")
    sub.add_parser("env", help="shell lines that point kubectl and tests at the cluster")
    sub.add_parser("build", help="only build the binaries (cached)")
    push = sub.add_parser(
        "push-image", help="push a one-layer image made of local files to the registry"
    )
    push.add_argument("reference", help="REPO:TAG, e.g. myapp/server:1")
    push.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="SRC:DEST",
        help="file to put in the image (mode is kept)",
    )
    push.add_argument("--entrypoint", required=True, help="entrypoint, a JSON list or one path")
    shaped = sub.add_parser(
        "shaped-registry", help="a registry that containerd reaches over a shaped link"
    )
    shaped.add_argument("action", choices=["up", "down", "status"])
    shaped.add_argument("--rate", default="100mbit", help="each direction, tc syntax (100mbit)")
    shaped.add_argument("--delay", default="20ms", help="added to every round trip (20ms)")
    rm = sub.add_parser("remove-image", help="remove an image from the node's containerd")
    rm.add_argument("reference", help="e.g. localkube-shaped:5000/myapp/server:1")
    audit_p = sub.add_parser("audit", help="print the API server's audit events, filtered")
    audit_p.add_argument("--since", help="RFC 3339 time or Unix time")
    for field in ("user", "user-agent", "verb", "resource", "namespace", "name"):
        audit_p.add_argument(f"--{field}")
    sub.add_parser(
        "leaks", help="packets for the cluster's CIDRs that left the node (exit 1 if any)"
    )
    sub.add_parser("binfmt", help="whether arm64 and armv7 pods can run (exit 1 if not)")
    delay_p = sub.add_parser("delayline", help=argparse.SUPPRESS)  # the shaped link's delay
    delay_p.add_argument("queue", type=int)
    delay_p.add_argument("seconds", type=float)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(audit=args.audit)
        elif args.command == "shaped-registry":
            if args.action == "up":
                info = shaped_registry_up(args.rate, args.delay)
                print(f"pods pull {info.pull_name}/REPO:TAG (push to {REGISTRY_LISTEN} as usual)")
            elif args.action == "down":
                shaped_registry_down()
            else:
                info = shaped_registry_status()
                print(json.dumps(dataclasses.asdict(info)) if info else "not running")
                return 0 if info else 1
        elif args.command == "remove-image":
            removed = remove_image(args.reference)
            print("\n".join(removed) if removed else f"{args.reference}: not on the node")
        elif args.command == "audit":
            filters = {
                k: getattr(args, k)
                for k in ("user", "user_agent", "verb", "resource", "namespace", "name")
            }
            for event in audit_events(args.since, **filters):
                ref = event.get("objectRef") or {}
                res = ref.get("resource", "") + (
                    "/" + ref["subresource"] if ref.get("subresource") else ""
                )
                print(
                    event["requestReceivedTimestamp"],
                    event["user"]["username"],
                    event["verb"],
                    res or event.get("requestURI", ""),
                    ref.get("namespace", "-"),
                    ref.get("name", "-"),
                    event.get("responseStatus", {}).get("code", "-"),
                    repr(event.get("userAgent", "")),
                )
        elif args.command == "leaks":
            counters = leak_counters()
            for name, c in counters.items():
                print(
                    f"{name}: {c['packets']} packets, {c['bytes']} bytes to {c['cidr']} "
                    f"out of {', '.join(c['interfaces']) or '(no default interface)'}"
                )
            return 1 if any(c["packets"] for c in counters.values()) else 0
        elif args.command == "binfmt":
            missing = {name: foreign_arch_missing(name) for name in QEMU_BINFMT}
            for name, why in missing.items():
                print(f"{name}: {why or 'ok (' + QEMU_BINFMT[name] + ', fix-binary)'}")
            return 1 if any(missing.values()) else 0
        elif args.command == "delayline":
            delayline(args.queue, args.seconds)
        elif args.command == "down":
            down()
        elif args.command == "status":
            return status()
        elif args.command == "env":
            print("\n".join(env_lines()))
        elif args.command == "build":
            ensure_built()
            print(build_dir())
        elif args.command == "push-image":
            repo, _, tag = args.reference.rpartition(":")
            files = {}
            for spec in args.file:
                src, _, dest = spec.partition(":")
                files[dest.lstrip("/")] = (
                    Path(src).read_bytes(),
                    Path(src).stat().st_mode & 0o7777,
                )
            ep = (
                json.loads(args.entrypoint)
                if args.entrypoint.startswith("[")
                else [args.entrypoint]
            )
            print(push_image(repo, tag, files, ep))
    except LocalkubeError as e:
        print(f"localkube {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
