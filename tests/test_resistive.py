"""The linear resistive network (systems/resistive.py): Kirchhoff, exact solve, Aeqprop on a circuit."""

import pytest
import torch

from physgrad.errors import ConfigError, MeasurementError
from physgrad.methods import Aeqprop, Backprop, EqProp
from physgrad.models import EnergyModel
from physgrad.systems import ResistiveNetwork



def test_node_voltages_obey_kirchhoffs_current_law():
    net = ResistiveNetwork(3, [4, 2], seed=0)
    g = {n: v.unsqueeze(0).double() for n, v in net.initial_parameters().items()}
    x = torch.rand(1, 5, 3, dtype=torch.float64)
    states, report = net.relax_states(g, x, 0.0, None, net.rest_states(g, x))
    assert report.sweeps == 1 and report.converged
    v0, v1, v2 = net.sources(x), states[0], states[1]
    # current into each hidden node from sources and into it from the outputs sums to zero
    into_hidden = ((v0.unsqueeze(-1) - v1.unsqueeze(-2)) * g["G1"].unsqueeze(1)).sum(-2)
    into_hidden += ((v2.unsqueeze(-2) - v1.unsqueeze(-1)) * g["G2"].unsqueeze(1)).sum(-1)
    into_out = ((v1.unsqueeze(-1) - v2.unsqueeze(-2)) * g["G2"].unsqueeze(1)).sum(-2)
    assert float(into_hidden.abs().max()) < 1e-12 and float(into_out.abs().max()) < 1e-12
    # a passive network: every node voltage lies within the range of the source voltages
    assert float(v2.max()) <= float(v0.max()) + 1e-12 and float(v2.min()) >= float(v0.min()) - 1e-12


def test_equilibrium_minimises_the_power():
    net = ResistiveNetwork(2, [3, 2], seed=1)
    g = {n: v.unsqueeze(0).double() for n, v in net.initial_parameters().items()}
    x = torch.rand(1, 4, 2, dtype=torch.float64)
    t = torch.rand(1, 4, 2, dtype=torch.float64)
    states, _ = net.relax_states(g, x, 0.4, t, net.rest_states(g, x))
    e0 = net.energy(g, x, states, 0.4, t)
    for seed in range(5):
        noise = torch.Generator().manual_seed(seed)
        moved = [s + 1e-3 * torch.randn(s.shape, generator=noise, dtype=torch.float64) for s in states]
        assert (net.energy(g, x, moved, 0.4, t) > e0).all()


def test_energy_gradient_is_half_the_squared_voltage_drop():
    net = ResistiveNetwork(2, [2], invert_inputs=False, references=(), seed=2)
    g = {n: v.unsqueeze(0).double() for n, v in net.initial_parameters().items()}
    x = torch.rand(1, 3, 2, dtype=torch.float64)
    states, _ = net.relax_states(g, x, 0.0, None, net.rest_states(g, x))
    leaf = g["G1"].clone().requires_grad_(True)
    e = net.energy({"G1": leaf}, x, states).mean()
    (auto,) = torch.autograd.grad(e, leaf)
    torch.testing.assert_close(net.energy_gradient(g, x, states)["G1"], auto)


def test_too_negative_nudging_has_no_equilibrium():
    net = ResistiveNetwork(2, [2], seed=3)
    net.clamp_inputs(torch.rand(3, 2))
    net.set_target(torch.rand(3, 2))
    net.set_nudging(-50.0)
    with pytest.raises(MeasurementError, match="no stable equilibrium"):
        net.relax()


def test_bad_configuration_is_refused():
    with pytest.raises(ConfigError, match="g_min < g_max"):
        ResistiveNetwork(2, [2], g_min=0.0)
    with pytest.raises(ConfigError, match="at least one layer"):
        ResistiveNetwork(2, [])


def test_aeqprop_trains_a_circuit_on_a_teacher_task_like_backprop():
    teacher = ResistiveNetwork(3, [4, 2], seed=10)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, generator=g)
    with torch.no_grad():
        y = teacher.measure(teacher.initial_parameters(), x)[0]
    losses = {}
    for name, method in (("aeqprop", Aeqprop(0.2, "centered", epsilon=0.2, relaxation="first-order")),
                         ("exact", Aeqprop(0.2, "centered", epsilon=0.02)),
                         ("eqprop", EqProp(0.2)), ("backprop", Backprop())):
        model = EnergyModel(ResistiveNetwork(3, [4, 2], seed=11, tolerance=1e-7))
        opt = torch.optim.SGD(model.parameters(), lr=0.2 * 0.2)
        with torch.no_grad():
            first = float(model.loss(model(x), y))
        for _ in range(60):
            opt.zero_grad()
            method.backward(model, model.loss, x, y)
            opt.step()
            model.clamp_()
        with torch.no_grad():
            losses[name] = (first, float(model.loss(model(x), y)))
        low, high = model.device.parameter_specs["G1"].bounds()
        assert (model.params["G1"] >= low).all() and (model.params["G1"] <= high).all()
    for name, (first, last) in losses.items():
        assert last < 0.5 * first, (name, first, last)
    # same learning rule to first order: Aeqprop's loss curve follows backprop's
    assert abs(losses["aeqprop"][1] - losses["backprop"][1]) < 0.2 * losses["backprop"][0]
