"""One command check: shape, finiteness, range and ramp limits, enforced the same way everywhere.

``check_command`` is the one function; the range guard, ``CommandAudit``, the device server and
the remote client call it. Ramp limits cannot be bypassed: a limit the driver cannot honour is
refused at start, every wrapper forwards ramps, and ramps wait the declared inter-step delay.
"""

import pytest
import torch

from physgrad.errors import ConfigError, RangeError, ShapeError
from physgrad.systems import RandomReservoir
from physgrad.systems.base import ParameterSpec, PhysicalSystem, check_command, ramp_waypoints
from physgrad.systems.devices.dnpu import DNPU
from physgrad.systems.remote.client import RemoteSystem
from physgrad.systems.remote.server import DeviceServer
from physgrad.systems.wrappers.base import CommandAudit
from physgrad.systems.wrappers.faults import FaultInjector
from physgrad.systems.wrappers.resilient import Resilient

TOKEN = "cmd-check-token-Zq8vR2xK7pLm"


class Knob(PhysicalSystem):
    """Three electrodes with a ramp limit of 0.05 V per step, a 10 ms step delay and 0.1 s settling."""

    def __init__(self, max_step=0.05, step_delay_s=0.01, settle_s=0.1):
        spec = ParameterSpec("v", (3,), -2.0, 2.0, max_step=max_step, step_delay_s=step_delay_s, settle_s=settle_s)
        super().__init__((2,), (1,), [spec], input_range=(-1.0, 1.0), guard="refuse")
        self.applied: list[torch.Tensor] = []
        self.slept: list[float] = []

    def apply_settings(self, settings):
        self.applied += list(settings["v"].reshape(-1, 3).clone())

    def ramp_sleep(self, seconds):
        self.slept.append(seconds)

    def response(self, params, inputs):
        return (params["v"].sum(-1, keepdim=True).unsqueeze(1) + inputs.sum(-1, keepdim=True))


class NoHook(PhysicalSystem):
    def __init__(self):
        super().__init__((2,), (1,), [ParameterSpec("v", (3,), -2.0, 2.0, max_step=0.05)])

    def response(self, params, inputs):
        return inputs.sum(-1, keepdim=True) + params["v"].sum(-1)[:, None, None]


def _steps_ok(sequence, start, limit):
    previous = start
    for s in sequence:
        assert float((s - previous).abs().max()) <= limit * (1 + 1e-5)
        previous = s


def test_check_command_refuses_and_names_the_parameter():
    spec = ParameterSpec("gate", (2,), -1.0, 1.0, max_step=0.1)
    assert torch.equal(check_command(spec, torch.tensor([0.5, -0.5])), torch.tensor([0.5, -0.5]))
    with pytest.raises(ShapeError, match="'gate'.*shape"):
        check_command(spec, torch.zeros(3))
    with pytest.raises(RangeError, match="'gate'.*non-finite"):
        check_command(spec, torch.tensor([float("nan"), 0.0]))
    with pytest.raises(RangeError, match="'gate'.*outside the safe range"):
        check_command(spec, torch.tensor([1.5, 0.0]))
    # ramps: from the previous setting, then setting to setting, in order
    check_command(spec, torch.tensor([[0.1, 0.0], [0.2, 0.05]]), previous=torch.zeros(2))
    with pytest.raises(RangeError, match="'gate'.*ramp limit max_step=0.1"):
        check_command(spec, torch.tensor([[0.1, 0.0], [0.3, 0.0]]), previous=torch.zeros(2))
    with pytest.raises(RangeError, match="ramp limit"):
        check_command(spec, torch.tensor([0.5, 0.0]), previous=torch.zeros(2))
    with pytest.raises(ValueError, match="max_step"):
        ParameterSpec("gate", (2,), -1.0, 1.0, max_step=0.0)
    with pytest.raises(ValueError, match="step_delay_s"):
        ParameterSpec("gate", (2,), -1.0, 1.0, step_delay_s=-1.0)


def test_a_ramp_limit_the_driver_cannot_honour_is_refused_at_start():
    with pytest.raises(RangeError, match="no apply_settings"):
        NoHook()
    with pytest.raises(ConfigError, match="cannot be honoured"):
        DeviceServer(RandomReservoir(4, 4), TOKEN, "tcp://127.0.0.1:*", max_step=0.1)


def test_ramps_respect_limits_and_the_inter_step_delay():
    knob = Knob()
    waypoints = ramp_waypoints(knob.parameter_specs, knob.setting, {"v": torch.tensor([0.99, -0.99, 0.5])})
    assert waypoints["v"].shape[0] == 20 and torch.equal(waypoints["v"][-1], torch.tensor([0.99, -0.99, 0.5]))
    assert knob.ramp_to({"v": torch.tensor([0.99, -0.99, 0.5])}) == 20
    _steps_ok(knob.applied, torch.zeros(3), 0.05)
    assert knob.slept == [0.01] * 19 + [0.1]  # a delay between waypoints, settling after the last
    with pytest.raises(RangeError, match="ramp limit"):
        knob.ramp({"v": torch.tensor([[2.0, -1.0, 0.5]])})  # a waypoint too far is refused, nothing applied
    assert len(knob.applied) == 20


def test_measure_ramps_to_a_far_setting_and_refuses_jumps_between_probes():
    knob = Knob(step_delay_s=0.0, settle_s=0.0)
    out = knob.measure({"v": torch.tensor([[0.99, 0.99, 0.99]])}, torch.zeros(1, 2))
    assert float(out) == pytest.approx(2.97) and len(knob.applied) == 20
    _steps_ok(knob.applied, torch.zeros(3), 0.05)
    with pytest.raises(RangeError, match="ramp limit"):
        knob.measure({"v": torch.tensor([[0.99, 0.99, 0.99], [0.0, 0.99, 0.99]])}, torch.zeros(1, 2))


@pytest.mark.parametrize("wrap", [
    lambda d: FaultInjector(d, seed=0),
    lambda d: Resilient(d),
    lambda d: CommandAudit(d, refuse=True),
    lambda d: Resilient(FaultInjector(CommandAudit(d), seed=0)),
])
def test_every_wrapper_forwards_ramps(wrap):
    knob = Knob(settle_s=0.0)
    device = wrap(knob)
    assert device.can_ramp
    device.ramp_to({"v": torch.tensor([0.29, 0.0, -0.29])})
    assert len(knob.applied) == 6 and torch.allclose(knob.setting["v"], torch.tensor([0.29, 0.0, -0.29]))
    assert torch.equal(device.setting["v"], knob.setting["v"])
    _steps_ok(knob.applied, torch.zeros(3), 0.05)
    assert knob.slept == [0.01] * 5
    # a wrapper round a device that cannot ramp cannot ramp either
    assert not wrap(RandomReservoir(4, 4)).can_ramp


def test_ramps_over_the_server_reach_the_device_with_its_delays():
    knob = Knob(settle_s=0.0)
    with DeviceServer(FaultInjector(knob, seed=0), TOKEN, "tcp://127.0.0.1:*") as server:
        with RemoteSystem(server.address, TOKEN, guard="refuse") as remote:
            assert remote.parameter_specs["v"].max_step == 0.05 and remote.can_ramp
            out = remote.measure({"v": torch.tensor([[0.99, 0.0, 0.0]])}, torch.zeros(1, 2))
            assert float(out) == pytest.approx(0.99)
    _steps_ok(knob.applied, torch.zeros(3), 0.05)
    assert len(knob.applied) == 19 and knob.slept == [0.01] * 18  # the measure brings the last step


def test_out_of_range_inputs_are_refused_over_the_server_never_clipped():
    dnpu = CommandAudit(DNPU.synthetic(0))
    low, high = dnpu.input_bounds()
    with DeviceServer(dnpu, TOKEN, "tcp://127.0.0.1:*") as server:
        with RemoteSystem(server.address, TOKEN, guard="refuse") as remote:
            lo, hi = remote.input_bounds()
            assert torch.equal(lo, low) and torch.equal(hi, high)  # the limits are in the schema
            params = remote.initial_parameters()
            ok = remote.measure(params, ((low + high) / 2).unsqueeze(0))
            assert ok.shape == (1, 1, 1)
            with pytest.raises(RangeError, match="inputs"):
                remote.measure(params, torch.full((1, *remote.input_shape), 50.0))
            # bypass the client's own guard: the server itself refuses
            with pytest.raises(RangeError, match="outside the input limits"):
                remote._request("measure", {**{f"param.{n}": v.unsqueeze(0) for n, v in params.items()},
                                            "inputs": torch.full((1, *remote.input_shape), -50.0)})
    assert dnpu.violations == 0 and dnpu.commands == 1
