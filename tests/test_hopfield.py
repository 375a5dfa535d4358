"""The layered Hopfield network (systems/hopfield.py): exact relaxation, fixed points, boxes, batching."""

import math

import pytest
import torch

from physgrad.errors import ConfigError, ShapeError
from physgrad.systems import HopfieldNetwork



def relaxed(net, x, beta=0.0, target=None):
    params = {n: v.unsqueeze(0).to(x.dtype) for n, v in net.initial_parameters().items()}
    inputs = x.unsqueeze(0)
    states, report = net.relax_states(params, inputs, beta, target, net.rest_states(params, inputs))
    return params, inputs, states, report


@pytest.mark.parametrize("sizes", [[6, 5, 3], [6, 7, 5, 4, 3]])
def test_relaxation_reaches_its_fixed_point(sizes):
    net = HopfieldNetwork(sizes, gains=[1.5] * (len(sizes) - 1), tolerance=1e-12, max_sweeps=5000, seed=1)
    x = torch.rand(8, sizes[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = torch.rand(1, 8, sizes[-1], dtype=torch.float64)
    params, inputs, states, report = relaxed(net, x, 0.3, target)
    assert report.converged and report.residual <= 1e-12
    # fixed point of the projected block map: one more exact sweep changes nothing
    again, extra = net.relax_states(params, inputs, 0.3, target, states)
    assert extra.sweeps == 1
    for a, b in zip(states, again):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    # constrained stationarity: the energy gradient vanishes on free units and points outward on pinned ones
    s = [t.clone().requires_grad_(True) for t in states]
    e = net.energy(params, inputs, s, 0.3, target).sum()
    grads = torch.autograd.grad(e, s)
    for g, t, (lo, hi) in zip(grads, states, net.state_bounds()):
        free = (t > lo) & (t < hi)
        assert float(torch.where(free, g, torch.zeros_like(g)).abs().max()) < 1e-9
        assert (g[t <= lo] >= -1e-9).all() and (g[t >= hi] <= 1e-9).all()
        assert (t >= lo).all() and (t <= hi).all()


def test_each_sweep_lowers_the_energy():
    net = HopfieldNetwork([10, 8, 8, 4], gains=[1.5, 1.5, 1.5], tolerance=1e-12, max_sweeps=1, seed=2)
    x = torch.rand(5, 10, dtype=torch.float64)
    params = {n: v.unsqueeze(0).double() for n, v in net.initial_parameters().items()}
    inputs = x.unsqueeze(0)
    states = net.rest_states(params, inputs)
    energies = [float(net.energy(params, inputs, states).sum())]
    for _ in range(15):
        net._drive_cache = None
        states, _ = net.relax_states(params, inputs, 0.0, None, states)
        energies.append(float(net.energy(params, inputs, states).sum()))
    assert all(b <= a + 1e-12 for a, b in zip(energies, energies[1:]))
    assert energies[-1] < energies[0]


def test_relaxation_is_batched_over_probes_and_samples():
    net = HopfieldNetwork([6, 5, 3], gains=[1.2, 1.2], tolerance=1e-10, max_sweeps=2000, seed=3)
    base = net.initial_parameters()
    k_params = {n: torch.stack([v, 0.5 * v, -v]) for n, v in base.items()}
    x = torch.rand(4, 6)
    batched = net.response(k_params, x.expand(3, 4, 6))
    for k in range(3):
        one = net.response({n: v[k : k + 1] for n, v in k_params.items()}, x.unsqueeze(0))
        torch.testing.assert_close(batched[k], one[0], atol=1e-6, rtol=0)
    # and samples do not interact: relaxing one sample alone gives the same state
    single = net.response({n: v[:1] for n, v in k_params.items()}, x[:1].unsqueeze(0))
    torch.testing.assert_close(batched[0, :1], single[0], atol=1e-6, rtol=0)


def test_output_nudging_pulls_towards_the_target():
    net = HopfieldNetwork([6, 5, 3], tolerance=1e-10, seed=4)
    x = torch.rand(4, 6)
    target = torch.ones(1, 4, 3)
    _, _, free, _ = relaxed(net, x)
    _, _, nudged, _ = relaxed(net, x, 0.5, target)
    assert float((nudged[-1] - target).abs().mean()) < float((free[-1] - target).abs().mean())


def test_non_convergence_is_reported_never_nan():
    net = HopfieldNetwork([30, 20, 20, 5], gains=[6, 6, 6], tolerance=1e-12, max_sweeps=3, seed=5)
    x = torch.rand(4, 30)
    _, _, states, report = relaxed(net, x)
    assert not report.converged and report.sweeps == 3 and report.residual > 1e-12
    assert all(torch.isfinite(s).all() for s in states)
    out = net.measure(net.initial_parameters(), x)  # measure warns, counts, returns finite values
    assert torch.isfinite(out).all() and net.nonconverged >= 1


def test_boxes_and_safe_ranges_are_declared():
    net = HopfieldNetwork([4, 3, 2], hidden_range=(0.0, 1.0), output_range=(-1.0, 2.0), weight_bound=0.5)
    assert net.state_bounds() == [(0.0, 1.0), (-1.0, 2.0)]
    low, high = net.parameter_specs["W1"].bounds()
    assert float(low.min()) == -0.5 and float(high.max()) == 0.5
    assert set(net.parameter_specs) == {"W1", "W2", "b1", "b2"}
    assert net.input_shape == (4,) and net.output_shape == (2,)


def test_bad_configuration_is_refused():
    with pytest.raises(ConfigError, match="sizes must list"):
        HopfieldNetwork([4])
    with pytest.raises(ConfigError, match="gains must be 2"):
        HopfieldNetwork([4, 3, 2], gains=[1.0])
    with pytest.raises(ConfigError, match="hidden_range"):
        HopfieldNetwork([4, 3, 2], hidden_range=(1.0, 0.0))
    with pytest.raises(ConfigError, match="tolerance"):
        HopfieldNetwork([4, 3, 2], tolerance=math.nan)
    net = HopfieldNetwork([4, 3, 2])
    with pytest.raises(ShapeError, match="expects inputs"):
        net.measure(net.initial_parameters(), torch.rand(3, 5))
