"""The pod side of minimaldask that the image holds: what its pods import, and nothing of the client."""

import os
import shutil
import subprocess
import sys
import textwrap

import minimaldask
from minimaldask.image.builder import pod_side
from minimaldask.image.trim import recorded_modules

SOURCE = os.path.dirname(minimaldask.__file__)


def module_of(rel):
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["minimaldask", *parts])


def test_the_pod_side_is_every_module_the_pods_imported_and_no_client_module():
    files = pod_side(SOURCE)
    modules = {module_of(f) for f in files}
    recorded = {m for m in recorded_modules() if m.split(".")[0] == "minimaldask"}
    assert recorded <= modules, recorded - modules
    pod = {f"minimaldask.pod.{n[:-3]}" for n in os.listdir(f"{SOURCE}/pod") if n.endswith(".py")}
    assert pod - {"minimaldask.pod.__init__"} <= modules
    for client in ("minimaldask.cluster", "minimaldask.api", "minimaldask.spec",
                   "minimaldask.kubernetes.api", "minimaldask.cli.kube",
                   "minimaldask.image.builder", "minimaldask.local.backend"):  # fmt: skip
        assert client not in modules


def test_lazy_imports_count_and_the_type_checkers_do_not(tmp_path):
    pkg = tmp_path / "minimaldask"
    for rel, text in {
        "__init__.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from minimaldask.client import Big\nelse:\n    pass\n",
        "client.py": "",
        "helper.py": "",
        "sub/__init__.py": "",
        "sub/deep.py": "",
        "pod/__init__.py": "",
        "pod/run.py": "def f():\n    from . import other\n    from minimaldask.sub import deep\n",
        "pod/other.py": "from ..helper import x\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    assert pod_side(str(pkg)) == [
        "__init__.py", "helper.py", "pod/__init__.py", "pod/other.py", "pod/run.py",
        "sub/__init__.py", "sub/deep.py",
    ]  # fmt: skip


def test_the_pod_side_runs_alone_and_names_what_it_lacks(tmp_path):
    for rel in pod_side(SOURCE):
        (tmp_path / "minimaldask" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(os.path.join(SOURCE, rel), tmp_path / "minimaldask" / rel)
    code = textwrap.dedent("""
        import sys
        import minimaldask.pod.entrypoint, minimaldask.pod.plugin, minimaldask.pod.janitor
        import minimaldask.pod.worker, minimaldask.pod.drain
        assert minimaldask.__file__.startswith(sys.argv[1]), minimaldask.__file__
        try:
            minimaldask.MinimalCluster
        except ImportError as e:
            print(e)
    """)
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "minimaldask.MinimalCluster is not in this installation" in run.stdout
    assert "pip install minimaldask" in run.stdout
