"""A device that takes time: a stated wait per query, the way a real instrument does.

:class:`Latency` wraps any device and, before each ``measure``, waits ``seconds_per_setting`` for
every setting it is asked to apply (settle plus acquisition: a DNPU answering one 0.1 s window,
a magnonic ring settling for 20 ms). The answer is the inner device's, unchanged; the counters are
the inner device's. It is what makes a farm of devices worth having (``benchmarks.ray_scaling``):
the time goes into waiting, not into computing, so several devices measure at once.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import torch

from ..base import PhysicalSystem
from .base import SystemWrapper
from .timedomain import TimeDomainDevice


class Latency(SystemWrapper):
    """``inner`` with ``seconds_per_setting`` of waiting per applied setting (``K`` settings: ``K`` waits)."""

    def __init__(self, inner: PhysicalSystem, seconds_per_setting: float = 0.02) -> None:
        if not seconds_per_setting >= 0:
            raise ValueError(f"seconds_per_setting must be >= 0, got {seconds_per_setting!r}")
        super().__init__(inner)
        self.seconds_per_setting = float(seconds_per_setting)

    def _wait(self, params: Mapping[str, torch.Tensor]) -> None:
        k = 1
        for name, value in params.items():
            spec = self.parameter_specs.get(name)
            if spec is not None:
                v = torch.as_tensor(value)
                k = int(v.shape[0]) if v.dim() > len(spec.shape) else 1
                break
        if self.seconds_per_setting > 0:
            time.sleep(k * self.seconds_per_setting)

    def measure(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        self._wait(params)
        return self.inner.measure(params, inputs)

    def __repr__(self) -> str:
        return f"Latency({self.inner!r}, seconds_per_setting={self.seconds_per_setting})"


def latency_reservoir(input_size: int = 16, size: int = 64, seconds_per_setting: float = 0.02, seed: int = 0,
                      **kwargs: Any) -> Latency:
    """A :class:`~physgrad.systems.devices.reservoir.RandomReservoir` behind :class:`Latency` (a factory for farms)."""
    from ..devices.reservoir import RandomReservoir

    return Latency(RandomReservoir(input_size, size, seed=seed, **kwargs), seconds_per_setting)


class RealTimeDevice(TimeDomainDevice):
    """A time-domain device whose waveforms take wall time: ``time_scale`` × the device seconds it counts for
    each play (DAC ramps, settling and the window of every data point, played one after another).

    ``time_scale=1``: real time; ``0.2``: a device five times faster (a 0.1 s HGE window takes 20 ms, the
    issue's example). Static measurements are not slowed. Built by :func:`latency_dnpu_time`.
    """

    time_scale: float = 1.0

    def measure_waveform(self, params, inputs):
        before = self.device_seconds
        out = super().measure_waveform(params, inputs)
        wait = (self.device_seconds - before) * self.time_scale
        if wait > 0:
            time.sleep(wait)
        return out


def latency_dnpu_time(time_scale: float = 1.0, seed: int = 0, **options: Any) -> RealTimeDevice:
    """The registry's time-domain DNPU (``time_domain_dnpu``: the HGE paper's settings) whose waveforms take wall
    time (:class:`RealTimeDevice`; a factory for farms). ``options``: those of ``time_domain_dnpu``."""
    from ..devices.dnpu import time_domain_dnpu

    if not time_scale >= 0:
        raise ValueError(f"time_scale must be >= 0, got {time_scale!r}")
    device = time_domain_dnpu(None, seed=seed, **options)
    device.__class__ = RealTimeDevice  # the same device, built by the same factory; only its plays take time
    device.time_scale = float(time_scale)
    return device


__all__ = ["Latency", "RealTimeDevice", "latency_dnpu_time", "latency_reservoir"]
