import pytest
import torch

from physgrad.systems import MeasurementNoise, RandomReservoir


def test_reservoir_is_bounded_seeded_and_controllable():
    a, b = RandomReservoir(8, 32, seed=5), RandomReservoir(8, 32, seed=5)
    x = torch.randn(10, 8)
    ya = a.measure(a.initial_parameters(), x)
    assert ya.shape == (1, 10, 32) and ya.abs().max() < 1
    assert torch.equal(ya, b.measure(b.initial_parameters(), x))
    p = a.initial_parameters()
    p["gain"] = torch.tensor([0.0])
    y0 = a.measure(p, x)
    assert torch.allclose(y0[0], y0[0, :1].expand(10, 32))  # zero gain: input ignored
    assert a.parameter_specs["gain"].high == 4.0 and a.parameter_specs["bias"].low == -2.0


def test_spectral_scaling_sets_largest_singular_value():
    r = RandomReservoir(6, 20, scaling="spectral", scale=0.7)
    assert torch.linalg.matrix_norm(r._w_in, ord=2) == pytest.approx(0.7, rel=1e-5)


def test_noise_makes_measurements_differ_but_not_simulation():
    r = RandomReservoir(4, 16, noise=MeasurementNoise(additive=0.05))
    x, p = torch.randn(3, 4), r.initial_parameters()
    m1, m2 = r.measure(p, x), r.measure(p, x)
    s = r.simulate(p, x)
    assert not torch.equal(m1, m2)
    assert 0.02 < float((m1 - s).std()) < 0.08


def test_uncontrollable_reservoir_and_bad_sizes():
    r = RandomReservoir(4, 8, controllable=False)
    assert r.parameter_specs == {} and r.measure({}, torch.randn(2, 4)).shape == (1, 2, 8)
    with pytest.raises(ValueError, match="input_size"):
        RandomReservoir(0, 8)
    with pytest.raises(ValueError, match="scaling"):
        RandomReservoir(3, 8, scaling="nope")
