import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from physgrad.errors import MeasurementError, RangeError, ShapeError
from physgrad.systems.base import ParameterSpec, PhysicalSystem, RangeGuard


class Affine(PhysicalSystem):
    """y = w * x + b with w in [0, 2], b in [-1, 1]; records what reached it."""

    differentiable = True

    def __init__(self, **kw):
        super().__init__((3,), (3,), [ParameterSpec("w", (3,), 0.0, 2.0, default=1.0), ParameterSpec("b", (1,), -1.0, 1.0)], **kw)
        self.seen = []

    def response(self, params, inputs):
        self.seen.append({k: v.clone() for k, v in params.items()})
        return params["w"].unsqueeze(1) * inputs + params["b"].unsqueeze(1)


class Broken(Affine):
    def response(self, params, inputs):
        out = super().response(params, inputs)
        out[0, 0, 0] = float("nan")
        return out


def test_measure_batches_probes_and_counts_cost():
    dev = Affine()
    w = torch.stack([torch.full((3,), 0.5), torch.full((3,), 1.5)])
    b = torch.zeros(2, 1)
    x = torch.ones(4, 3)
    out = dev.measure({"w": w, "b": b}, x)
    assert out.shape == (2, 4, 3)
    assert torch.allclose(out[0], torch.full((4, 3), 0.5)) and torch.allclose(out[1], torch.full((4, 3), 1.5))
    assert (dev.queries, dev.samples) == (2, 8)
    assert len(dev.seen) == 1  # one call for both probes


def test_measure_never_returns_a_gradient():
    dev = Affine()
    w = torch.ones(3, requires_grad=True)
    out = dev.measure({"w": w, "b": torch.zeros(1)}, torch.ones(2, 3))
    assert not out.requires_grad and out.grad_fn is None


def test_clip_guard_never_sends_out_of_range_values():
    dev = Affine(guard="clip")
    dev.measure({"w": torch.tensor([5.0, -1.0, 1.0]), "b": torch.tensor([3.0])}, torch.ones(1, 3))
    sent = dev.seen[-1]
    assert float(sent["w"].max()) == 2.0 and float(sent["w"].min()) == 0.0 and float(sent["b"]) == 1.0
    assert dev.guard.clipped == 3


def test_refuse_guard_sends_nothing():
    dev = Affine(guard="refuse")
    with pytest.raises(RangeError, match="parameter 'w'.*outside the safe range"):
        dev.measure({"w": torch.tensor([5.0, 1.0, 1.0]), "b": torch.tensor([0.0])}, torch.ones(1, 3))
    assert dev.seen == [] and dev.queries == 0


@pytest.mark.parametrize("mode", ["clip", "refuse"])
def test_nan_setting_is_refused_in_every_mode(mode):
    dev = Affine(guard=mode)
    with pytest.raises(RangeError, match="non-finite"):
        dev.measure({"w": torch.tensor([math.nan, 1.0, 1.0]), "b": torch.tensor([0.0])}, torch.ones(1, 3))
    assert dev.seen == []


def test_nan_measurement_is_an_error():
    with pytest.raises(MeasurementError, match="non-finite"):
        Broken().measure({"w": torch.ones(3), "b": torch.zeros(1)}, torch.ones(2, 3))


@pytest.mark.parametrize(
    "params, x, match",
    [
        ({"w": torch.ones(4), "b": torch.zeros(1)}, torch.ones(2, 3), "parameter 'w': expected shape"),
        ({"w": torch.ones(3)}, torch.ones(2, 3), "missing"),
        ({"w": torch.ones(3), "b": torch.zeros(1), "c": torch.zeros(1)}, torch.ones(2, 3), "no parameter"),
        ({"w": torch.ones(3), "b": torch.zeros(1)}, torch.ones(2, 4), "expects inputs"),
        ({"w": torch.ones(2, 3), "b": torch.zeros(3, 1)}, torch.ones(2, 3), "probes"),
    ],
)
def test_bad_shapes_name_the_problem(params, x, match):
    with pytest.raises(ShapeError, match=match):
        Affine().measure(params, x)


def test_spec_rejects_default_outside_range_and_inverted_range():
    with pytest.raises(ValueError, match="default setting"):
        ParameterSpec("g", (1,), 0.0, 1.0, default=2.0)
    with pytest.raises(ValueError, match="not a range"):
        ParameterSpec("g", (1,), 1.0, 0.0, default=0.5)


def test_simulate_is_differentiable_and_refused_where_not_offered():
    dev = Affine()
    w = torch.ones(3, requires_grad=True)
    dev.simulate({"w": w, "b": torch.zeros(1)}, torch.ones(2, 3)).sum().backward()
    assert torch.allclose(w.grad, torch.full((3,), 2.0))
    dev.differentiable = False
    with pytest.raises(TypeError, match="not a differentiable simulator"):
        dev.simulate({"w": w, "b": torch.zeros(1)}, torch.ones(2, 3))


def test_state_dict_round_trip_restores_counters_and_noise_stream():
    from physgrad.systems import MeasurementNoise

    dev = Affine(noise=MeasurementNoise(additive=0.1), seed=4)
    p = {"w": torch.ones(3), "b": torch.zeros(1)}
    dev.measure(p, torch.ones(2, 3))
    state = dev.state_dict()
    a = dev.measure(p, torch.ones(2, 3))
    dev.load_state_dict(state)
    b = dev.measure(p, torch.ones(2, 3))
    assert torch.equal(a, b) and dev.queries == 2


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32, min_value=-1e6, max_value=1e6), min_size=1, max_size=20),
    st.floats(-10, 10),
    st.floats(0, 10),
)
def test_clip_guard_output_always_in_range(values, low, width):
    guard = RangeGuard("clip")
    v = torch.tensor(values)
    lo, hi = torch.tensor(low), torch.tensor(low + width)
    out = guard("x", v, lo, hi)
    assert bool(((out >= lo) & (out <= hi)).all())
    inside = (v >= lo) & (v <= hi)
    assert torch.equal(out[inside], v[inside])
