import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "localkube"))
import pytest_localkube


def pytest_configure(config):
    pytest_localkube.register(config)
