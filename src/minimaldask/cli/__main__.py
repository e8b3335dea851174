"""``python -m minimaldask.cli``: the ``minimaldask`` command."""

from minimaldask.cli import main

main()
