"""Containers of a built image on a user network, cleaned up afterwards."""

import os
import platform as host
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EPOCH = "1700000000"


def build_cli(*args, env=None, timeout=900):
    """Run `python -m minimaldask.image build ARGS` with a fixed SOURCE_DATE_EPOCH."""
    return subprocess.run(
        [sys.executable, "-m", "minimaldask.image", "build", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH, **(env or {})},
    )


# Every extension module of the image, imported: a missing library or a
# broken shared object shows here, on every platform.
IMPORT_ALL = r"""
import importlib, os, sys, warnings
warnings.simplefilter("ignore")
roots = [os.path.join(sys.prefix, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}", "lib-dynload"),
         "/usr/lib/python3/dist-packages"]
done, failed = 0, []
for root in roots:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith(".so") or not (".cpython-" in name or ".abi3." in name):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            module = rel.split(".")[0].replace("/", ".")
            try:
                importlib.import_module(module)
                done += 1
            except Exception as e:
                failed.append(f"{module}: {e!r}")
print(f"imported {done} extension modules; {len(failed)} failed")
for line in failed:
    print("FAILED", line)
sys.exit(1 if failed or done < 20 else 0)
"""

COMPUTE = r"""
import sys
import dask.array as da
import numpy as np
from distributed import Client
client = Client(sys.argv[1], timeout=120)
client.wait_for_workers(1, timeout=300)
x = da.random.RandomState(0).random((2000, 2000), chunks=(500, 500))
z = (x + x.T)[::2, 1000:].mean(axis=1)
remote = z.compute()
local = z.compute(scheduler="sync")
assert remote.shape == (1000,) and np.allclose(remote, local), (remote, local)
print("computation ok", float(remote.mean()))
"""


def docker(*args, check=True, timeout=300, input=None):
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, input=input
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr}")
    return result


# qemu-user's default arm64 CPU ("max") computes pointer authentication codes with
# the QARMA cipher in software: Debian forky (3.14) builds with
# -mbranch-protection=standard (its python3.14 has ~7000 PACIASP and ~9500 AUTIASP),
# bookworm (3.11) does not, so under emulation 3.14 imported distributed 4x slower
# (25.7 s against 6.4 s) and a scheduler took 47 s instead of 13 s to start. With
# qemu's cheap implementation-defined algorithm PAC is still checked and 3.14 starts
# like 3.11 (11.7 s). Real arm64 hardware does PAC in the CPU: nothing to do there.
QEMU_ARM64_CPU = "max,pauth-impdef=on"


def platform_options(platform):
    """``docker run`` options for a platform: ``--platform``, and qemu's CPU under emulation."""
    if not platform:
        return []
    options = ["--platform", platform]
    if platform == "linux/arm64" and host.machine() not in ("aarch64", "arm64"):
        options += ["-e", f"QEMU_CPU={QEMU_ARM64_CPU}"]
    return options


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ca_options():
    """Mount the host's CA bundle so pip works behind a TLS-inspecting proxy."""
    ca = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if not ca or not os.path.exists(ca):
        return []
    return [
        "-v",
        f"{ca}:/etc/ssl/certs/host-ca.crt:ro",
        "-e",
        "PIP_CERT=/etc/ssl/certs/host-ca.crt",
    ]


class Network:
    """A user network; containers started through it are removed with it."""

    def __init__(self, image, platform=None):
        self.image = image
        self.platform = platform
        self.name = f"minimaldask-test-{uuid.uuid4().hex[:8]}"
        self.containers = []
        docker("network", "create", self.name)

    def run(self, name, *options, env=None, entrypoint=None, args=(), detach=True):
        cmd = ["run", "--name", f"{self.name}-{name}", "--network", self.name]
        cmd += ["--network-alias", name, "--read-only", "--tmpfs", "/tmp:exec"]
        cmd += platform_options(self.platform)
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        if entrypoint:
            cmd += ["--entrypoint", entrypoint]
        cmd += [*options, "-d" if detach else "--rm", self.image, *args]
        self.containers.append(f"{self.name}-{name}")
        return docker(*cmd, check=detach, timeout=900)

    def logs(self, name):
        result = docker("logs", f"{self.name}-{name}", check=False)
        return result.stdout + result.stderr

    def all_logs(self):
        """Every detached container's log, each under its name: what a failure shows."""
        prefix = f"{self.name}-"
        return "".join(
            f"\n--- {c.removeprefix(prefix)}\n{self.logs(c.removeprefix(prefix))}"
            for c in self.containers
        )

    def wait_log(self, name, text, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.logs(name):
                return
            time.sleep(1)
        raise AssertionError(f"{name} did not log {text!r} in {timeout} s:\n{self.logs(name)}")

    def close(self):
        for name in self.containers:
            docker("rm", "-f", name, check=False)
        docker("network", "rm", self.name, check=False)
