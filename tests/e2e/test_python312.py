"""A client on Python 3.12, a Python no Debian suite ships, on the local Kubernetes.

The image is built with --python-from around this machine's CPython 3.12
(tests/image/pythonfrom.py makes a standalone-layout archive of pyenv's) and
pushed to the local registry; a virtual environment of that Python with
minimaldask installed runs the article's example (examples/article.py) as the
namespace-only user. The environment is cached outside the repository, keyed
by the interpreter and pyproject.toml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dask
import pytest

from pythonfrom import client_venv, standalone_archive

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def venv312():
    """A Python 3.12 virtual environment with this checkout of minimaldask installed (editable)."""
    return client_venv("3.12", ROOT)


@pytest.fixture(scope="module")
def image312(localkube_cluster, localkube_registry):
    tag = f"{dask.__version__}-py3.12"
    subprocess.run(
        [sys.executable, "-m", "minimaldask.image", "build",
         "--python-from", str(standalone_archive("3.12")),
         "--push", f"{localkube_registry.push_address}/minimaldask:{tag}", "--insecure"],
        check=True, timeout=900,
    )  # fmt: skip
    return f"{localkube_registry.pull_name}/minimaldask", tag


def test_article_example_from_a_python_312_client(venv312, image312, kube_namespace):
    repository, tag = image312
    env = {
        **os.environ,
        "KUBECONFIG": str(kube_namespace.user_kubeconfig),
        "DASK_MINIMALDASK__IMAGE__REPOSITORY": repository,
        "DASK_MINIMALDASK__IMAGE__TAG": tag,
        # Each run pushes a new build under the same tag: a node must not run an old one.
        "DASK_MINIMALDASK__IMAGE__PULL_POLICY": "Always",
        "DASK_MINIMALDASK__WORKER__CPU": "200m",
        "DASK_MINIMALDASK__WORKER__MEMORY": "384Mi",
        "DASK_MINIMALDASK__SCHEDULER__CPU": "100m",
        "DASK_MINIMALDASK__SCHEDULER__MEMORY": "384Mi",
    }
    code = (
        "import runpy, sys, numpy as np\n"
        "assert sys.version_info[:2] == (3, 12), sys.version\n"
        f"article = runpy.run_path({str(ROOT / 'examples/article.py')!r})\n"
        f"z, result = article['main'](namespace={kube_namespace.name!r}, workers=2, name='py312')\n"
        "assert result.shape == (5000,)\n"
        "np.testing.assert_allclose(result, z.compute(scheduler='threads'))\n"
        "print('article example ok on Python', sys.version.split()[0])\n"
    )
    run = subprocess.run(
        [str(venv312), "-c", code], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "article example ok on Python 3.12" in run.stdout
    left = kube_namespace.kubectl(
        "get", "deployments,services,pods", "-l", "app.kubernetes.io/instance=py312", "-o", "name"
    ).stdout.split()
    assert left == []
