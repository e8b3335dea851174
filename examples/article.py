"""The article's example on minimaldask: start a cluster, compute on it, delete it.

The original scraped the master's IP from `kubectl cluster-info`, exposed the
scheduler on every node through NodePort and never waited for the cluster.
Here one call starts the cluster and returns once its workers are connected;
the client reaches it through a port-forward over the API server (nothing is
exposed), and one call deletes it and waits until every object is gone.

    python examples/article.py --namespace default --workers 3
"""

from __future__ import annotations

import argparse

import dask.array as da
from distributed import Client

from minimaldask import delete_dask_cluster, start_dask_cluster


def computation():
    """The article's graph: a mean over a 10000 x 10000 random array and its transpose."""
    x = da.random.random((10000, 10000), chunks=(1000, 1000))
    y = x + x.T
    return y[::2, 5000:].mean(axis=1)


def main(namespace: str = "default", workers: int = 3, name: str = "article", **options):
    """Run the article's computation on a fresh cluster; return (graph, result)."""
    cluster = start_dask_cluster(namespace=namespace, name=name, workers=workers, **options)
    try:
        print("The dashboard is available at:", cluster.dashboard_link)
        z = computation()
        with Client(cluster) as client:
            client.get_versions(check=True)
            result = client.compute(z).result()
        print(result)
    finally:
        delete_dask_cluster(namespace=namespace, name=name)
        cluster.close()
    return z, result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--name", default="article")
    parser.add_argument("--pip", default="", help="extra pip packages, e.g. 'camelcase pymongo'")
    args = parser.parse_args()
    main(args.namespace, args.workers, args.name, pip_packages=args.pip)
