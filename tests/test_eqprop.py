"""Equilibrium Propagation (methods/eqprop.py): bias orders, ask/tell, training, bad input."""

import math

import pytest
import torch

from physgrad.errors import ConfigError, MeasurementError, ShapeError
from physgrad.methods import Backprop, EqProp
from physgrad.methods.energy.eqprop import Phase, nudging_pair, run_phases
from physgrad.models import EnergyModel
from physgrad.systems import HopfieldNetwork

from _helpers import assert_energy_model_learns_digits



def smooth_model(seed=3):
    """States stay inside wide boxes, so the equilibrium is a smooth function of θ and β."""
    net = HopfieldNetwork([6, 8, 4], gains=[0.7, 0.7], hidden_range=(-5, 5), output_range=(-5, 5),
                          tolerance=1e-13, max_sweeps=5000, seed=seed)
    return EnergyModel(net).double()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(5, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (5,), generator=g)


def flat_grad(model, method, x, y):
    model.zero_grad()
    method.backward(model, model.loss, x, y)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_centered_bias_is_second_order_one_sided_first_order():
    model = smooth_model()
    x, y = batch()
    exact = flat_grad(model, Backprop(), x, y)
    betas = [0.1, 0.05, 0.025, 0.0125]
    err = {v: [] for v in ("centered", "positive", "negative")}
    for beta in betas:
        for v in err:
            err[v].append(float((flat_grad(model, EqProp(beta, v), x, y) - exact).norm() / exact.norm()))
    for v, order in (("centered", 2), ("positive", 1), ("negative", 1)):
        ratios = [a / b for a, b in zip(err[v], err[v][1:])]
        # halving β divides the error by 2^order (within 30 %)
        assert all(0.7 * 2**order < r < 1.3 * 2**order for r in ratios), (v, err[v])
    assert err["centered"][-1] < 1e-3 and err["centered"][-1] < err["positive"][-1] / 10


def test_ask_tell_by_hand_equals_backward():
    model = smooth_model()
    x, y = batch(1)
    method = EqProp(0.1, "centered")
    theta = {n: p.detach() for n, p in model.parameter_dict().items()}
    probes = method.ask(theta, x, y)
    assert [p.beta for p in probes.phases] == [0.0, -0.05, 0.05]
    assert all(p.parameters == "held" for p in probes.phases)
    answers = run_phases(model.device, probes)
    estimate = method.tell(probes, answers)
    assert estimate.cost.queries == 3 and estimate.cost.samples == 15
    by_backward = flat_grad(model, EqProp(0.1, "centered"), x, y)
    torch.testing.assert_close(torch.cat([estimate.grads[n].flatten() for n in theta]), by_backward)


def test_one_sided_variant_uses_two_relaxations():
    model = smooth_model()
    x, y = batch(2)
    method = EqProp(0.2, "positive")
    flat_grad(model, method, x, y)
    assert method.last_cost.queries == 2 and len(method.last_reports) == 2
    assert method.last_sweeps == sum(r.sweeps for r in method.last_reports) > 0
    assert model.device.energy_gradient_reads >= 2


def test_eqprop_trains_digits_like_a_classifier():
    torch.manual_seed(0)
    model = EnergyModel(HopfieldNetwork([64, 32, 10], gains=[0.8, 1.2], tolerance=1e-4, seed=0))
    method = EqProp(0.2, "centered")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def update(x, y):
        opt.zero_grad()
        method.backward(model, model.loss, x, y)
        opt.step()

    assert_energy_model_learns_digits(model, update)


def test_a_device_that_refuses_dEdtheta_cannot_run_eqprop():
    net = HopfieldNetwork([6, 8, 4], energy_gradient_readout=False, seed=0)
    model = EnergyModel(net)
    x, y = batch()
    model.zero_grad()
    with pytest.raises(MeasurementError, match="offers no read-out of dE/dtheta"):
        EqProp(0.2).backward(model, model.loss, x.float(), y)
    assert all(p.grad is None for p in model.parameters())  # nothing half-applied


def test_bad_settings_give_clear_errors():
    with pytest.raises(ConfigError, match=r"beta must be a finite number in \(0, 1\]"):
        EqProp(0.0)
    with pytest.raises(ConfigError, match=r"beta must be a finite number in \(0, 1\]"):
        EqProp(math.inf)
    with pytest.raises(ConfigError, match="variant must be one of"):
        EqProp(0.1, "sideways")
    with pytest.raises(ConfigError, match="parameters must be 'held' or 'released'"):
        Phase("x", 0.1, "floating")
    with pytest.raises(ConfigError, match="need a model that is an EnergyModel"):
        EqProp(0.1).backward(torch.nn.Linear(3, 2), torch.nn.functional.mse_loss, torch.rand(2, 3), torch.rand(2, 2))
    model = smooth_model()
    x, y = batch()
    with pytest.raises(ShapeError, match="inputs carry 5 samples but targets 4"):
        EqProp(0.1).ask({n: p.detach() for n, p in model.parameter_dict().items()}, x, y[:4])
    with pytest.raises(ShapeError, match="expects inputs"):
        EqProp(0.1).backward(model, model.loss, torch.rand(5, 7, dtype=torch.float64), y)
    assert nudging_pair("negative", 0.3) == (-0.3, 0.0)
