import pytest
import torch

# One thread per test process: the suite's tensors are small, and oversubscribed OpenMP threads
# on a shared 2-core machine make torch ops many times slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
