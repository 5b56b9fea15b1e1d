"""A tiny demo dataset in capvector's own format, written without the simulator."""

import pytest
from demo_helpers import write_demo_dataset


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "demos")
