"""The layers of the package: code that runs in the pods imports nothing of the client.

The pods run the entrypoint and the janitor; the client's modules (its options,
config, backends, the Kubernetes client, the CLI) must not load there. Checked
twice: statically over every import the pod's modules can reach (imports inside
functions too), and by importing them in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import minimaldask

PACKAGE = Path(minimaldask.__file__).parent
#: Modules the pod side may use: the contract, the exceptions, the image's Debian
#: installer (for EXTRA_OS_PACKAGES) and what that needs.
POD_SIDE = {
    "minimaldask",
    "minimaldask._version",
    "minimaldask.contract",
    "minimaldask.exceptions",
    "minimaldask.image",
    "minimaldask.image.debian",
    "minimaldask.image.debfile",
    "minimaldask.image.openpgp",
}
#: Libraries of the client only.
CLIENT_LIBRARIES = {"kr8s", "httpx", "rich"}


def module_path(name: str) -> Path:
    relative = Path(*name.split(".")[1:])
    package = PACKAGE / relative / "__init__.py"
    return package if package.exists() else (PACKAGE / relative).with_suffix(".py")


def imports_of(name: str) -> set[str]:
    """Every minimaldask module ``name`` imports, anywhere in its code (not under TYPE_CHECKING)."""
    tree = ast.parse(module_path(name).read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body
        for n in ast.walk(child)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] == "minimaldask" and module_path(m).exists()}


def pod_modules() -> set[str]:
    return {
        "minimaldask.pod." + p.stem for p in (PACKAGE / "pod").glob("*.py") if p.stem != "__init__"
    } | {"minimaldask.pod"}


def test_pod_code_reaches_no_client_module():
    seen, todo = set(), list(pod_modules())
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += imports_of(name)
    client = sorted(m for m in seen if m not in POD_SIDE and not m.startswith("minimaldask.pod"))
    assert client == [], f"code that runs in the pods imports client modules: {client}"


def test_the_check_sees_a_client_import():
    # The static check must be able to fail: the CLI does import the client.
    assert "minimaldask.cluster" in imports_of("minimaldask.cli.kube")


def test_importing_the_pod_side_loads_no_client_module():
    code = (
        "import sys, json; import minimaldask.pod.entrypoint, minimaldask.pod.janitor; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = set(json.loads(subprocess.check_output([sys.executable, "-c", code])))
    ours = {m for m in loaded if m.split(".")[0] == "minimaldask"}
    client = sorted(m for m in ours if m not in POD_SIDE and not m.startswith("minimaldask.pod"))
    assert client == []
    assert not {m.split(".")[0] for m in loaded} & CLIENT_LIBRARIES


def test_the_entrypoint_alone_loads_neither_dask_nor_the_client():
    # It execs dask; loading dask itself first would only double the start-up cost.
    code = "import sys, json; import minimaldask.pod.entrypoint; print(json.dumps(sorted(sys.modules)))"
    loaded = {
        m.split(".")[0] for m in json.loads(subprocess.check_output([sys.executable, "-c", code]))
    }
    assert not loaded & (CLIENT_LIBRARIES | {"yaml", "dask", "distributed", "numpy"})


def test_the_public_api_still_imports_from_the_package():
    code = (
        "from minimaldask import MinimalCluster, start_dask_cluster; print(MinimalCluster.__name__)"
    )
    assert subprocess.check_output([sys.executable, "-c", code]).strip() == b"MinimalCluster"
