import pytest
import torch
import torch.nn.functional as F

from physgrad import Backprop, PhysicalLayer, RandomReservoir


def test_backprop_equals_autograd_on_the_same_function():
    dev = RandomReservoir(3, 6, seed=2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), PhysicalLayer(dev), torch.nn.Linear(6, 2)).double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 2, (5,))
    m = Backprop()
    loss = m.backward(model, F.cross_entropy, x, y)
    # the same computation written out by hand
    lin1, lin2 = model[0], model[2]
    w_in, b0 = dev._w_in.double(), dev._b0.double()
    gain = model[1].params["gain"].detach().clone().requires_grad_()
    w1 = lin1.weight.detach().clone().requires_grad_()
    h = torch.tanh(gain * ((x @ w1.T + lin1.bias.detach()) @ w_in.T) + b0 + model[1].params["bias"].detach())
    ref = F.cross_entropy(h @ lin2.weight.detach().T + lin2.bias.detach(), y)
    ref.backward()
    assert float(loss) == pytest.approx(float(ref.detach()))
    assert torch.allclose(model[1].params["gain"].grad, gain.grad)
    assert torch.allclose(lin1.weight.grad, w1.grad)
    assert m.last_cost.queries == 1


def test_backprop_refuses_a_device_without_a_simulator():
    dev = RandomReservoir(3, 4)
    dev.differentiable = False
    model = torch.nn.Sequential(PhysicalLayer(dev), torch.nn.Linear(4, 2))
    with pytest.raises(TypeError, match="not a differentiable simulator"):
        Backprop().backward(model, F.cross_entropy, torch.randn(2, 3), torch.tensor([0, 1]))
