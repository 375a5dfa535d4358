"""Fault injection: every kind of fault, at its configured rate, reproducibly."""

import math

import pytest
import torch

from physgrad.systems import RandomReservoir
from physgrad.systems.wrappers.faults import FAULTS, DeviceDisconnectedError, DeviceTimeoutError, FaultInjector


def _probe(k=8, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"gain": torch.rand(k, 1, generator=g) * 4, "bias": torch.rand(k, 16, generator=g) * 4 - 2}, torch.rand(b, 8, generator=g)


def test_no_faults_means_the_device_itself():
    device = RandomReservoir(8, 16, seed=0)
    params, x = _probe()
    assert torch.equal(FaultInjector(device).measure(params, x), RandomReservoir(8, 16, seed=0).measure(params, x))
    assert device.queries == 8  # the wrapper's measurements are the device's, counted there


@pytest.mark.parametrize("kind", ["nan", "inf", "outlier", "stuck"])
def test_probe_faults_at_rate_one_hit_every_probe(kind):
    device = RandomReservoir(8, 16, seed=0)
    faulty = FaultInjector(device, **{kind: 1.0}, outlier_scale=10.0, seed=1)
    params, x = _probe()
    truth = device.response(params, x.expand(8, *x.shape))
    out = faulty.measure(params, x)
    wrong = (out != truth).reshape(8, -1)
    if kind == "nan":
        assert torch.isnan(out).reshape(8, -1).sum(1).eq(1).all()
    elif kind == "inf":
        assert torch.isinf(out).reshape(8, -1).sum(1).eq(1).all()
    elif kind == "outlier":
        assert wrong.sum(1).eq(1).all()
        assert ((out - truth).abs().amax((1, 2)) >= 10.0).all()  # at least outlier_scale·(1 + |y|)
    else:  # each probe repeats the previous answer; the first has no previous one
        assert torch.equal(out[0], truth[0]) and all(torch.equal(out[i], out[0]) for i in range(8))
        again = faulty.measure(params, x)
        assert torch.equal(again[0], out[-1])
    assert faulty.injected[kind] == 8 + (8 if kind == "stuck" else 0)


def test_call_faults_raise_and_drift_accumulates():
    device = RandomReservoir(8, 16, seed=0)
    params, x = _probe()
    with pytest.raises(DeviceTimeoutError, match="injected timeout"):
        FaultInjector(device, timeout=1.0).measure(params, x)
    with pytest.raises(DeviceDisconnectedError, match="injected disconnect"):
        FaultInjector(device, disconnect=1.0).measure(params, x)
    drifting = FaultInjector(device, drift=1.0, drift_scale=0.1, seed=0)
    truth = device.response(params, x.expand(8, *x.shape))
    offsets = []
    for _ in range(50):
        out = drifting.measure(params, x)
        offsets.append((out - truth)[:, :, 0].mean().item())
        assert torch.allclose(out - truth, (out - truth)[0, 0].expand_as(out), atol=1e-5)  # one offset per element
    steps = torch.diff(torch.tensor(offsets))
    assert 0.05 < steps.std() < 0.2  # a random walk with steps of drift_scale


def test_empirical_rates_match_the_configured_ones():
    rate = 0.05
    faulty = FaultInjector.uniform(RandomReservoir(8, 16, seed=0), rate, seed=3)
    calls, probes = 0, 0
    for i in range(300):
        params, x = _probe(k=16, b=1, seed=i)
        calls += 1
        try:
            faulty.measure(params, x)
            probes += 16
        except (DeviceTimeoutError, DeviceDisconnectedError):
            pass
    for kind in FAULTS:
        n = probes if kind in ("nan", "inf", "outlier", "stuck") else calls
        if kind == "disconnect":
            n = calls - faulty.injected["timeout"]  # drawn only when the call did not time out
        if kind == "drift":
            n = calls - faulty.injected["timeout"] - faulty.injected["disconnect"]
        sigma = math.sqrt(n * rate * (1 - rate))
        assert abs(faulty.injected[kind] - n * rate) < 4 * sigma, (kind, faulty.injected[kind], n)


def test_seeded_and_resumable():
    def run(injector, n):
        outs = []
        for i in range(n):
            try:
                outs.append(injector.measure(*_probe(seed=i)))
            except (DeviceTimeoutError, DeviceDisconnectedError) as e:
                outs.append(type(e).__name__)
        return outs

    a = FaultInjector.uniform(RandomReservoir(8, 16, seed=0), 0.2, seed=7)
    b = FaultInjector.uniform(RandomReservoir(8, 16, seed=0), 0.2, seed=7)
    first = run(a, 10)
    state = a.state_dict()
    rest = run(a, 10)
    assert [str(v) for v in run(b, 10)] == [str(v) for v in first]
    b.load_state_dict(state)
    for u, v in zip(rest, run(b, 10)):
        assert (u == v) if isinstance(u, str) else torch.equal(u.nan_to_num(7.0), v.nan_to_num(7.0))


def test_bad_rates_are_refused():
    with pytest.raises(ValueError, match="fault rate 'nan' must be a probability"):
        FaultInjector(RandomReservoir(2, 2), nan=1.5)
    with pytest.raises(ValueError, match="outlier_scale must be a finite number"):
        FaultInjector(RandomReservoir(2, 2), outlier_scale=float("inf"))
