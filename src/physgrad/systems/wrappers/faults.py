"""What goes wrong with a real device, injected on purpose into any device.

A lab's device answers garbage now and then: a NaN or inf from an overflowing ADC, a spike (an
outlier) from a glitch, nothing at all (a timeout), a dropped connection, a slow drift of its
operating point, or the same reading again because the instrument did not update (a stuck
output). :class:`FaultInjector` wraps any :class:`~physgrad.systems.base.PhysicalSystem` and
produces each of these at a configurable rate from its own seeded generator, so the layers above
(:class:`~physgrad.systems.wrappers.resilient.Resilient`, the methods, the trainer) can be tested against
them reproducibly.

Fault model (each rate is a probability; all default to 0):

``nan``, ``inf``, ``outlier``, ``stuck`` — per probe (one parameter setting of a ``measure``
    call): one random element of that probe's output becomes NaN / ±inf / ``y + s·(1 + |y|)``
    with ``s = ±outlier_scale``; or the probe's whole output is the previous probe's answer
    (the last answer of the previous call for the first probe).
``timeout``, ``disconnect`` — per call: the call raises :class:`DeviceTimeoutError` (after
    ``hang_s`` seconds) or :class:`DeviceDisconnectedError`; nothing is measured.
``drift`` — per call: the output offset (one value per output element) takes a random-walk step
    of ``drift_scale·N(0, 1)``; the offset persists and is added to every later answer.

Unlike a well-behaved device, a faulty one *does* return non-finite values from ``measure``:
it emulates a broken driver, so that what sits above it must cope.
"""

from __future__ import annotations

import logging
import time
from typing import Mapping

import torch

from ...errors import MeasurementError
from ..base import PhysicalSystem
from .base import SystemWrapper

log = logging.getLogger(__name__)

PROBE_FAULTS = ("nan", "inf", "outlier", "stuck")
CALL_FAULTS = ("timeout", "disconnect", "drift")
FAULTS = PROBE_FAULTS + CALL_FAULTS


class DeviceTimeoutError(MeasurementError):
    """The device (or its server) did not answer in time; the command may be retried."""


class DeviceDisconnectedError(MeasurementError):
    """The connection to the device was lost; the command may be retried after reconnecting."""


TRANSIENT = (DeviceTimeoutError, DeviceDisconnectedError)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before retry ``attempt + 1``: exponential backoff ``base·2^attempt``, at most ``cap``."""
    return min(cap, base * 2**attempt)


class FaultInjector(SystemWrapper):
    """Wrap ``inner`` and inject faults at the given rates (see the module docstring).

    ``injected`` counts the faults injected so far, by kind.
    """

    def __init__(
        self,
        inner: PhysicalSystem,
        *,
        nan: float = 0.0,
        inf: float = 0.0,
        outlier: float = 0.0,
        stuck: float = 0.0,
        timeout: float = 0.0,
        disconnect: float = 0.0,
        drift: float = 0.0,
        outlier_scale: float = 10.0,
        drift_scale: float = 0.01,
        hang_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(inner, seed=seed)
        self.rates = {"nan": nan, "inf": inf, "outlier": outlier, "stuck": stuck, "timeout": timeout,
                      "disconnect": disconnect, "drift": drift}
        for name, rate in self.rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate {name!r} must be a probability in [0, 1], got {rate!r}")
        for name, value in (("outlier_scale", outlier_scale), ("drift_scale", drift_scale), ("hang_s", hang_s)):
            if not 0.0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.outlier_scale = float(outlier_scale)
        self.drift_scale = float(drift_scale)
        self.hang_s = float(hang_s)
        self.injected = {name: 0 for name in FAULTS}
        self.offset = torch.zeros(self.output_shape)
        self._last: torch.Tensor | None = None  # the last probe's answer, [B, *output_shape]

    @classmethod
    def uniform(cls, inner: PhysicalSystem, rate: float, **kwargs) -> "FaultInjector":
        """Every kind of fault at the same ``rate``."""
        return cls(inner, **{name: rate for name in FAULTS}, **kwargs)

    def _draw(self, n: int = 1) -> torch.Tensor:
        return torch.rand(n, generator=self.generator)

    def measure(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        call = self._draw(3)
        if call[0] < self.rates["timeout"]:
            self.injected["timeout"] += 1
            if self.hang_s:
                time.sleep(self.hang_s)
            raise DeviceTimeoutError(f"{type(self.inner).__name__} did not answer (injected timeout)")
        if call[1] < self.rates["disconnect"]:
            self.injected["disconnect"] += 1
            raise DeviceDisconnectedError(f"connection to {type(self.inner).__name__} lost (injected disconnect)")
        if call[2] < self.rates["drift"]:
            self.injected["drift"] += 1
            self.offset = self.offset + self.drift_scale * torch.randn(self.output_shape, generator=self.generator)
        out = self.inner.measure(params, inputs).clone()
        out = out + self.offset.to(out.dtype)
        k = out.shape[0]
        flat = out.reshape(k, out.shape[1], -1)
        m = flat.shape[1] * flat.shape[2]
        draws = torch.rand(k, len(PROBE_FAULTS), generator=self.generator)
        where = torch.randint(0, m, (k,), generator=self.generator)
        signs = torch.randint(0, 2, (k,), generator=self.generator).to(out.dtype) * 2 - 1
        hit = draws < torch.tensor([self.rates[f] for f in PROBE_FAULTS])
        for j, fault in enumerate(PROBE_FAULTS):
            self.injected[fault] += int(hit[:, j].sum())
        rows = flat.view(k, m)
        previous = self._last.reshape(-1) if self._last is not None and self._last.numel() == m else None
        for i in range(k):  # faults are rare: this loop only touches the probes that were hit
            if not hit[i].any():
                continue
            if hit[i, 3]:  # stuck: the previous answer again
                before = rows[i - 1].clone() if i > 0 else previous
                if before is not None:
                    rows[i] = before
            e = int(where[i])
            if hit[i, 2]:
                rows[i, e] = rows[i, e] + signs[i] * self.outlier_scale * (1 + rows[i, e].abs())
            if hit[i, 1]:
                rows[i, e] = signs[i] * float("inf")
            if hit[i, 0]:
                rows[i, e] = float("nan")
        if hit.any():
            log.debug("injected %s", {f: int(hit[:, j].sum()) for j, f in enumerate(PROBE_FAULTS) if hit[:, j].any()})
        self._last = out[-1].clone()
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "injected": dict(self.injected), "offset": self.offset.clone(),
                "last": None if self._last is None else self._last.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.injected = {name: int(state["injected"][name]) for name in FAULTS}
        self.offset = state["offset"].clone()
        self._last = None if state["last"] is None else state["last"].clone()

    def __repr__(self) -> str:
        rates = ", ".join(f"{k}={v}" for k, v in self.rates.items() if v)
        return f"FaultInjector({self.inner!r}, {rates})"
