"""The energy-device lab interface (systems/energy.py): controllers, knobs, joint relaxation, cost."""

import math

import pytest
import torch

from physgrad.errors import ConfigError, MeasurementError, RangeError, ShapeError
from physgrad.models import EnergyModel
from physgrad.methods import Backprop
from physgrad.systems import HopfieldNetwork, ResistiveNetwork
from physgrad.systems.devices.energy.base import EnergyDevice, RelaxationReport, check_epsilon



def smooth_net(seed=0, **kw):
    """A small net whose states stay inside their (wide) boxes: a smooth energy."""
    return HopfieldNetwork([5, 6, 3], gains=[0.8, 0.8], hidden_range=(-5, 5), output_range=(-5, 5),
                           tolerance=1e-12, max_sweeps=5000, seed=seed, **kw)


def setup(device, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, device.input_shape[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, device.output_shape[0], (batch,), generator=g)
    device.set_parameters({n: v.double() for n, v in device.initial_parameters().items()})
    device.clamp_inputs(x)
    device.set_target(y)
    return x, y


def test_held_controller_settles_knobs_at_theta_plus_eps_dEdtheta():
    dev = smooth_net()
    setup(dev)
    dev.set_coupling(0.05)
    dev.set_nudging(0.3)
    dev.hold_parameters()
    report = dev.relax()
    assert report.converged
    theta, knobs, grad = dev.read_parameters(), dev.read_knobs(), dev.measure_energy_gradient()
    for n in theta:
        torch.testing.assert_close(knobs[n], theta[n] + 0.05 * grad[n])
    # holding means θ did not move
    for n, v in dev.initial_parameters().items():
        torch.testing.assert_close(theta[n], v.double())


def test_released_parameters_reach_the_joint_minimum():
    dev = smooth_net()
    setup(dev)
    dev.set_coupling(0.05)
    dev.set_nudging(0.2)
    dev.relax()
    dev.release_parameters()
    knobs = dev.read_knobs()
    report = dev.relax()
    assert report.converged
    theta, grad = dev.read_parameters(), dev.measure_energy_gradient()
    # stationarity in θ: (θ − u)/ε + ∂E/∂θ = 0 at the joint equilibrium
    for n in theta:
        torch.testing.assert_close(theta[n], knobs[n] - 0.05 * grad[n], atol=1e-9, rtol=0)
    # and the knobs stayed frozen
    for n, v in dev.read_knobs().items():
        torch.testing.assert_close(v, knobs[n])


def test_joint_relaxation_with_soft_springs_stays_in_the_safe_range():
    dev = HopfieldNetwork([20, 8, 3], tolerance=1e-8, max_sweeps=60, seed=0)
    g = torch.Generator().manual_seed(0)
    dev.clamp_inputs(torch.rand(16, 20, generator=g))
    dev.set_target(torch.randint(0, 3, (16,), generator=g))
    dev.set_coupling(50.0)  # far beyond convexity: θ runs to its bounds
    dev.set_nudging(0.5)
    dev.relax()
    dev.release_parameters()
    dev.relax()
    at_bound = 0
    for name, value in dev.read_parameters().items():
        low, high = dev.parameter_specs[name].bounds()
        assert torch.isfinite(value).all()
        assert (value >= low).all() and (value <= high).all()
        at_bound += int(((value == low) | (value == high)).sum())
    assert at_bound > 0  # the runaway ended on the safe range's walls, not beyond


def test_nonconvergence_can_raise():
    dev = HopfieldNetwork([20, 8, 3], tolerance=1e-8, max_sweeps=2, on_nonconvergence="raise", gains=[3, 3], seed=0)
    dev.clamp_inputs(torch.rand(4, 20))
    with pytest.raises(MeasurementError, match="did not converge within 2 sweeps"):
        dev.relax()


def test_device_may_refuse_energy_gradient():
    dev = smooth_net(energy_gradient_readout=False)
    setup(dev)
    dev.relax()
    with pytest.raises(MeasurementError, match="offers no read-out of dE/dtheta"):
        dev.measure_energy_gradient()


def test_counters_one_query_per_relaxation_and_sweeps():
    dev = smooth_net()
    setup(dev, batch=7)
    dev.reset_counters()
    r1 = dev.relax()
    dev.set_nudging(0.1)
    r2 = dev.relax()
    assert dev.cost.queries == 2 and dev.cost.samples == 14
    assert dev.sweeps == r1.sweeps + r2.sweeps > 2


def test_bad_settings_give_clear_errors():
    dev = smooth_net()
    with pytest.raises(ConfigError, match="clamp_inputs"):
        dev.relax()
    with pytest.raises(ShapeError, match=r"expects inputs \[B, \*\(5,\)\]"):
        dev.clamp_inputs(torch.rand(3, 4))
    with pytest.raises(RangeError, match="non-finite"):
        dev.clamp_inputs(torch.full((2, 5), math.nan))
    dev.clamp_inputs(torch.rand(3, 5))
    with pytest.raises(ConfigError, match="set_target"):
        dev.set_nudging(0.1)
    with pytest.raises(ShapeError, match="target shape"):
        dev.set_target(torch.rand(2, 3))
    with pytest.raises(ShapeError, match="class labels must lie in"):
        dev.set_target(torch.tensor([0, 1, 7]))
    dev.set_target(torch.tensor([0, 1, 2]))
    with pytest.raises(RangeError, match="outside the device's range"):
        dev.set_nudging(-1.5)
    with pytest.raises(ConfigError, match=r"epsilon must be a finite number in \(0, 1000\]"):
        dev.set_coupling(0.0)
    with pytest.raises(ConfigError, match="unknown parameter"):
        dev.set_coupling({"W9": 0.1})
    with pytest.raises(ShapeError, match="expected shape"):
        dev.set_knobs({"W1": torch.zeros(2, 2)})
    with pytest.raises(RangeError, match="non-finite"):
        dev.set_parameters({"W1": torch.full((5, 6), math.nan)})
    with pytest.raises(ConfigError):
        check_epsilon("abc")


def test_range_guard_clips_programmed_parameters():
    dev = smooth_net()
    dev.set_parameters({"W1": torch.full((5, 6), 7.0)})
    assert float(dev.read_parameters()["W1"].max()) == 1.0
    refusing = HopfieldNetwork([5, 6, 3], guard="refuse")
    with pytest.raises(RangeError, match="outside the safe range"):
        refusing.set_parameters({"W1": torch.full((5, 6), 7.0)})


@pytest.mark.parametrize("make", [smooth_net, lambda: ResistiveNetwork(3, [4, 2], seed=1)])
def test_simulate_gradient_matches_finite_differences(make):
    dev = make()
    model = EnergyModel(dev).double()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, dev.input_shape[0], generator=g, dtype=torch.float64)
    y = torch.randn(3, dev.output_shape[0], generator=g, dtype=torch.float64)
    model.zero_grad()
    Backprop().backward(model, model.loss, x, y)
    params = model.parameter_dict()
    name = next(iter(params))
    p = params[name]
    fd = torch.zeros_like(p)
    h = 1e-6
    with torch.no_grad():
        for i in range(p.numel()):
            old = p.view(-1)[i].item()
            p.view(-1)[i] = old + h
            lp = model.loss(model(x), y)
            p.view(-1)[i] = old - h
            lm = model.loss(model(x), y)
            p.view(-1)[i] = old
            fd.view(-1)[i] = (lp - lm) / (2 * h)
    torch.testing.assert_close(p.grad, fd, atol=1e-7, rtol=1e-5)


def test_measure_counts_probes_and_relaxes_each():
    dev = smooth_net()
    theta = {n: torch.stack([v, 0.5 * v]) for n, v in dev.initial_parameters().items()}
    x = torch.rand(4, 5)
    out = dev.measure(theta, x)
    assert out.shape == (2, 4, 3) and dev.queries == 2
    single = dev.measure({n: v[1] for n, v in theta.items()}, x)
    torch.testing.assert_close(out[1], single[0], atol=1e-5, rtol=0)


def test_relaxation_report_adds_sweeps():
    total = RelaxationReport(3, False, 1.0) + RelaxationReport(2, True, 0.0)
    assert total == RelaxationReport(5, True, 0.0)
    assert issubclass(HopfieldNetwork, EnergyDevice)
