"""Wrapped devices: they declare what the device declares, share its counters, and audit commands."""

import pytest
import torch

from physgrad.errors import RangeError
from physgrad.systems import RandomReservoir
from physgrad.systems.wrappers.base import CommandAudit, SystemWrapper


def test_a_wrapper_is_the_device_it_wraps():
    device = RandomReservoir(4, 6, seed=0)
    wrapped = SystemWrapper(device)
    assert wrapped.parameter_specs == device.parameter_specs and wrapped.output_shape == (6,)
    assert wrapped.differentiable and wrapped.input_range is None
    wrapped.measure(device.initial_parameters(), torch.zeros(3, 4))
    assert (wrapped.queries, wrapped.samples) == (1, 3) == (device.queries, device.samples)
    wrapped.simulate(device.initial_parameters(), torch.zeros(3, 4))
    state = wrapped.state_dict()
    wrapped.reset_counters()
    assert device.queries == 0
    wrapped.load_state_dict(state)
    assert device.queries == 2
    with pytest.raises(TypeError, match="wraps a PhysicalSystem"):
        SystemWrapper(torch.nn.Linear(2, 2))


def test_the_audit_counts_violations_before_any_guard_and_changes_nothing():
    device = RandomReservoir(4, 6, seed=0)  # its guard clips
    audit = CommandAudit(device)
    ok = {"gain": torch.ones(2, 1), "bias": torch.zeros(2, 6)}
    audit.measure(ok, torch.zeros(3, 4))
    bad = {"gain": torch.tensor([[1.0], [4.5]]), "bias": torch.zeros(2, 6)}
    audit.measure(bad, torch.zeros(3, 4))
    assert (audit.commands, audit.probes, audit.violations) == (2, 4, 1) and audit.worst == pytest.approx(0.5)
    assert device.guard.clipped == 1  # the device's own guard still did its job
    nan = {"gain": torch.ones(1, 1), "bias": torch.full((1, 6), float("nan"))}
    assert "non-finite" in audit.check(nan, torch.zeros(1, 4))
    strict = CommandAudit(RandomReservoir(4, 6), refuse=True)
    with pytest.raises(RangeError, match="outside the safe range \\(worst by 0.5\\)"):
        strict.measure(bad, torch.zeros(3, 4))


def test_the_audit_checks_ramp_limits_in_probe_order():
    audit = CommandAudit(RandomReservoir(4, 2, seed=0), max_step={"bias": 0.1})
    steps = torch.tensor([[0.05, 0.0], [0.15, 0.0], [0.2, -0.05]])
    audit.measure({"gain": torch.ones(3, 1), "bias": steps}, torch.zeros(1, 4))
    assert audit.violations == 0
    with pytest.raises(RangeError, match="no apply_settings"):  # audited, then refused by a device that cannot ramp
        audit.apply_settings({"gain": torch.ones(1, 1), "bias": torch.tensor([[0.5, 0.0]])})  # a jump of 0.3
    assert audit.violations == 1 and audit.commands == 2
