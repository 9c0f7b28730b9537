"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest


@pytest.fixture
def one_torch_thread():
    """One thread for torch (as for the engines the oracle tests open): no thread pools spinning
    against each other on a busy 2-core CPU. Use with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
