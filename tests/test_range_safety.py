"""Range safety as a property: no method ever sends a device a value outside its declared range.

Every value any method sends to a device passes the device's :class:`RangeGuard` (``measure``,
``simulate``, and an energy device's ``set_parameters`` / ``clamp_inputs``), so an auditing guard
there sees every command *before* it could be clipped. For every method class in
``physgrad.methods``, random settings and perturbation sizes up to (and past) half the safe
range, parameters and inputs on or near their bounds: the audit must never see a value outside
the range. Refusing (``RangeError`` before anything is sent) is safe and allowed.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import physgrad.methods as methods_module
from physgrad.errors import MeasurementError, RangeError
from physgrad.methods import HGE, PGT, Aeqprop, Backprop, EqProp, FiniteDifference, GradientMethod
from physgrad.models import PhysicalLayer
from physgrad.models.energy_model import EnergyModel
from physgrad.systems import BlackBox, HopfieldNetwork, RangeGuard
from physgrad.systems.devices.dnpu import DNPU
from physgrad.systems.wrappers.timedomain import TimeDomainDevice


class AuditGuard(RangeGuard):
    """A clipping guard that records every value that arrived outside its range.

    ``violations``: every value that arrived outside its range, by however little (the methods
    clamp their stencils, so not even a float-rounding overshoot may arrive).
    ``delivered`` records what the guard let through (must always be inside the range).
    """

    def __init__(self) -> None:
        super().__init__("clip")
        self.checked = 0
        self.violations: list[str] = []
        self.delivered_outside = 0

    def __call__(self, what, value, low, high):
        self.checked += 1
        v = value.detach()
        if torch.isfinite(v).all() and v.numel():
            over = torch.maximum(low - v, v - high)
            if (over > 0).any():
                self.violations.append(f"{what}: outside by {float(over.max()):.3g}")
        out = super().__call__(what, value, low, high)
        self.delivered_outside += int(((out.detach() < low) | (out.detach() > high)).sum())
        return out


def _near_bounds(low: torch.Tensor, high: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Values exactly on a bound, within a hair of one, or anywhere inside, element by element."""
    low, high = torch.broadcast_tensors(low, high)
    span = high - low
    u = torch.rand(low.shape, generator=g)
    choice = torch.randint(0, 5, low.shape, generator=g)
    hair = span * 1e-6 * torch.rand(low.shape, generator=g)
    v = torch.where(choice == 0, low, torch.where(choice == 1, high, low + u * span))
    v = torch.where(choice == 2, low + hair, torch.where(choice == 3, high - hair, v))
    return v.clamp(low, high)


def _static_device(kind: str, seed: int):
    if kind == "dnpu":
        return DNPU.synthetic(seed=seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    ranges = {"0.weight": (-0.5, 0.25), "0.bias": (0.0, 0.1), "2.weight": (-1.0, 1.0), "2.bias": (-0.01, 0.02)}
    with torch.no_grad():
        for n, p in net.named_parameters():
            p.clamp_(*ranges[n])
    return BlackBox(net, (3,), ranges=ranges, input_range=(0.0, 1.0))


def _inputs(device, n: int, g: torch.Generator) -> torch.Tensor:
    if hasattr(device, "input_electrodes"):  # DNPU: every input electrode has its own voltage range
        idx = device.input_electrodes
        return _near_bounds(device.voltage_min[idx].expand(n, -1), device.voltage_max[idx].expand(n, -1), g)
    low, high = device.input_range if device.input_range is not None else (0.0, 1.0)
    return _near_bounds(torch.full((n, *device.input_shape), float(low)), torch.full((n, *device.input_shape), float(high)), g)


def _start_near_bounds(layer: PhysicalLayer, g: torch.Generator) -> None:
    with torch.no_grad():
        for name, (low, high) in layer.system.parameter_bounds().items():
            layer.device_parameters()[name].copy_(_near_bounds(low, high, g))


def _smallest_half_range(device) -> float:
    halves = [float(((high - low) / 2).min()) for low, high in device.parameter_bounds().values()]
    if device.input_range is not None:
        halves.append((device.input_range[1] - device.input_range[0]) / 2)
    if hasattr(device, "input_electrodes"):
        idx = device.input_electrodes
        halves.append(float(((device.voltage_max[idx] - device.voltage_min[idx]) / 2).min()))
    return min(halves)


STATIC_METHODS = {
    "pgt": lambda d, k, s, r, p: PGT(num_pairs=k, delta=d, r=r, dropout=p, scope=s),
    "spsa": lambda d, k, s, r, p: PGT.spsa(num_pairs=k, delta=d, dropout=p, scope=s),
    "es": lambda d, k, s, r, p: PGT.es(num_pairs=k, delta=d, scope=s),
    "fd": lambda d, k, s, r, p: FiniteDifference(delta=d, scope=s, max_probes=k),
    "backprop": lambda d, k, s, r, p: Backprop(),
}


def _audited_step(method: GradientMethod, model: nn.Module, guard: AuditGuard, loss_fn, x, y) -> None:
    try:
        method.backward(model, loss_fn, x, y)
    except RangeError as e:  # refused before sending (a too-large perturbation or nudging): safe
        assert "exceeds half the safe range" in str(e) or "nudging" in str(e), str(e)
    except MeasurementError as e:  # the device did not settle: no gradient, nothing applied
        assert "equilibrium" in str(e) or "converge" in str(e), str(e)
    assert guard.violations == [], guard.violations[:3]
    assert guard.delivered_outside == 0
    assert guard.checked > 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(STATIC_METHODS)),
    scope=st.sampled_from(["global", "local"]),
    device_kind=st.sampled_from(["blackbox", "dnpu"]),
    fraction=st.one_of(st.floats(1e-4, 1.0), st.sampled_from([0.5, 0.4999999, 0.5000001, 0.999])),
    num_pairs=st.integers(1, 6),
    r=st.integers(1, 3),
    dropout=st.sampled_from([0.0, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_no_static_method_sends_an_out_of_range_probe(name, scope, device_kind, fraction, num_pairs, r, dropout, seed):
    g = torch.Generator().manual_seed(seed)
    device = _static_device(device_kind, seed)
    device.guard = guard = AuditGuard()
    torch.manual_seed(seed)
    layer = PhysicalLayer(device)
    model = nn.Sequential(layer, nn.Linear(device.output_shape[0], 3))
    _start_near_bounds(layer, g)
    delta = fraction * _smallest_half_range(device) / (r if name == "pgt" else (3.0 if name == "es" else 1.0))
    method = STATIC_METHODS[name](delta, num_pairs, scope, r, dropout)
    x = _inputs(device, 5, g)
    y = torch.randint(0, 3, (5,), generator=g)
    _audited_step(method, model, guard, nn.functional.cross_entropy, x, y)


ENERGY_METHODS = {
    "eqprop": lambda beta, variant: EqProp(beta=beta, variant=variant),
    "aeqprop": lambda beta, variant: Aeqprop(beta=beta, variant=variant if variant != "positive" else "optimistic", epsilon=0.05),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(ENERGY_METHODS)),
    beta=st.floats(0.01, 1.0),
    variant=st.sampled_from(["centered", "optimistic", "pessimistic", "positive"]),
    seed=st.integers(0, 2**16),
)
def test_no_energy_method_programs_an_out_of_range_setting(name, beta, variant, seed):
    g = torch.Generator().manual_seed(seed)
    device = HopfieldNetwork([4, 5, 3], weight_bound=0.5, bias_bound=0.2, seed=seed, on_nonconvergence="warn")
    device.guard = guard = AuditGuard()
    model = EnergyModel(device)
    _start_near_bounds(model, g)
    x = _inputs(device, 4, g)
    y = torch.randint(0, 3, (4,), generator=g)
    _audited_step(ENERGY_METHODS[name](beta, variant), model, guard, model.loss, x, y)


def test_every_method_class_is_covered():
    """A new method class must be added to this property test before it may touch a device."""
    covered = {PGT, FiniteDifference, Backprop, EqProp, Aeqprop, HGE}
    present = {obj for obj in vars(methods_module).values()
               if isinstance(obj, type) and issubclass(obj, GradientMethod) and not getattr(obj, "__abstractmethods__", None)}
    assert present <= covered, f"method classes without a range-safety property test: {sorted(c.__name__ for c in present - covered)}"
    assert set(methods_module.METHODS) <= set(STATIC_METHODS)


def test_the_audit_would_catch_a_method_that_overshoots():
    """The property is not vacuous: a naive stencil (no inward shift) is caught at a bound."""
    device = _static_device("blackbox", 0)
    device.guard = guard = AuditGuard()
    theta = {n: high for n, (low, high) in device.parameter_bounds().items()}  # every parameter on its upper bound
    device.measure({n: v + 1e-3 for n, v in theta.items()}, torch.zeros(2, 3))
    assert guard.violations and math.isclose(float(guard.violations[0].split("by ")[1]), 1e-3, rel_tol=1e-2)


HGE_DEVICES = ("dnpu",)  # the HGE paper's device; a frequency plan for many channels needs long windows


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scope=st.sampled_from(["global", "local"]),
    device_kind=st.sampled_from(HGE_DEVICES),
    amplitude=st.one_of(st.floats(1e-3, 0.499), st.just(0.499)),
    at_bound=st.sampled_from(["shrink", "refuse"]),
    mode=st.sampled_from(["parallel", "sequential"]),
    phase=st.sampled_from(["calibrated", "none"]),
    seed=st.integers(0, 2**16),
)
def test_hge_waveforms_never_leave_the_safe_range(scope, device_kind, amplitude, at_bound, mode, phase, seed):
    g = torch.Generator().manual_seed(seed)
    static = _static_device(device_kind, seed)
    static.guard = guard = AuditGuard()  # the time-domain device reuses its static device's guard
    device = TimeDomainDevice(static, fs=10_000.0, bandwidth_hz=2000.0, dac_ramp_s=0.001, seed=seed)
    torch.manual_seed(seed)
    layer = PhysicalLayer(device)
    model = nn.Sequential(layer, nn.Linear(device.output_shape[0], 2))
    _start_near_bounds(layer, g)
    method = HGE(window_s=0.05, min_cycles=2, amplitude=amplitude, input_amplitude=amplitude, at_bound=at_bound,
                 mode=mode, phase=phase, scope=scope, seed=seed)
    x = _inputs(static, 2, g)
    y = torch.randint(0, 2, (2,), generator=g)
    try:
        method.backward(model, nn.functional.cross_entropy, x, y)
    except RangeError as e:  # at_bound="refuse" refuses before sending anything
        assert at_bound == "refuse" and "range" in str(e), str(e)
        assert guard.violations == []
        return
    assert guard.violations == [], guard.violations[:3]
    assert guard.checked > 0
