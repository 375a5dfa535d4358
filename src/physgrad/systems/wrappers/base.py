"""Devices wrapped in devices: fault injection, fault tolerance and command audits.

A :class:`SystemWrapper` *is* a :class:`~physgrad.systems.base.PhysicalSystem` that declares
exactly what the device inside declares (parameters, safe ranges, shapes) and passes every
``measure`` down to it. Wrappers stack, e.g.::

    Resilient(FaultInjector(CommandAudit(RandomReservoir(32, 256))))

so the layers above (physical layers, methods, the trainer) see one device. The cost counters are
the innermost device's: a re-measurement made by a wrapper is a real query and is counted.
:meth:`state_dict` nests the inner device's state, so a checkpoint restores the whole stack.

:class:`CommandAudit` is the independent witness of the "device is sacred" rule: it checks every
command that reaches it against the declared safe ranges *before* the device's own range guard
can clip it, and counts violations (it never changes a command).
"""

from __future__ import annotations

from typing import Mapping

import torch

from dataclasses import replace

from ...errors import RangeError, ShapeError
from ..base import PhysicalSystem, check_command


class SystemWrapper(PhysicalSystem):
    """A device that delegates to ``inner`` (see the module docstring); subclasses add behaviour."""

    def __init__(self, inner: PhysicalSystem, *, seed: int = 0) -> None:
        if not isinstance(inner, PhysicalSystem):
            raise TypeError(f"{type(self).__name__} wraps a PhysicalSystem, got {type(inner).__name__}")
        self.inner = inner
        super().__init__(
            inner.input_shape, inner.output_shape, tuple(inner.parameter_specs.values()),
            input_range=inner.input_range, guard=inner.guard, seconds_per_query=inner.seconds_per_query, seed=seed,
        )
        self._wrapped = True

    # The counters live on the innermost device; base-class assignments are forwarded once wrapped.
    def _get(name: str):  # noqa: N805 - property factory
        def get(self):
            return getattr(self.inner, name)

        def set_(self, value):
            if getattr(self, "_wrapped", False):
                setattr(self.inner, name, value)

        return property(get, set_)

    queries = _get("queries")
    samples = _get("samples")
    device_seconds = _get("device_seconds")
    setting = _get("setting")  # the setting the innermost device holds (ramps start there)
    del _get

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return self.inner.differentiable

    @property
    def can_ramp(self) -> bool:  # type: ignore[override]
        """A wrapper forwards ramps: it can ramp if it applies settings itself or anything inside can."""
        own = type(self).apply_settings not in (SystemWrapper.apply_settings, PhysicalSystem.apply_settings)
        return (own and not getattr(self, "forwards_apply_settings", False)) or self.inner.can_ramp

    def apply_settings(self, settings: Mapping[str, torch.Tensor]) -> None:
        """Forward ramp waypoints to the device inside (every wrapper does; none swallows a ramp)."""
        self.inner.apply_settings(settings)

    def ramp_sleep(self, seconds: float) -> None:
        self.inner.ramp_sleep(seconds)

    def input_bounds(self, dtype: torch.dtype = torch.float32):
        return self.inner.input_bounds(dtype)

    def measure(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return self.inner.measure(params, inputs)

    def simulate(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return self.inner.simulate(params, inputs)

    def response(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return self.inner.response(params, inputs)

    def reset_counters(self) -> None:
        self.inner.reset_counters()

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


class CommandAudit(SystemWrapper):
    """Count every command that reaches ``inner`` and every one outside the declared ranges.

    ``commands`` counts measure/simulate/apply_settings calls, ``probes`` parameter settings;
    ``violations`` counts calls carrying any out-of-range, non-finite or wrongly shaped setting or
    input (as received, before any guard) or, given ``max_step`` (``{name: step}``), a setting
    that moves a parameter further than its ramp limit from the previous one (settings are
    applied in probe order, starting from the defaults); ``worst`` is the largest distance outside
    a range seen. With ``refuse=True`` a violating command is also stopped here
    (:class:`RangeError`).
    """

    def __init__(self, inner: PhysicalSystem, *, refuse: bool = False, max_step: Mapping[str, float] | None = None) -> None:
        super().__init__(inner)
        self.refuse = refuse
        self.max_step = dict(max_step or {})
        self._setting = {n: v.double() for n, v in inner.initial_parameters().items()}
        self.commands = 0
        self.probes = 0
        self.violations = 0
        self.worst = 0.0

    def check(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor | None, *, waypoints: bool = False) -> str | None:
        """Why this command is invalid, or ``None`` if every value is finite, inside its range and within its ramp limit.

        Each parameter goes through :func:`~physgrad.systems.base.check_command` (the one check),
        with the audit's own ``max_step`` where given; the ramp check starts from the last setting
        this audit passed on, unless the device inside can ramp (then it ramps to the first probe
        itself, waypoint by waypoint, and only the steps within the command are the caller's).
        """
        if set(params) != set(self.parameter_specs):
            return f"parameters {sorted(params)} do not match the device's {sorted(self.parameter_specs)}"
        reason, worst, last = None, 0.0, {}
        ramps_itself = self.inner.can_ramp and not waypoints  # ramp waypoints are checked from the last setting
        for name, spec in self.parameter_specs.items():
            step = self.max_step.get(name, spec.max_step)
            spec = replace(spec, max_step=step)
            value = torch.as_tensor(params[name]).detach().double()
            if tuple(value.shape) == spec.shape:
                value = value.unsqueeze(0)
            if tuple(value.shape[1:]) != spec.shape:
                return f"parameter {name!r} has shape {tuple(value.shape)}, the device declares {spec.shape}"
            if torch.isfinite(value).all() and value.numel():
                low, high = spec.bounds(torch.float64)
                worst = max(worst, float(torch.maximum(low - value, value - high).max()))
            previous = value[0] if ramps_itself or step is None else self._setting[name]
            try:
                check_command(spec, value, previous=previous)
            except (RangeError, ShapeError) as e:
                reason = reason or str(e)
            if value.numel():
                last[name] = value[-1]
        self._setting.update(last)
        x = torch.zeros(0, dtype=torch.float64) if inputs is None else torch.as_tensor(inputs).detach().double()
        if not torch.isfinite(x).all():
            return reason or "inputs: non-finite value(s)"
        bounds = self.inner.input_bounds(torch.float64)
        if bounds is not None and x.numel():
            try:
                low, high = (t.expand(x.shape) for t in bounds)
                excess = float(torch.maximum(low - x, x - high).max())
            except RuntimeError:
                return reason or f"inputs of shape {tuple(x.shape)} do not match the device's {self.input_shape}"
            if excess > 0:
                worst = max(worst, excess)
                reason = reason or f"inputs: outside the input range by {excess:.4g}"
        self.worst = max(self.worst, worst)
        return reason

    forwards_apply_settings = True  # auditing a waypoint does not apply it: ramps need a device that can

    def apply_settings(self, params: Mapping[str, torch.Tensor]) -> None:
        """Audit ramp waypoints, then pass them on (refused by the device if it cannot apply them)."""
        self._audit(params, None)
        self.inner.apply_settings(params)

    def _audit(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor | None) -> None:
        self.commands += 1
        first = next(iter(params.values()), None)
        if first is not None:
            spec = next(iter(self.parameter_specs.values()))
            self.probes += 1 if first.dim() == len(spec.shape) else int(first.shape[0])
        reason = self.check(params, inputs, waypoints=inputs is None)
        if reason is not None:
            self.violations += 1
            if self.refuse:
                raise RangeError(f"CommandAudit refused a command: {reason}")

    def measure(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        self._audit(params, inputs)
        return self.inner.measure(params, inputs)

    def simulate(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        self._audit(params, inputs)
        return self.inner.simulate(params, inputs)
