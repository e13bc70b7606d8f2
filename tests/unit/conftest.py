"""Unit-test fixtures (no database)."""

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch code on one thread (small models: threads only add overhead here)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
