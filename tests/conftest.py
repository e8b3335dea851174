import uuid

import pytest


@pytest.fixture
def cluster_name():
    """A cluster name no other test uses."""
    return f"t-{uuid.uuid4().hex[:8]}"
