import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from physgrad import PGT, PhysicalLayer, RandomReservoir
from physgrad.errors import ShapeError
from physgrad.models import clamp_to_safe_range_, gradient_path, parameter_bounds


def test_loss_backward_without_a_method_says_what_to_do():
    layer = PhysicalLayer(RandomReservoir(3, 5))
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="no gradient path.*method.backward"):
        layer(x).sum().backward()


def test_vmap_sends_all_probes_in_one_measurement():
    dev = RandomReservoir(3, 5)
    layer = PhysicalLayer(dev)
    params = {n: p.detach().expand(6, *p.shape).clone() for n, p in layer.named_parameters()}
    x = torch.randn(4, 3)
    out = vmap(lambda p: functional_call(layer, p, (x,)))(params)
    assert out.shape == (6, 4, 5)
    assert dev.queries == 6
    assert torch.allclose(out[2], layer(x))


def test_leading_dimensions_are_folded_into_the_batch():
    layer = PhysicalLayer(RandomReservoir(3, 5))
    x = torch.randn(2, 7, 3)
    assert torch.allclose(layer(x).reshape(14, 5), layer(x.reshape(14, 3)))
    with pytest.raises(ShapeError, match="expects"):
        layer(torch.randn(2, 4))


def test_clamp_and_bounds_use_the_declared_ranges():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), PhysicalLayer(RandomReservoir(3, 4)))
    bounds = parameter_bounds(model)
    assert set(bounds) == {"1.params.gain", "1.params.bias"}
    with torch.no_grad():
        model[1].params["gain"].fill_(9.0)
        model[1].params["bias"].fill_(-9.0)
    clamp_to_safe_range_(model)
    assert float(model[1].params["gain"].detach()) == 4.0 and float(model[1].params["bias"].detach().min()) == -2.0


def test_gradient_path_is_restored_even_after_an_error():
    layer = PhysicalLayer(RandomReservoir(3, 5))
    with pytest.raises(ZeroDivisionError):
        with gradient_path(layer, "estimate", PGT(scope="local")):
            assert layer.mode == "estimate"
            1 / 0
    assert layer.mode == "measure" and layer.estimator is None
    with pytest.raises(ValueError, match="gradient path"):
        with gradient_path(layer, "bogus"):
            pass


def test_first_layer_device_gets_no_input_perturbation():
    dev = RandomReservoir(3, 5)
    model = torch.nn.Sequential(PhysicalLayer(dev), torch.nn.Linear(5, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    method = PGT(4, 1e-2, scope="local")
    method.backward(model, F.cross_entropy, x, y)
    assert model[0].params["gain"].grad is not None
    assert method.last_cost.queries == 1 + 2 * 4
