import sys

import pytest

from minimaldask.kubernetes.api import _describe


def test_an_error_is_described_by_its_type_and_message():
    assert _describe(ConnectionError("reset")) == "ConnectionError: reset"
    assert _describe(TimeoutError()) == "TimeoutError"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is built in from 3.11")
def test_a_group_is_described_by_what_is_in_it():
    # httpx-ws ends a websocket through a task group: its message says nothing of why.
    group = ExceptionGroup(  # noqa: F821  (3.11+)
        "unhandled errors in a TaskGroup", [ConnectionError("no answer"), ValueError("bad")]
    )
    assert _describe(group) == "ConnectionError: no answer; ValueError: bad"
