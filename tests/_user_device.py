"""A user's own device, defined only here (as a lab would in its own module): served, checked and
trained from the command line by ``tests._user_device:Rig`` (the same class as docs/devices/write_a_device.md)."""

from __future__ import annotations

import torch

from physgrad.systems import MeasurementNoise, ParameterSpec, PhysicalSystem


class Rig(PhysicalSystem):
    """Four input voltages in, three output currents out, through a fixed random nonlinear medium.

    Controls: ``gain`` (3 values, 0…2, dimensionless) and ``offset`` (3 values, −1…1 V). The
    instrument's driver answers float64 numbers; ``response`` casts them to float32.
    """

    differentiable = False  # a real rig: no gradients, ever

    def __init__(self, inputs: int = 4, outputs: int = 3, noise: float = 0.0, seed: int = 0) -> None:
        super().__init__(
            input_shape=(inputs,),
            output_shape=(outputs,),
            parameters=[
                ParameterSpec("gain", (outputs,), low=0.0, high=2.0, default=1.0, unit=""),
                ParameterSpec("offset", (outputs,), low=-1.0, high=1.0, default=0.0, unit="V"),
            ],
            input_range=(-1.0, 1.0),                      # volts on the input electrodes
            noise=MeasurementNoise(additive=noise),       # nA, added by measure()
            seconds_per_query=1e-3,                       # settle + sample time of one setting
            seed=seed,
        )
        g = torch.Generator().manual_seed(seed)
        self._medium = torch.randn(outputs, inputs, generator=g, dtype=torch.float64)  # the unknown inside

    def response(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        # params[name]: [K, *shape]; inputs: [K, B, inputs] -> [K, B, outputs]
        drive = inputs.to(torch.float64) @ self._medium.T                     # what the driver computes (float64)
        gain = params["gain"].to(torch.float64).unsqueeze(1)
        offset = params["offset"].to(torch.float64).unsqueeze(1)
        current = torch.tanh(gain * drive + offset)
        return current.to(inputs.dtype if inputs.is_floating_point() else torch.float32)  # answer in the probes' dtype


def make_rig(size: int = 3) -> Rig:
    """A factory works as well as a class: ``tests._user_device:make_rig``."""
    return Rig(outputs=size)


class Float64Rig(Rig):
    """A broken driver: its own ``measure`` answers float64 whatever it is asked.

    (A driver whose ``response`` answers float64 conforms: ``PhysicalSystem.measure`` casts the answer
    to the request's dtype. Overriding ``measure`` skips that cast, which the checker must catch.)
    """

    def measure(self, params, inputs):
        return super().measure(params, inputs).to(torch.float64)


class MixedUpRig(Rig):
    """A broken batch: every probe answers with the first probe's setting."""

    def response(self, params, inputs):
        first = {n: v[:1].expand_as(v) for n, v in params.items()}
        return super().response(first, inputs)


class _NoGuard:
    clipped = 0
    mode = "none"

    def __call__(self, what, value, low, high):
        return value

    def check(self, spec, value, previous=None):  # the guard's per-parameter command check: passes anything
        return value


class Unguarded(Rig):
    """A broken guard: applies settings beyond the safe range, and NaN."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.guard = _NoGuard()
