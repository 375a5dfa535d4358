import pytest
import torch
import torch.nn.functional as F

from _helpers import exact_grad, flat_grad, small_net
from physgrad import FiniteDifference


@pytest.mark.parametrize("scope", ["global", "local"])
def test_central_differences_match_the_exact_gradient(scope):
    model, x, y = small_net()
    g = exact_grad(model, x, y)
    method = FiniteDifference(scope=scope, delta=1e-5, max_probes=40)
    method.backward(model, F.cross_entropy, x, y)
    assert torch.allclose(flat_grad(model), g, rtol=1e-6, atol=1e-8)
    dim = sum(p.numel() for p in model.parameters())
    dev_dim = sum(p.numel() for p in model.reservoir.parameters())
    expected = 1 + 2 * dim if scope == "global" else 1 + 2 * (model.reservoir.system.input_shape[0] + dev_dim)
    assert method.last_cost.queries == expected


def test_error_is_second_order_in_the_step():
    model, x, y = small_net()
    g = exact_grad(model, x, y)

    def err(h):
        model.zero_grad()
        FiniteDifference(delta=h).backward(model, F.cross_entropy, x, y)
        return float((flat_grad(model) - g).norm())

    ratio = err(1e-1) / err(5e-2)  # O(h²): halving h quarters the error
    assert 3.0 < ratio < 5.0
