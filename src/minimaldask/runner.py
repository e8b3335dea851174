"""One way to run the async core from synchronous code: in a notebook or not.

The public functions are written once, as coroutines (:mod:`minimaldask.asyncio`);
their synchronous forms come from :func:`synchronous`, which runs the coroutine
to its end whether or not an event loop already runs in this thread (Jupyter
and IPython run one; ``asyncio.run`` refuses to start there).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end from synchronous code, inside a running event loop or not."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # This thread's loop is busy running the caller (a notebook cell): a loop of our own,
    # in a thread of our own, while the caller waits.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="minimaldask") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def synchronous(function: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """The synchronous form of an async function: same signature, same documentation."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return run(function(*args, **kwargs))

    return wrapper
