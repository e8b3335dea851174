"""Run the article's functions in a real Jupyter kernel, as a notebook user would."""

from __future__ import annotations

import json
import os

import nbformat
from nbclient import NotebookClient


def cells(backend: str, namespace: str, name: str, extra: str = "") -> list[str]:
    """The article's life cycle: start, compute, list, scale, delete, in both forms."""
    where = f"namespace={namespace!r}, name={name!r}, backend={backend!r}"
    return [
        "import json, dask.array as da\n"
        "from distributed import Client\n"
        "from minimaldask import start_dask_cluster, delete_dask_cluster, list_clusters\n"
        "import minimaldask.asyncio as aio",
        f"cluster = start_dask_cluster({where}, workers=2{extra})\nclient = Client(cluster)",
        "x = da.random.random((2000, 2000), chunks=(500, 500))\n"
        "print(json.dumps({'mean': float((x + x.T).mean().compute())}))",
        f"print(json.dumps({{'listed': [c.name for c in list_clusters(namespace={namespace!r}, "
        f"backend={backend!r})]}}))",
        f"listed = await aio.list_clusters(namespace={namespace!r}, backend={backend!r})\n"
        "print(json.dumps({'awaited': [c.name for c in listed]}))",
        "cluster.scale(1)\nclient.wait_for_workers(1)\n"
        "import time\n"
        "deadline = time.monotonic() + 60\n"
        "while len(client.nthreads()) != 1 and time.monotonic() < deadline:\n"
        "    time.sleep(0.5)\n"
        "print(json.dumps({'workers': len(client.nthreads())}))",
        f"client.close()\nprint(json.dumps({{'deleted': delete_dask_cluster({where})}}))",
        f"print(json.dumps({{'after': [c.name for c in list_clusters(namespace={namespace!r}, "
        f"backend={backend!r})]}}))",
    ]


def run_notebook(sources: list[str], env: dict[str, str] | None = None, timeout: int = 600) -> dict:
    """Execute ``sources`` as one notebook in a fresh kernel; return what the cells printed.

    Each cell prints one JSON object; a cell that raises fails the run with its traceback.
    """
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        # The "python3" kernel of a process that has ipykernel is its own interpreter.
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3")
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    printed: dict = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                for line in output["text"].splitlines():
                    if line.startswith("{"):
                        printed.update(json.loads(line))
    return printed
