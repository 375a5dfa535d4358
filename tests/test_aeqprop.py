"""Agnostic Equilibrium Propagation (methods/aeqprop.py): equals EqProp to O(ε), never reads ∂E/∂θ."""

import math

import pytest
import torch

from physgrad.errors import ConfigError, MeasurementError
from physgrad.methods import Aeqprop, EqProp
from physgrad.methods.energy.eqprop import run_phases
from physgrad.models import EnergyModel
from physgrad.systems import HopfieldNetwork

from _helpers import assert_energy_model_learns_digits


class RefusingHopfield(HopfieldNetwork):
    """A device with no ∂E/∂θ read-out and no knob read-out at all: the agnostic setting."""

    def measure_energy_gradient(self):
        raise AssertionError("Aeqprop read dE/dtheta")

    def read_knobs(self):
        raise AssertionError("Aeqprop read the knobs")

    def energy_gradient(self, params, inputs, states):
        # the physics may use its own forces, but only inside relax(): count who calls
        import inspect

        callers = {f.function for f in inspect.stack()[1:6]}
        assert callers & {"relax", "_sync_knobs", "minimise_parameters"}, callers
        return super().energy_gradient(params, inputs, states)



def random_net(seed, cls=HopfieldNetwork, **kw):
    return cls([6, 8, 4], gains=[1.2, 1.2], tolerance=1e-13, max_sweeps=5000, seed=seed, **kw)


def batch(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(6, 6, generator=g, dtype=dtype), torch.randint(0, 4, (6,), generator=g)


def grads(model, method, x, y):
    model.zero_grad()
    method.backward(model, model.loss, x, y)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", ["centered", "optimistic"])
def test_aeqprop_step_equals_eqprop_step_to_first_order_in_epsilon(seed, variant):
    model = EnergyModel(random_net(seed)).double()
    x, y = batch(seed)
    eqprop_variant = "centered" if variant == "centered" else "positive"
    reference = grads(model, EqProp(0.2, eqprop_variant), x, y)
    errors = []
    for eps in (0.02, 0.01, 0.005, 0.0025):
        g = grads(model, Aeqprop(0.2, variant, epsilon=eps), x, y)
        errors.append(float((g - reference).norm() / reference.norm()))
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert errors[-1] < 0.05
    assert all(1.5 < r < 2.6 for r in ratios), errors  # halving ε halves the departure: O(ε)


def test_first_order_form_is_exactly_the_eqprop_step_at_any_epsilon():
    model = EnergyModel(random_net(4)).double()
    x, y = batch(4)
    reference = grads(model, EqProp(0.2, "centered"), x, y)
    for eps in (1e-3, 0.5):
        g = grads(model, Aeqprop(0.2, "centered", epsilon=eps, relaxation="first-order"), x, y)
        torch.testing.assert_close(g, reference, atol=1e-9, rtol=1e-7)


def test_departure_from_eqprop_grows_with_epsilon():
    """Finite ε: the exact joint relaxation is a preconditioned implicit step, not EqProp's."""
    model = EnergyModel(random_net(5)).double()
    x, y = batch(5)
    reference = grads(model, EqProp(0.2, "centered"), x, y)
    errors = [float((grads(model, Aeqprop(0.2, epsilon=e), x, y) - reference).norm() / reference.norm())
              for e in (0.001, 0.01, 0.05)]
    assert errors[0] < errors[1] < errors[2] and errors[2] > 0.05


def test_aeqprop_never_reads_dEdtheta_or_knobs():
    device = random_net(6, RefusingHopfield, energy_gradient_readout=False)
    model = EnergyModel(device).double()
    x, y = batch(6)
    for variant in ("centered", "optimistic", "pessimistic"):
        g = grads(model, Aeqprop(0.2, variant, epsilon=0.005), x, y)
        assert torch.isfinite(g).all() and g.norm() > 0
    assert device.energy_gradient_reads == 0
    # the same device cannot serve EqProp
    with pytest.raises(MeasurementError, match="offers no read-out"):
        grads(EnergyModel(random_net(6, energy_gradient_readout=False)).double(), EqProp(0.2), x, y)


def test_physical_step_moves_theta_by_minus_lr_times_equivalent_gradient():
    model = EnergyModel(random_net(7)).double()
    x, y = batch(7)
    eps = {"W1": 0.01, "W2": 0.005, "b1": 0.002, "b2": 0.001}
    method = Aeqprop(0.3, "centered", epsilon=eps)
    before = {n: p.detach().clone() for n, p in model.parameter_dict().items()}
    model.zero_grad()
    loss = method.step(model, model.loss, x, y)
    assert loss.item() > 0
    for n, p in model.parameter_dict().items():
        torch.testing.assert_close(p.detach() - before[n], -eps[n] * 0.3 * p.grad, atol=1e-12, rtol=1e-9)
        assert (p.detach() - before[n]).abs().max() > 0
    # the protocol: free, homeostatic (β₁ = −β/2, held), clamped (β₂ = β/2, released)
    probes = method.ask(before, x, y)
    assert [(p.beta, p.parameters) for p in probes.phases] == [(0.0, "held"), (-0.15, "held"), (0.15, "released")]
    assert method.last_cost.queries == 3


def test_ask_tell_by_hand_equals_backward():
    model = EnergyModel(random_net(8)).double()
    x, y = batch(8)
    method = Aeqprop(0.2, "optimistic", epsilon=0.01)
    theta = {n: p.detach().clone() for n, p in model.parameter_dict().items()}
    probes = method.ask(theta, x, y)
    assert len(probes.phases) == 2  # the free phase doubles as the homeostatic phase when β₁ = 0
    estimate = method.tell(probes, run_phases(model.device, probes))
    assert estimate.cost.queries == 2
    torch.testing.assert_close(torch.cat([estimate.grads[n].flatten() for n in theta]), grads(model, method, x, y))


def test_training_on_digits_beats_chance_and_respects_safe_ranges():
    model = EnergyModel(HopfieldNetwork([64, 32, 10], gains=[0.8, 1.2], tolerance=1e-4, weight_bound=0.3, seed=0))
    method = Aeqprop(0.2, "centered", epsilon={"W1": 0.5, "W2": 0.5, "b1": 0.5, "b2": 0.5},
                     relaxation="first-order")
    assert_energy_model_learns_digits(model, lambda x, y: method.step(model, model.loss, x, y))
    for name, p in model.parameter_dict().items():
        low, high = model.device.parameter_specs[name].bounds()
        assert (p >= low).all() and (p <= high).all() and torch.isfinite(p).all()


def test_non_convex_joint_energy_is_refused_not_applied():
    data_x = torch.rand(32, 200, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 4, (32,))
    model = EnergyModel(HopfieldNetwork([200, 16, 4], tolerance=1e-6, max_sweeps=8, seed=0))
    model.zero_grad()
    with pytest.raises(MeasurementError, match="clamped phase did not reach equilibrium"):
        Aeqprop(0.5, epsilon=5.0).backward(model, model.loss, data_x, y)
    assert all(p.grad is None for p in model.parameters())


def test_bad_settings_give_clear_errors():
    with pytest.raises(ConfigError, match=r"epsilon must be a finite number in \(0, 1000\]"):
        Aeqprop(0.2, epsilon=-1.0)
    with pytest.raises(ConfigError, match=r"epsilon\['W1'\]"):
        Aeqprop(0.2, epsilon={"W1": math.nan})
    with pytest.raises(ConfigError, match=r"beta must be a finite number in \(0, 1\]"):
        Aeqprop(1.5)
    with pytest.raises(ConfigError, match="Aeqprop's variants"):
        Aeqprop(0.2, "positive")
    with pytest.raises(ConfigError, match="relaxation must be one of"):
        Aeqprop(0.2, relaxation="approximate")
    model = EnergyModel(random_net(0))
    x, y = batch(0, torch.float32)
    with pytest.raises(ConfigError, match="epsilon missing"):
        Aeqprop(0.2, epsilon={"W1": 0.1}).backward(model, model.loss, x, y)
