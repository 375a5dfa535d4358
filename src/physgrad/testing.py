"""Conformance checks for a device: does it keep the :class:`~physgrad.systems.base.PhysicalSystem` contract?

::

    from physgrad.testing import check_device, assert_conforms
    failures = check_device(MyRig())      # [] when the device conforms; else one sentence per failure
    assert_conforms(MyRig())              # AssertionError listing the failures (for a test suite)

or from the shell: ``physgrad check-device my_lab.rig:Rig --device-args '{...}'`` (exit 0: conforms).

What is checked (each check runs even when an earlier one failed):

* **declarations**: shapes are tuples of ints, parameter specs are :class:`ParameterSpec` s keyed
  by their name, with a default inside the safe range;
* **shapes**: ``measure`` takes unbatched and ``[K, …]`` settings, shared ``[B, …]`` and per-probe
  ``[K, B, …]`` inputs, answers ``[K, B, *output_shape]``; a wrong input shape or an unknown
  parameter is refused with :class:`~physgrad.errors.PhysgradError`, not a crash inside the device;
* **dtypes**: float32 probes get float32 answers; float64 probes get floating answers or a
  refusal whose message names ``float64`` (never a crash inside a matmul);
* **batching**: ``K`` settings in one call answer as ``K`` single calls (within the device's own
  repeat-to-repeat spread), and cost ``K`` queries and ``K·B`` samples;
* **ranges**: a setting beyond the safe range is refused (:class:`RangeError`) or guarded (answered
  as at the bound); NaN settings and inputs are refused with :class:`RangeError`;
* **finiteness**: answers at random in-range settings are finite;
* **state**: ``load_state_dict(state_dict())`` restores the counters, and the answer after a
  restore matches the answer after the save (within the spread);
* **no gradients**: ``measure`` answers never carry autograd history, even for inputs that do;
  a device that says ``differentiable = True`` offers ``simulate`` with gradients.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import PhysgradError, RangeError
from .systems.base import ParameterSpec, PhysicalSystem

K, B = 3, 4


def check_device(system: PhysicalSystem, *, seed: int = 0) -> list[str]:
    """Run every check on ``system``; return one sentence per failure (``[]``: it conforms)."""
    failures: list[str] = []
    if not isinstance(system, PhysicalSystem):
        return [f"{type(system).__name__} is not a physgrad.systems.PhysicalSystem (subclass it; see docs/devices/write_a_device.md)"]
    g = torch.Generator().manual_seed(seed)
    checks: list[tuple[str, Callable[[PhysicalSystem, torch.Generator], list[str]]]] = [
        ("declarations", _declarations), ("shapes", _shapes), ("dtypes", _dtypes), ("batching", _batching),
        ("ranges", _ranges), ("finiteness", _finiteness), ("state", _state), ("gradients", _gradients),
    ]
    for name, check in checks:
        try:
            failures += [f"{name}: {m}" for m in check(system, g)]
        except Exception as e:  # a check that crashes is a failure of the device, named
            failures.append(f"{name}: raised {type(e).__name__}: {e}")
    return failures


def assert_conforms(system: PhysicalSystem, **kwargs) -> None:
    """``AssertionError`` listing every failed check, if any."""
    failures = check_device(system, **kwargs)
    if failures:
        raise AssertionError(f"{type(system).__name__} does not conform:\n  - " + "\n  - ".join(failures))


# ------------------------------------------------------------------------------------ helpers
def _settings(system: PhysicalSystem, k: int, g: torch.Generator, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """``k`` random settings inside the safe range (around the default where a bound is infinite)."""
    out = {}
    for name, spec in system.parameter_specs.items():
        low, high = spec.bounds(dtype)
        default = spec.default_tensor(dtype)
        lo = torch.where(torch.isfinite(low), low, default - 0.1)
        hi = torch.where(torch.isfinite(high), high, default + 0.1)
        u = torch.rand((k, *spec.shape), generator=g, dtype=dtype)
        # stay a little inside the box (0.1 … 0.9 of the range): a guard may treat the edge itself specially
        out[name] = lo + (0.1 + 0.8 * u) * (hi - lo)
    return out


def _input_box(system: PhysicalSystem, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    shape = system.input_shape
    bounds = getattr(system, "input_bounds", None)
    box = bounds() if callable(bounds) else None
    if box is not None:
        return box[0].to(dtype).expand(shape), box[1].to(dtype).expand(shape)
    if system.input_range is not None:
        return torch.full(shape, float(system.input_range[0]), dtype=dtype), torch.full(shape, float(system.input_range[1]), dtype=dtype)
    return torch.full(shape, -0.5, dtype=dtype), torch.full(shape, 0.5, dtype=dtype)


def _inputs(system: PhysicalSystem, batch: tuple[int, ...], g: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    low, high = _input_box(system, dtype)
    u = torch.rand((*batch, *system.input_shape), generator=g, dtype=dtype)
    return low + (0.1 + 0.8 * u) * (high - low)


def _single(settings: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {n: v[i : i + 1] for n, v in settings.items()}


def _spread(system: PhysicalSystem, params, x, repeats: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean answer of a few repeats and a tolerance from their spread (0 spread: a tiny one)."""
    answers = torch.stack([system.measure(params, x).to(torch.float64) for _ in range(repeats)])
    mean = answers.mean(0)
    spread = (answers.max(0).values - answers.min(0).values).max()
    tol = 1e-4 * (1.0 + float(mean.abs().max())) + 10.0 * float(spread)
    return mean, torch.tensor(tol)


def _refused(fn: Callable[[], object], kind=PhysgradError) -> tuple[bool, BaseException | None]:
    try:
        fn()
    except kind as e:
        return True, e
    except Exception as e:
        return False, e
    return False, None


# ------------------------------------------------------------------------------------ the checks
def _declarations(system: PhysicalSystem, g) -> list[str]:
    failures = []
    for what in ("input_shape", "output_shape"):
        shape = getattr(system, what, None)
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 1 for s in shape):
            failures.append(f"{what} must be a tuple of positive ints, got {shape!r}")
    if not isinstance(system.parameter_specs, dict):
        return failures + [f"parameter_specs must be a dict of ParameterSpec, got {type(system.parameter_specs).__name__}"]
    for name, spec in system.parameter_specs.items():
        if not isinstance(spec, ParameterSpec):
            failures.append(f"parameter {name!r}: spec is a {type(spec).__name__}, not a ParameterSpec")
        elif spec.name != name:
            failures.append(f"parameter {name!r}: its spec is named {spec.name!r}")
    identity = getattr(type(system), "identity", None)
    if identity is not None:
        first, second = system.identity, system.identity
        if not isinstance(first, str) or first != second:
            failures.append(f"identity must be a stable string, got {first!r} then {second!r}")
    return failures


def _shapes(system: PhysicalSystem, g) -> list[str]:
    failures = []
    out_shape = system.output_shape
    p1 = system.initial_parameters()
    x = _inputs(system, (B,), g)
    y = system.measure(p1, x)
    if tuple(y.shape) != (1, B, *out_shape):
        failures.append(f"one unbatched setting, inputs [{B}, *{system.input_shape}]: answer {tuple(y.shape)}, expected {(1, B, *out_shape)}")
    pk = _settings(system, K, g)
    if pk:
        y = system.measure(pk, x)
        if tuple(y.shape) != (K, B, *out_shape):
            failures.append(f"{K} settings, shared inputs: answer {tuple(y.shape)}, expected {(K, B, *out_shape)}")
        xk = _inputs(system, (K, B), g)
        y = system.measure(pk, xk)
        if tuple(y.shape) != (K, B, *out_shape):
            failures.append(f"{K} settings, per-probe inputs [{K}, {B}, ...]: answer {tuple(y.shape)}, expected {(K, B, *out_shape)}")
    bad = torch.zeros(B, *[s + 1 for s in system.input_shape]) if system.input_shape else torch.zeros(B, 2)
    ok, err = _refused(lambda: system.measure(p1, bad))
    if not ok:
        failures.append(f"inputs of the wrong shape {tuple(bad.shape)} must be refused with a PhysgradError (ShapeError), "
                        f"got {'no error' if err is None else type(err).__name__ + ': ' + str(err)}")
    ok, err = _refused(lambda: system.measure({**p1, "no_such_parameter": torch.zeros(1)}, x))
    if not ok:
        failures.append(f"an unknown parameter name must be refused with a PhysgradError, got "
                        f"{'no error' if err is None else type(err).__name__}")
    return failures


def _dtypes(system: PhysicalSystem, g) -> list[str]:
    failures = []
    x = _inputs(system, (B,), g)
    y = system.measure(system.initial_parameters(), x)
    if y.dtype != torch.float32:
        failures.append(f"float32 probes got {str(y.dtype).replace('torch.', '')} answers; answer float32 "
                        f"(cast the instrument's reading with .float()) so digital layers can use them")
    p64 = system.initial_parameters(torch.float64)
    try:
        y = system.measure(p64, x.double())
    except PhysgradError as e:
        if "float64" not in str(e):
            failures.append(f"float64 probes were refused without naming the dtype: {e}")
    except Exception as e:
        failures.append(f"float64 probes crashed the device ({type(e).__name__}: {e}); cast them to the device's "
                        f"dtype or refuse them with an error naming float64")
    else:
        if not y.is_floating_point():
            failures.append(f"float64 probes got non-floating answers ({y.dtype})")
    return failures


def _batching(system: PhysicalSystem, g) -> list[str]:
    failures = []
    pk = _settings(system, K, g)
    if not pk:
        return failures
    x = _inputs(system, (B,), g)
    q0, s0 = system.queries, system.samples
    together = system.measure(pk, x).to(torch.float64)
    if system.queries - q0 != K or system.samples - s0 != K * B:
        failures.append(f"{K} probes of {B} samples counted {system.queries - q0} queries and {system.samples - s0} samples, "
                        f"expected {K} and {K * B}")
    for i in range(K):
        mean, tol = _spread(system, _single(pk, i), x)
        err = float((together[i] - mean[0]).abs().max())
        if not err <= float(tol):
            failures.append(f"probe {i} of {K} in one call differs from the same setting measured alone by {err:.3g} "
                            f"(repeat spread allows {float(tol):.3g}): probes are mixed up or share state")
            break
    return failures


def _ranges(system: PhysicalSystem, g) -> list[str]:
    failures = []
    x = _inputs(system, (B,), g)
    base = system.initial_parameters()
    for name, spec in system.parameter_specs.items():
        low, high = spec.bounds()
        if not torch.isfinite(high).all():
            continue
        span = torch.where(torch.isfinite(low), high - low, torch.ones_like(high))
        beyond = {**base, name: high + 0.5 * span.abs() + 1.0}
        at_bound = {**base, name: high}
        clipped = getattr(getattr(system, "guard", None), "clipped", None)
        try:
            y = system.measure(beyond, x)
        except RangeError as e:
            if name not in str(e):
                failures.append(f"setting {name!r} beyond its range was refused without naming it: {e}")
        except Exception as e:
            failures.append(f"setting {name!r} beyond its range raised {type(e).__name__} (expected RangeError or a guarded answer): {e}")
        else:
            mean, tol = _spread(system, at_bound, x)
            if not float((y.to(torch.float64) - mean).abs().max()) <= float(tol):
                failures.append(f"setting {name!r} beyond its safe range was applied (answer differs from the answer at the bound)")
            elif (now := getattr(getattr(system, "guard", None), "clipped", None)) is not None and clipped is not None and now is not None and now <= clipped:
                failures.append(f"setting {name!r} beyond its range was clipped without counting it (guard.clipped)")
        break  # one parameter is enough
    if system.parameter_specs:
        name = next(iter(system.parameter_specs))
        nan = {**base, name: torch.full_like(base[name], math.nan)}
        ok, err = _refused(lambda: system.measure(nan, x), RangeError)
        if not ok:
            failures.append(f"a NaN setting of {name!r} must be refused with RangeError, got "
                            f"{'no error' if err is None else type(err).__name__ + ': ' + str(err)}")
    bad = x.clone()
    bad.view(-1)[0] = math.nan
    ok, err = _refused(lambda: system.measure(base, bad), RangeError)
    if not ok:
        failures.append(f"NaN inputs must be refused with RangeError, got {'no error' if err is None else type(err).__name__}")
    return failures


def _finiteness(system: PhysicalSystem, g) -> list[str]:
    y = system.measure(_settings(system, K, g) or system.initial_parameters(), _inputs(system, (B,), g))
    if not torch.isfinite(y).all():
        return [f"{int((~torch.isfinite(y)).sum())} non-finite answer(s) at in-range settings (raise MeasurementError instead)"]
    return []


def _state(system: PhysicalSystem, g) -> list[str]:
    failures = []
    params, x = system.initial_parameters(), _inputs(system, (B,), g)
    state = system.state_dict()
    counters = (system.queries, system.samples, system.device_seconds)
    after_save = system.measure(params, x).to(torch.float64)
    system.load_state_dict(state)
    if (system.queries, system.samples, system.device_seconds) != counters:
        failures.append(f"load_state_dict did not restore the counters: {counters} -> "
                        f"{(system.queries, system.samples, system.device_seconds)}")
    after_load = system.measure(params, x).to(torch.float64)
    _, tol = _spread(system, params, x)
    if not float((after_load - after_save).abs().max()) <= float(tol):
        failures.append("the answer after load_state_dict differs from the answer after state_dict (state not restored)")
    return failures


def _gradients(system: PhysicalSystem, g) -> list[str]:
    failures = []
    params = {n: v.clone().requires_grad_(True) for n, v in system.initial_parameters().items()}
    x = _inputs(system, (B,), g).requires_grad_(True)
    y = system.measure(params, x)
    if y.requires_grad or y.grad_fn is not None:
        failures.append("measure returned an answer with autograd history (devices never expose gradients; return .detach())")
    if system.differentiable:
        try:
            ys = system.simulate(params, x)
        except Exception as e:
            failures.append(f"differentiable = True but simulate failed: {type(e).__name__}: {e}")
        else:
            if params and not ys.requires_grad:
                failures.append("differentiable = True but simulate's answer carries no gradient")
    else:
        ok, err = _refused(lambda: system.simulate(params, x), (TypeError, PhysgradError))
        if not ok:
            failures.append("differentiable = False but simulate did not refuse (it must raise TypeError)")
    return failures


__all__ = ["assert_conforms", "check_device"]
