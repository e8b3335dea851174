"""Code that runs in the pods: the entrypoint and the janitor.

It imports the standard library, dask and :mod:`minimaldask.contract`, never
the client side (tests/unit/test_layers.py checks it), so that a pod starts
without loading what only the client needs.
"""
