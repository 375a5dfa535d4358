"""The auto-oscillation ring reservoir: physics, modes, cost, bad input, and training through it."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from physgrad.data import load_dataset
from physgrad.errors import ConfigError, RangeError, ShapeError
from physgrad.methods import PGT, Backprop
from physgrad.models import ReservoirNet
from physgrad.systems import AutoOscillationRing, MeasurementNoise
from physgrad.systems.devices.ring import free_running_amplitude, saturation
from physgrad.training import Trainer


def params_of(ring, **overrides):
    p = ring.initial_parameters()
    for name, value in overrides.items():
        p[name] = torch.full_like(p[name], value)
    return p


def test_shapes_of_every_mode():
    seq = AutoOscillationRing(3, 20, mode="sequence", seq_len=7)
    assert seq.measure(seq.initial_parameters(), torch.rand(5, 7, 3)).shape == (1, 5, 7, 20)
    static = AutoOscillationRing(3, 20, mode="static")
    assert static.measure(static.initial_parameters(), torch.rand(5, 3)).shape == (1, 5, 20)
    time = AutoOscillationRing(1, 20, mode="time", seq_len=55)
    assert time.measure(time.initial_parameters(), torch.rand(5, 55)).shape == (1, 5, 55)


def test_time_mode_is_the_sequence_mode_sampled():
    """The time-domain device fed the masked waveform reads what the sequence device reads, slot by slot."""
    seq = AutoOscillationRing(2, 16, mode="sequence", seq_len=6, seed=3)
    time = AutoOscillationRing(1, 16, mode="time", seq_len=6 * 16, seed=3)
    u = torch.rand(4, 6, 2)
    waveform = (u @ seq.mask.T).reshape(4, -1)
    expected = seq.measure(seq.initial_parameters(), u).reshape(1, 4, -1)
    assert torch.allclose(time.measure(time.initial_parameters(), waveform), expected, atol=1e-6)


def test_probes_are_vectorised_and_independent():
    ring = AutoOscillationRing(2, 12, mode="static")
    p = ring.initial_parameters()
    both = {n: torch.stack([v, v * 0.5]) for n, v in p.items()}
    x = torch.rand(3, 2)
    out = ring.measure(both, x)
    assert torch.allclose(out[0], ring.measure(p, x)[0])
    assert torch.allclose(out[1], ring.measure({n: v * 0.5 for n, v in p.items()}, x)[0])


def test_fading_memory_below_threshold():
    """An impulse fades by roughly g per round trip: after 60 round trips at g = 0.8 nothing is left."""
    ring = AutoOscillationRing(1, 10, mode="sequence", seq_len=80, reference=0.0)
    u = torch.zeros(1, 80, 1)
    u[0, 0, 0] = 2.0
    reading = ring.measure(params_of(ring, feedback=0.8), u)[0, 0]  # x²
    assert reading[0].max() > 0.05
    assert reading[60:].max() < 1e-8


def test_self_oscillation_above_threshold_reaches_the_free_running_amplitude():
    ring = AutoOscillationRing(1, 10, mode="sequence", seq_len=300, reference=0.0, allow_self_oscillation=True)
    u = torch.zeros(1, 300, 1)
    u[0, 0, 0] = 0.5  # a kick; afterwards the ring runs free
    reading = ring.measure(params_of(ring, feedback=1.2), u)[0, 0]
    amplitude = free_running_amplitude(1.2)
    assert amplitude == pytest.approx(math.sqrt(0.44) / 1.2)
    assert torch.allclose(reading[-1], torch.full((10,), amplitude**2), atol=1e-3)


def test_saturation_is_bounded_and_unit_slope_at_zero():
    z = torch.cat([torch.linspace(-1e6, 1e6, 1001), torch.tensor([1e30, -1e30])])
    f = saturation(z)
    assert f.abs().max() <= 1
    assert f[-2] == pytest.approx(1.0) and f[-1] == pytest.approx(-1.0)
    x = torch.tensor(0.0, requires_grad=True)
    saturation(x).backward()
    assert x.grad == pytest.approx(1.0)


@settings(max_examples=30, deadline=None)
@given(
    g=st.floats(0.0, 1.5),
    gamma=st.floats(0.0, 2.0),
    b=st.floats(-1.0, 1.0),
    rho=st.floats(-1.0, 1.0),
    scale=st.floats(0.0, 3.0),
)
def test_never_nan_and_bounded_for_any_safe_setting(g, gamma, b, rho, scale):
    ring = AutoOscillationRing(2, 8, mode="sequence", seq_len=12, allow_self_oscillation=True)
    p = params_of(ring, feedback=g, input_scale=gamma, bias=b, reference=rho)
    u = scale * (2 * torch.rand(3, 12, 2, generator=torch.Generator().manual_seed(0)) - 1)
    out = ring.measure(p, u)
    assert torch.isfinite(out).all()
    assert out.max() <= (1 + abs(rho)) ** 2 + 1e-6  # |x| < 1


def test_simulate_gradient_matches_finite_differences():
    ring = AutoOscillationRing(2, 6, mode="sequence", seq_len=4)
    p = {n: v.double().requires_grad_() for n, v in ring.initial_parameters(torch.float64).items()}
    u = torch.rand(3, 4, 2, dtype=torch.float64, requires_grad=True)

    def f(g, gamma, bias, rho, x):
        return ring.simulate({"feedback": g, "input_scale": gamma, "bias": bias, "reference": rho}, x)

    assert torch.autograd.gradcheck(f, (p["feedback"], p["input_scale"], p["bias"], p["reference"], u))


def test_measure_exposes_no_gradient_and_simulate_is_noiseless():
    ring = AutoOscillationRing(2, 8, mode="static", noise=MeasurementNoise(additive=0.05))
    p = {n: v.requires_grad_() for n, v in ring.initial_parameters().items()}
    x = torch.rand(200, 2)
    measured = ring.measure(p, x)
    assert not measured.requires_grad
    clean = ring.simulate(p, x)
    assert clean.requires_grad
    assert (measured - clean.detach()).std().item() == pytest.approx(0.05, rel=0.1)


def test_cost_counts_ring_time():
    ring = AutoOscillationRing(1, 10, mode="sequence", seq_len=20, round_trip=1e-6)
    ring.measure({n: v.expand(3, *v.shape) for n, v in ring.initial_parameters().items()}, torch.rand(4, 20, 1))
    assert ring.queries == 3 and ring.samples == 12
    assert ring.device_seconds == pytest.approx(3 * 4 * 20 * 1e-6)


def test_wrong_sequence_length_is_refused():
    ring = AutoOscillationRing(1, 10, mode="sequence", seq_len=20)
    with pytest.raises(ShapeError, match="expects inputs"):
        ring.measure(ring.initial_parameters(), torch.rand(4, 19, 1))


def test_wrong_mask_size_is_refused():
    with pytest.raises(ShapeError, match="mask must have shape"):
        AutoOscillationRing(2, 10, mode="static", mask=torch.ones(9, 2))


def test_self_oscillating_default_needs_consent():
    with pytest.raises(ConfigError, match="auto-oscillation threshold"):
        AutoOscillationRing(1, 10, mode="static", feedback=1.1)
    with pytest.raises(RangeError, match="outside the safe range"):
        AutoOscillationRing(1, 10, mode="static", feedback=1.7, allow_self_oscillation=True)


def test_gain_outside_the_safe_range_is_refused_or_clipped():
    ring = AutoOscillationRing(1, 10, mode="static", guard="refuse")
    with pytest.raises(RangeError, match="parameter 'feedback'.*outside the safe range"):
        ring.measure(params_of(ring, feedback=1.05), torch.rand(2, 1))
    clipping = AutoOscillationRing(1, 10, mode="static")
    out = clipping.measure(params_of(clipping, feedback=1.05), torch.rand(2, 1, generator=torch.Generator().manual_seed(1)))
    assert clipping.guard.clipped == 1
    assert torch.isfinite(out).all()
    with pytest.raises(RangeError, match="non-finite"):
        ring.measure(ring.initial_parameters(), torch.tensor([[float("nan")]]))


def test_bad_configuration_is_refused():
    with pytest.raises(ConfigError, match="mode"):
        AutoOscillationRing(1, 10, mode="loop")
    with pytest.raises(ConfigError, match="seq_len"):
        AutoOscillationRing(1, 10, mode="sequence")
    with pytest.raises(ConfigError, match="desync"):
        AutoOscillationRing(1, 10, mode="static", desync=10)


def test_pgt_estimate_through_the_ring_net_matches_backprop():
    """Global PGT over every parameter of a ring-hybrid net: the estimate converges to autograd's gradient."""
    ring = AutoOscillationRing(4, 8, mode="static")
    model = ReservoirNet(6, ring, 3, seed=0)
    x, y = torch.rand(16, 6), torch.randint(0, 3, (16,))
    loss_fn = torch.nn.functional.cross_entropy
    Backprop().backward(model, loss_fn, x, y)
    exact = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    model.zero_grad()
    PGT(4000, 1e-3, seed=1, max_probes=4000).backward(model, loss_fn, x, y)
    estimate = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    cosine = torch.nn.functional.cosine_similarity(exact, estimate, dim=0)
    assert cosine > 0.9


def test_ring_net_trains_with_local_pgt_and_stays_in_range():
    data = load_dataset("digits").subset(train=256, test=200, seed=0)
    ring = AutoOscillationRing(12, 24, mode="static")
    model = ReservoirNet(64, ring, 10, seed=0)
    method = PGT(8, 1e-2, scope="local", seed=0)
    trainer = Trainer(model, method, torch.optim.Adam(model.parameters(), lr=1e-2), batch_size=16, seed=0, progress=False)
    loss0, _ = trainer.evaluate(data.x_test, data.y_test)
    records = trainer.fit(data, 3)
    assert records[-1]["test_loss"] < loss0
    assert records[-1]["test_accuracy"] > 0.4  # chance is 0.1
    g = model.reservoir.params["feedback"].detach()
    assert 0.0 <= g.item() and (g <= torch.tensor(0.99)).all()
