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

from ...errors import RangeError
from ..base import PhysicalSystem


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
    del _get

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return self.inner.differentiable

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

    def check(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor | None) -> str | None:
        """Why this command is invalid, or ``None`` if every value is finite and inside its range."""
        if set(params) != set(self.parameter_specs):
            return f"parameters {sorted(params)} do not match the device's {sorted(self.parameter_specs)}"
        worst, problems = 0.0, []
        for name, spec in self.parameter_specs.items():
            value = torch.as_tensor(params[name]).detach()
            if tuple(value.shape[-len(spec.shape):] if spec.shape else ()) != spec.shape:
                return f"parameter {name!r} has shape {tuple(value.shape)}, the device declares {spec.shape}"
            low, high = spec.bounds(torch.float64)
            problems.append((name, value.double(), low, high))
        x = torch.zeros(0, dtype=torch.float64) if inputs is None else torch.as_tensor(inputs).detach().double()
        if self.input_range is not None:
            problems.append(("inputs", x, torch.tensor(self.input_range[0]).double(), torch.tensor(self.input_range[1]).double()))
        elif not torch.isfinite(x).all():
            return "inputs: non-finite value(s)"
        reason = self._ramp_violation(params) if self.max_step else None
        for name, value, low, high in problems:
            if not torch.isfinite(value).all():
                return f"{name}: non-finite value(s)"
            excess = torch.maximum(low - value, value - high).max() if value.numel() else torch.tensor(0.0)
            if excess > 0:
                worst = max(worst, float(excess))
                reason = f"{name}: outside its safe range by {float(excess):.4g}"
        self.worst = max(self.worst, worst)
        return reason

    def _ramp_violation(self, params: Mapping[str, torch.Tensor]) -> str | None:
        reason = None
        for name, step in self.max_step.items():
            spec = self.parameter_specs[name]
            seq = torch.as_tensor(params[name]).detach().double().reshape(-1, *spec.shape)
            seq = torch.cat([self._setting[name].unsqueeze(0), seq])
            jump = float((seq[1:] - seq[:-1]).abs().max()) if seq.numel() > spec.numel else 0.0
            tol = 2 * torch.finfo(torch.float32).eps * float(seq.abs().max())
            if jump > step + tol:
                reason = f"parameter {name!r}: a step of {jump:.4g} exceeds its ramp limit {step:.4g}"
            self._setting[name] = seq[-1]
        return reason

    def apply_settings(self, params: Mapping[str, torch.Tensor]) -> None:
        """Audit ramp waypoints (and pass them on if the device itself has this hook)."""
        self._audit(params, None)
        apply = getattr(self.inner, "apply_settings", None)
        if apply is not None:
            apply(params)

    def _audit(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor | None) -> None:
        self.commands += 1
        first = next(iter(params.values()), None)
        if first is not None:
            spec = next(iter(self.parameter_specs.values()))
            self.probes += 1 if first.dim() == len(spec.shape) else int(first.shape[0])
        reason = self.check(params, inputs)
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
