"""The echo-state network used as the ring's digital comparison."""

import pytest
import torch

from physgrad.data.sequences import memory_capacity, memory_inputs
from physgrad.errors import ConfigError, ShapeError
from physgrad.systems import EchoStateNetwork


def test_shapes_and_spectral_radius_normalisation():
    esn = EchoStateNetwork(3, 30, seq_len=5, seed=2)
    assert esn.measure(esn.initial_parameters(), torch.rand(4, 5, 3)).shape == (1, 4, 5, 30)
    radius = torch.linalg.eigvals(esn._w.double()).abs().max()
    assert radius == pytest.approx(1.0, rel=1e-5)


def test_states_fade_below_unit_spectral_radius():
    esn = EchoStateNetwork(1, 40, seq_len=120, spectral_radius=0.8)
    u = torch.zeros(1, 120, 1)
    u[0, 0, 0] = 1.0
    x = esn.measure(esn.initial_parameters(), u)[0, 0]
    assert x[0].abs().max() > 0.1
    assert x[-1].abs().max() < 1e-6


def test_memory_capacity_is_that_of_a_working_reservoir():
    """A 50-unit linear-regime ESN remembers several steps (MC well above 1, at most N)."""
    t = 1500
    esn = EchoStateNetwork(1, 50, seq_len=t, spectral_radius=0.9, input_scale=0.1)
    u = memory_inputs(t, seed=0)
    states = esn.measure(esn.initial_parameters(), u.float().reshape(1, t, 1))[0, 0]
    mc, r2 = memory_capacity(states, u, max_delay=60, washout=100, train=1000)
    assert 8 < mc <= 50
    assert r2[0] > 0.9 and r2[-1] < 0.2  # recalls 1 step back, not 60


def test_simulate_is_differentiable_in_its_parameters():
    esn = EchoStateNetwork(2, 8, seq_len=4)
    p = {n: v.double().requires_grad_() for n, v in esn.initial_parameters(torch.float64).items()}
    u = torch.rand(2, 4, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda r, g: esn.simulate({"spectral_radius": r, "input_scale": g}, u), (p["spectral_radius"], p["input_scale"]))


def test_bad_input_and_config():
    esn = EchoStateNetwork(1, 8, seq_len=10)
    with pytest.raises(ShapeError, match="expects inputs"):
        esn.measure(esn.initial_parameters(), torch.rand(2, 9, 1))
    with pytest.raises(ConfigError, match="leak"):
        EchoStateNetwork(1, 8, seq_len=10, leak=0.0)
    with pytest.raises(ValueError, match="outside its safe range"):
        EchoStateNetwork(1, 8, seq_len=10, spectral_radius=2.0)
