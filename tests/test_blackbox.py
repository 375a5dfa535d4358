import pytest
import torch
from torch import nn

from physgrad.systems import BlackBox


def test_blackbox_matches_module_and_hides_its_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    box = BlackBox(net, (4,), ranges={"0.weight": (-1.0, 1.0)})
    assert box.output_shape == (2,)
    assert set(box.parameter_specs) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    x = torch.randn(7, 4)
    params = box.initial_parameters()
    out = box.measure(params, x)
    assert torch.allclose(out[0], net(x).detach(), atol=1e-6)
    assert not out.requires_grad
    # several settings in one call: the second probe scales the read-out
    batched = {k: torch.stack([v, v * (2 if k == "2.weight" else 1)]) for k, v in params.items()}
    out2 = box.measure(batched, x)
    assert torch.allclose(out2[1] - params["2.bias"], 2 * (out2[0] - params["2.bias"]), atol=1e-5)


def test_blackbox_ranges_must_name_real_parameters():
    with pytest.raises(ValueError, match="unknown parameter"):
        BlackBox(nn.Linear(2, 2), (2,), ranges={"nope": (0, 1)})


def test_blackbox_copy_is_independent_of_the_module():
    net = nn.Linear(3, 1)
    box = BlackBox(net, (3,))
    with torch.no_grad():
        net.weight.add_(10.0)
    out = box.measure(box.initial_parameters(), torch.ones(1, 3))
    assert abs(float(out) - float(net(torch.ones(1, 3)).detach())) > 1.0
