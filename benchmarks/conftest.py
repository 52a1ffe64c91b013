import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the peers live with the tests


@pytest.fixture(autouse=True)
def two_threads():
    """Every CPU claim is for 2 threads (the development and CI machines)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
