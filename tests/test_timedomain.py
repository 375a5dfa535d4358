"""Tests of physgrad.systems.wrappers.timedomain: the time-domain measurement chain around a static device."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from physgrad.errors import ConfigError, RangeError, ShapeError
from physgrad.models import PhysicalLayer
from physgrad.systems import BlackBox, RandomReservoir, TimeDomainDevice, TimeDomainNoise
from physgrad.systems.base import ParameterSpec, PhysicalSystem


class Gain(PhysicalSystem):
    """y = g · x with one parameter g in [-2, 2] (a linear device whose chain we can predict)."""

    def __init__(self, **kwargs):
        super().__init__((1,), (1,), [ParameterSpec("g", (1,), -2.0, 2.0, default=1.0)], input_range=(-5.0, 5.0), **kwargs)
        self.seen_max = -math.inf

    def response(self, params, inputs):
        self.seen_max = max(self.seen_max, float(params["g"].abs().max()))
        return params["g"].unsqueeze(1) * inputs


def lockin(y: torch.Tensor, f: float, fs: float) -> complex:
    t = torch.arange(y.numel(), dtype=torch.float64) / fs
    y = y.double() - y.double().mean()
    return complex(float((y * torch.sin(2 * math.pi * f * t)).mean()), float((y * torch.cos(2 * math.pi * f * t)).mean()))


def test_lowpass_and_delay_match_the_nominal_transfer():
    fs, f = 5000.0, 200.0
    dev = TimeDomainDevice(Gain(), fs, bandwidth_hz=300.0, delay_s=1e-3)
    n = 2500  # 0.5 s, 100 cycles
    t = torch.arange(n, dtype=torch.float64) / fs
    g = (1.0 + 0.5 * torch.sin(2 * math.pi * f * t)).float().reshape(n, 1)
    y = dev.measure_waveform({"g": g}, torch.ones(1, 1))[:, 0, 0]
    z = lockin(y[500:], f, fs)  # skip the start-up transient; the window is whole cycles
    t0 = 500 / fs
    z = z * complex(math.cos(2 * math.pi * f * t0), -math.sin(2 * math.pi * f * t0))  # undo window offset phase
    h = complex(dev.transfer(torch.tensor([f]))[0])
    measured = complex(2 * z.real / 0.5, 2 * z.imag / 0.5)
    assert abs(measured - h) < 0.01
    assert abs(h) < 0.9 and math.atan2(h.imag, h.real) < -0.5  # the chain really attenuates and lags


def test_delay_shifts_by_whole_samples():
    fs = 1000.0
    dev = TimeDomainDevice(Gain(), fs, delay_s=0.005)
    g = torch.zeros(50, 1)
    g[20:] = 1.0
    y = dev.measure_waveform({"g": g}, torch.ones(1, 1))[:, 0, 0]
    assert torch.all(y[:25] == 0) and torch.all(y[25:] == 1)


def test_white_noise_has_the_declared_psd():
    fs, psd = 2000.0, 1e-3
    dev = TimeDomainDevice(Gain(), fs, noise=TimeDomainNoise(white_psd=psd), seed=3)
    y = dev.measure_waveform({"g": torch.zeros(4000, 1)}, torch.ones(8, 1))
    var = float(y.double().var())
    assert var == pytest.approx(psd * fs / 2, rel=0.05)


def test_flicker_noise_falls_as_one_over_f():
    fs = 1000.0
    noise = TimeDomainNoise(flicker_psd_1hz=1e-2)
    x = noise.sample(4096, fs, (64,), torch.Generator().manual_seed(0))
    spec = torch.fft.rfft(x, dim=0).abs().pow(2).mean(1) * 2 / (fs * 4096)  # one-sided PSD estimate
    f = torch.fft.rfftfreq(4096, 1 / fs, dtype=torch.float64)
    band = (f > 2) & (f < 200)
    slope = torch.linalg.lstsq(torch.stack([f[band].log(), torch.ones(int(band.sum()), dtype=torch.float64)], 1),
                               spec[band].log().unsqueeze(1)).solution[0, 0]
    assert float(slope) == pytest.approx(-1.0, abs=0.1)
    at_10hz = spec[(f > 8) & (f < 12)].mean()
    assert float(at_10hz) == pytest.approx(1e-2 / 10, rel=0.3)


def test_clipping_and_adc_quantisation():
    dev = TimeDomainDevice(Gain(), 1000.0, clip=(-1.0, 1.0), adc_step=0.25)
    g = torch.linspace(-2, 2, 41).reshape(-1, 1)
    y = dev.measure_waveform({"g": g}, torch.ones(1, 1))[:, 0, 0]
    assert float(y.max()) == 1.0 and float(y.min()) == -1.0
    assert torch.allclose(y / 0.25, torch.round(y / 0.25))
    assert dev.clipped_samples == int((g.abs() > 1).sum())
    assert bool(dev.is_clipped(y).any())


def test_dac_ramp_is_in_range_and_charged():
    inner = Gain(guard="refuse")
    dev = TimeDomainDevice(inner, 1000.0, dac_ramp_s=0.01, bandwidth_hz=50.0)
    dev.measure_waveform({"g": torch.full((100, 1), -2.0)}, torch.ones(3, 1))
    assert dev.device_seconds == pytest.approx(3 * 110 / 1000.0)  # the first waveform ramps from the power-up defaults
    y = dev.measure_waveform({"g": torch.full((100, 1), 2.0)}, torch.ones(3, 1))
    assert dev.device_seconds == pytest.approx(2 * 3 * 110 / 1000.0)
    assert dev.queries == 2 and dev.samples == 6
    assert float(y[0, 0, 0]) > -2.0  # the ramp already moved the filtered output before the waveform began
    assert inner.seen_max <= 2.0


def test_static_measure_costs_settling_and_averaging_and_averages_noise():
    fs, psd = 1000.0, 1e-2
    dev = TimeDomainDevice(Gain(), fs, noise=TimeDomainNoise(psd), dac_ramp_s=0.002, settle_s=0.003, sample_s=0.1, seed=1)
    out = dev.measure({"g": torch.ones(20, 1)}, torch.ones(50, 1))
    assert out.shape == (20, 50, 1)
    assert dev.seconds_per_query == pytest.approx(0.105)
    assert dev.device_seconds == pytest.approx(20 * 50 * 0.105)
    assert float(out.std()) == pytest.approx(math.sqrt(psd / (2 * 0.1)), rel=0.1)


def test_guard_refuses_out_of_range_waveforms_and_clip_mode_clips():
    dev = TimeDomainDevice(Gain(guard="refuse"), 1000.0)
    with pytest.raises(RangeError, match="outside the safe range"):
        dev.measure_waveform({"g": torch.full((10, 1), 2.5)}, torch.ones(1, 1))
    with pytest.raises(RangeError, match="non-finite"):
        dev.measure_waveform({"g": torch.full((10, 1), float("nan"))}, torch.ones(1, 1))
    clipped = Gain()
    dev = TimeDomainDevice(clipped, 1000.0)
    dev.measure_waveform({"g": torch.full((10, 1), 2.5)}, torch.ones(1, 1))
    assert clipped.seen_max == 2.0 and dev.guard.clipped == 10


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=40), st.floats(0.0, 0.02))
def test_no_sample_ever_leaves_the_range_in_clip_mode(values, ramp):
    inner = Gain()
    dev = TimeDomainDevice(inner, 1000.0, dac_ramp_s=ramp)
    dev.measure_waveform({"g": torch.tensor(values).reshape(-1, 1)}, torch.ones(1, 1))
    dev.measure_waveform({"g": torch.tensor(values[::-1]).reshape(-1, 1)}, torch.ones(1, 1))
    assert inner.seen_max <= 2.0


def test_waveform_mode_plays_a_layer_under_vmap_as_one_waveform():
    dev = TimeDomainDevice(Gain(), 1000.0, bandwidth_hz=20.0)
    layer = PhysicalLayer(dev)
    g = torch.linspace(0.0, 1.0, 200).reshape(200, 1)
    with dev.waveform_mode(), torch.no_grad():
        out = torch.func.vmap(lambda p: torch.func.functional_call(layer, {"params.g": p}, (torch.ones(2, 1),)))(g)
    assert out.shape == (200, 2, 1)
    assert dev.queries == 1 and dev.samples == 2
    assert float(out[-1, 0, 0]) < 1.0 - 0.01  # the low-pass lags behind the ramp: it really was one waveform


def test_wraps_any_static_system():
    res = TimeDomainDevice(RandomReservoir(3, 8, seed=0), 500.0, bandwidth_hz=100.0)
    p = {n: v.expand(30, *v.shape) for n, v in res.initial_parameters().items()}
    assert res.measure_waveform(p, torch.zeros(4, 3)).shape == (30, 4, 8)
    bb = TimeDomainDevice(BlackBox(torch.nn.Linear(2, 1), (2,)), 500.0)
    assert bb.differentiable
    assert bb.measure(bb.initial_parameters(), torch.zeros(5, 2)).shape == (1, 5, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fs=0.0), "sample rate"),
        (dict(fs=1000.0, bandwidth_hz=600.0), "Nyquist"),
        (dict(fs=1000.0, delay_s=-1.0), "delay_s"),
        (dict(fs=1000.0, clip=(1.0, -1.0)), "not a range"),
        (dict(fs=1000.0, noise=None, adc_step=-0.1), "adc_step"),
    ],
)
def test_bad_configuration_is_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TimeDomainDevice(Gain(), **kwargs)


def test_bad_noise_and_shapes():
    with pytest.raises(ConfigError, match="white_psd"):
        TimeDomainNoise(white_psd=-1.0)
    dev = TimeDomainDevice(Gain(), 1000.0)
    with pytest.raises(ConfigError, match="already a TimeDomainDevice"):
        TimeDomainDevice(dev)
    with pytest.raises(ShapeError, match="inputs must be"):
        dev.measure_waveform({"g": torch.ones(10, 1)}, torch.ones(5, 2, 1))


def test_state_round_trip_resumes_the_noise_and_the_ramp_exactly():
    dev = TimeDomainDevice(Gain(), 1000.0, noise=TimeDomainNoise(1e-3), dac_ramp_s=0.005, seed=4)
    dev.measure_waveform({"g": torch.full((20, 1), 0.5)}, torch.ones(2, 1))
    state = dev.state_dict()
    a = dev.measure_waveform({"g": torch.full((20, 1), -0.5)}, torch.ones(2, 1))
    twin = TimeDomainDevice(Gain(), 1000.0, noise=TimeDomainNoise(1e-3), dac_ramp_s=0.005, seed=99)
    twin.load_state_dict(state)
    b = twin.measure_waveform({"g": torch.full((20, 1), -0.5)}, torch.ones(2, 1))
    assert torch.equal(a, b) and twin.device_seconds == dev.device_seconds
