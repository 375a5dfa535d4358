import pytest
import torch

# One thread per test process: the suite's tensors are small, and oversubscribed OpenMP threads
# on a shared 2-core machine make torch ops many times slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def served(request):
    """Start device servers on 127.0.0.1 with the test module's ``TOKEN``; every one is stopped after the test."""
    from physgrad.systems.remote.server import DeviceServer  # pyzmq only where a test serves a device

    servers = []

    def start(device, **kwargs):
        server = DeviceServer(device, request.module.TOKEN, "tcp://127.0.0.1:*", **kwargs).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()
