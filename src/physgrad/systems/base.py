"""The device interface every method talks to (DESIGN.md, "The systems").

A :class:`PhysicalSystem` declares its controllable parameters (names, shapes, safe ranges,
units), the shape of one input sample and of one output sample, and answers
:meth:`PhysicalSystem.measure` for a *batch of probes*: ``K`` parameter settings, each applied to
a batch of ``B`` inputs, in one call. Every setting and input passes the :class:`RangeGuard`
before it reaches the device, so no method can send a value outside the declared range or a NaN.

``measure`` never returns anything with a gradient. A simulated device may also offer
:meth:`PhysicalSystem.simulate` (``differentiable = True``): the same noiseless response through
autograd, used only by the backpropagation oracle; forward-only methods never call it.

Subclasses implement :meth:`PhysicalSystem.response`, vectorised over probes::

    response(params: {name: [K, *shape]}, inputs: [K, B, *input_shape]) -> [K, B, *output_shape]
"""

from __future__ import annotations

import abc
import hashlib
import logging
import math
import time
import warnings
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Mapping, Sequence

import torch

from ..cost import Cost
from ..errors import MeasurementError, RangeError, ShapeError, require_finite
from .noise import MeasurementNoise

log = logging.getLogger(__name__)

Bound = float | torch.Tensor
MAX_WAIT_S = 3600.0  # longest step delay or settling time a spec may declare
RAMP_MARGIN = 1e-5  # ramps are planned this much (relative) below the limit, for float32 rounding


@dataclass(frozen=True)
class ParameterSpec:
    """One controllable parameter of a device.

    ``low``/``high`` are the safe range, a number or a tensor broadcastable to ``shape`` (per
    element bounds); ``default`` is the setting a fresh device starts from.

    Ramp limits (keyword-only): ``max_step`` is the largest allowed change of any element between
    two consecutive applied settings (``None``: no ramp limit); ``step_delay_s`` the wait between
    two ramp waypoints; ``settle_s`` the wait after a ramp reaches its target. A device that
    declares ``max_step`` must implement :meth:`PhysicalSystem.apply_settings` (the hook through
    which ramp waypoints reach it): otherwise it is refused when constructed, because a limit the
    driver cannot honour is no limit. :func:`check_command` enforces all of it.
    """

    name: str
    shape: tuple[int, ...]
    low: Bound = -math.inf
    high: Bound = math.inf
    default: torch.Tensor | float = 0.0
    unit: str = ""
    _: KW_ONLY
    max_step: float | None = None
    step_delay_s: float = 0.0
    settle_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.max_step is not None:
            if isinstance(self.max_step, bool) or not (isinstance(self.max_step, (int, float)) and 0 < self.max_step < math.inf):
                raise ValueError(f"parameter {self.name!r}: max_step must be a finite number > 0 or None, got {self.max_step!r}")
            object.__setattr__(self, "max_step", float(self.max_step))
        for key in ("step_delay_s", "settle_s"):
            v = getattr(self, key)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 <= v <= MAX_WAIT_S):
                raise ValueError(f"parameter {self.name!r}: {key} must be a number of seconds in [0, {MAX_WAIT_S:g}], got {v!r}")
            object.__setattr__(self, key, float(v))
        low, high = self.bounds()
        if torch.isnan(low).any() or torch.isnan(high).any() or (low > high).any():
            raise ValueError(f"parameter {self.name!r}: safe range low={self.low} high={self.high} is not a range")
        default = self.default_tensor()
        if not ((default >= low) & (default <= high)).all():
            raise ValueError(f"parameter {self.name!r}: default setting lies outside its safe range")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def bounds(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The safe range as two tensors of the parameter's shape."""
        low = torch.as_tensor(self.low, dtype=dtype).expand(self.shape).clone()
        high = torch.as_tensor(self.high, dtype=dtype).expand(self.shape).clone()
        return low, high

    def default_tensor(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(self.default, dtype=dtype).expand(self.shape).clone()


def check_command(spec: ParameterSpec, value, previous: torch.Tensor | None = None) -> torch.Tensor:
    """The one check every command passes before it may reach a device; returns ``value`` as a tensor.

    ``value`` is one setting (``spec.shape``) or ``K`` settings applied in order (``[K, *shape]``).
    Refuses (never clips): a wrong shape (:class:`ShapeError`), a NaN/inf or a value outside
    ``[low, high]`` (:class:`RangeError`) and, given ``previous`` (the setting the device holds
    now) and a declared ``max_step``, any step — from ``previous`` to the first setting, then
    setting to setting — larger than ``max_step`` (:class:`RangeError`; up to float32 rounding).
    Every message names the parameter. The guard, :class:`CommandAudit`, the device server and
    the remote client all call this function.
    """
    value = torch.as_tensor(value)  # not detached: simulate() differentiates through the setting
    shape = tuple(value.shape)
    if shape != spec.shape and shape[1:] != spec.shape:
        raise ShapeError(f"parameter {spec.name!r}: expected shape {spec.shape} or [K, *{spec.shape}], got {shape}")
    if not value.is_floating_point():
        value = value.to(torch.float64)
    v = value.detach()
    if not torch.isfinite(v).all():
        bad = int((~torch.isfinite(v)).sum())
        raise RangeError(f"parameter {spec.name!r}: {bad} non-finite value(s) (NaN/inf) refused; nothing was sent to the device")
    low, high = spec.bounds(v.dtype)
    outside = (v < low) | (v > high)
    if outside.any():
        worst = float(torch.maximum(low - v, v - high).max())
        raise RangeError(
            f"parameter {spec.name!r}: {int(outside.sum())} value(s) outside the safe range (worst by {worst:.4g}); "
            "refused, nothing was sent"
        )
    if spec.max_step is not None and previous is not None and value.numel():
        seq = torch.cat([torch.as_tensor(previous).detach().double().reshape(1, *spec.shape),
                         v.double().reshape(-1, *spec.shape)])
        a, b = seq[:-1], seq[1:]
        tol = torch.finfo(torch.float32).eps * (a.abs() + b.abs())
        if ((b - a).abs() > spec.max_step + tol).any():
            jump = float((b - a).abs().max())
            raise RangeError(
                f"parameter {spec.name!r}: a step of {jump:.4g} exceeds its ramp limit max_step={spec.max_step:.4g}; "
                "refused, nothing was sent"
            )
    return value


def ramp_waypoints(specs: Mapping[str, ParameterSpec], current: Mapping[str, torch.Tensor],
                   target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Settings ``{name: [W, *shape]}`` on the straight line from ``current`` to ``target`` (the last is the target).

    ``W = max over parameters of ceil(distance / max_step)`` (at least 1), so no step exceeds any
    declared ``max_step``; the safe box is convex, so every waypoint is inside it.
    """
    n = 1
    for name, spec in specs.items():
        if spec.max_step is not None and target[name].numel():
            distance = float((target[name].double() - current[name].double()).abs().max())
            n = max(n, math.ceil(distance / (spec.max_step * (1 - RAMP_MARGIN))))
    f = torch.arange(1, n + 1, dtype=torch.float64) / n
    out = {}
    for name in specs:
        a, b = current[name].double(), target[name].double()
        w = a + f.reshape(-1, *([1] * a.dim())) * (b - a)
        w[-1] = b
        out[name] = w.to(target[name].dtype if target[name].is_floating_point() else torch.float32)
    return out


class RangeGuard:
    """The last line of defence between a method and a device.

    ``mode="clip"`` moves out-of-range values onto the nearest bound (and counts them);
    ``mode="refuse"`` raises :class:`RangeError` and sends nothing. NaN or inf is refused in both
    modes: there is no safe value to clip it to.
    """

    MODES = ("clip", "refuse")

    def __init__(self, mode: str = "clip") -> None:
        if mode not in self.MODES:
            raise ValueError(f"RangeGuard mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.clipped = 0  # number of values moved onto a bound so far

    def __call__(self, what: str, value: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise RangeError(f"{what}: {bad} non-finite value(s) (NaN/inf) refused; nothing was sent to the device")
        outside = (value < low) | (value > high)
        if not outside.any():
            return value
        count = int(outside.sum())
        if self.mode == "refuse":
            worst = float(torch.maximum(low - value, value - high).max())
            raise RangeError(
                f"{what}: {count} value(s) outside the safe range (worst by {worst:.4g}); refused, nothing was sent"
            )
        self.clipped += count
        log.debug("%s: clipped %d value(s) into the safe range", what, count)
        return torch.maximum(torch.minimum(value, high), low)

    def check(self, spec: ParameterSpec, value: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """One parameter's command: clip (or refuse) by this guard's mode, then :func:`check_command`.

        Ramp limits are never clipped: a step over ``max_step`` is refused in both modes.
        """
        value = torch.as_tensor(value)
        low, high = spec.bounds(value.dtype if value.is_floating_point() else torch.float32)
        return check_command(spec, self(f"parameter {spec.name!r}", value, low, high), previous)


class PhysicalSystem(abc.ABC):
    """A device that can only be set, driven and measured.

    Parameters
    ----------
    input_shape, output_shape:
        Shape of one input sample and of one output sample.
    parameters:
        The controllable parameters, with their safe ranges.
    input_range:
        ``(low, high)`` that every input value must respect (``None``: unbounded).
    guard:
        ``"clip"`` or ``"refuse"`` for out-of-range settings (see :class:`RangeGuard`).
    noise:
        Measurement noise applied by :meth:`measure` (never by :meth:`simulate`).
    seconds_per_query:
        Device time one query costs (settling + sampling), for cost accounting.
    seed:
        Seed of the device's own noise generator.
    name:
        A stable identity for this device (see :attr:`identity`); default: the class name and a hash
        of the declared schema.
    """

    differentiable: bool = False

    def __init__(
        self,
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        parameters: Sequence[ParameterSpec] = (),
        *,
        input_range: tuple[float, float] | None = None,
        guard: str | RangeGuard = "clip",
        noise: MeasurementNoise | None = None,
        seconds_per_query: float = 0.0,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"a device name must be a non-empty string, got {name!r}")
        self._identity = name
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_shape = tuple(int(s) for s in output_shape)
        self.parameter_specs: dict[str, ParameterSpec] = {}
        for spec in parameters:
            if spec.name in self.parameter_specs:
                raise ValueError(f"duplicate parameter name {spec.name!r}")
            self.parameter_specs[spec.name] = spec
        if input_range is not None and not input_range[0] < input_range[1]:
            raise ValueError(f"input_range {input_range} is not a range")
        self.input_range = input_range
        self.guard = guard if isinstance(guard, RangeGuard) else RangeGuard(guard)
        self.noise = noise or MeasurementNoise()
        self.seconds_per_query = float(seconds_per_query)
        self.generator = torch.Generator().manual_seed(seed)
        self.queries = 0
        self.samples = 0
        self.device_seconds = 0.0
        self.setting = self.initial_parameters()  # what the device holds now (ramps start here)
        limited = [n for n, spec in self.parameter_specs.items() if spec.max_step is not None]
        if limited and not self.can_ramp and not self.ramps_within_measure:
            raise RangeError(
                f"{type(self).__name__} declares ramp limits (max_step) for {limited} but has no apply_settings(): "
                "ramp waypoints could never reach it, so the limit could not be honoured. Implement apply_settings "
                "(set one setting, no measurement) or declare no max_step"
            )

    # ----------------------------------------------------------------------------- ramps
    checks_ramp_locally = True  # a remote client leaves the ramp check to its server
    # a device whose every measurement enforces max_step itself (e.g. a waveform player that checks the slew of
    # every waveform, the ramp from its last setting included) needs no apply_settings hook
    ramps_within_measure = False

    @property
    def can_ramp(self) -> bool:
        """Whether ramp waypoints can reach the device (it implements :meth:`apply_settings`)."""
        return type(self).apply_settings is not PhysicalSystem.apply_settings

    @property
    def ramp_limited(self) -> bool:
        return any(spec.max_step is not None for spec in self.parameter_specs.values())

    def apply_settings(self, settings: Mapping[str, torch.Tensor]) -> None:
        """Hook: put ``settings`` (``{name: [W, *shape]}``, in order) on the device without measuring.

        A driver with ramp limits implements it; :meth:`ramp` calls it one waypoint at a time.
        """
        raise RangeError(f"{type(self).__name__} cannot apply settings without measuring (no apply_settings); refused")

    def ramp_sleep(self, seconds: float) -> None:
        """How a ramp waits (tests replace it with a recorder)."""
        time.sleep(seconds)

    def ramp(self, waypoints: Mapping[str, torch.Tensor]) -> int:
        """Apply ``{name: [W, *shape]}`` one waypoint at a time, each checked by :func:`check_command`.

        Waits the largest declared ``step_delay_s`` between waypoints and ``settle_s`` after the
        last. Returns ``W``. Refuses (nothing applied) if any step exceeds a ramp limit or any
        waypoint leaves the safe range, and if the device has no :meth:`apply_settings`.
        """
        if not self.can_ramp:
            raise RangeError(f"{type(self).__name__} cannot be ramped: it has no apply_settings()")
        checked, w = {}, None
        for name, spec in self.parameter_specs.items():
            if name not in waypoints:
                raise ShapeError(f"ramp: waypoints for parameter {name!r} missing")
            v = check_command(spec, torch.as_tensor(waypoints[name]), previous=self.setting[name])
            v = v.reshape(-1, *spec.shape)
            if w is not None and v.shape[0] != w:
                raise ShapeError(f"ramp: parameter {name!r} has {v.shape[0]} waypoints, others have {w}")
            checked[name], w = v, v.shape[0]
        if w is None:
            return 0
        delay = max((s.step_delay_s for s in self.parameter_specs.values()), default=0.0)
        settle = max((s.settle_s for s in self.parameter_specs.values()), default=0.0)
        for i in range(w):
            if i and delay:
                self.ramp_sleep(delay)
            point = {n: v[i : i + 1] for n, v in checked.items()}
            self.apply_settings(point)
            self.setting = {n: v[0].clone() for n, v in point.items()}
        if settle:
            self.ramp_sleep(settle)
        return w

    def ramp_to(self, target: Mapping[str, torch.Tensor]) -> int:
        """Ramp from the current setting to ``target`` (``{name: shape}``) within every ``max_step``."""
        return self.ramp(ramp_waypoints(self.parameter_specs, self.setting, target))

    # ----------------------------------------------------------------------------- declared
    def initial_parameters(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The default setting of every parameter (unbatched shapes)."""
        return {name: spec.default_tensor(dtype) for name, spec in self.parameter_specs.items()}

    def parameter_bounds(self, dtype: torch.dtype = torch.float32) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{name: (low, high)}`` of every parameter, built once per dtype (the tensors are shared: read only)."""
        specs = tuple(self.parameter_specs.values())
        cache = self.__dict__.setdefault("_bounds_cache", {})
        key = (dtype, tuple(id(s) for s in specs))
        hit = cache.get(key)
        if hit is None or hit[0] != specs:
            if len(cache) > 8:
                cache.clear()
            hit = cache[key] = (specs, {spec.name: spec.bounds(dtype) for spec in specs})
        return dict(hit[1])

    @property
    def identity(self) -> str:
        """A stable string naming this device, the key of a method's per-device state.

        The ``name`` given to the constructor when there is one; a wrapper has the identity of the
        device inside it; otherwise the class name and a hash of the declared schema (input and
        output shapes, input range, every parameter's name, shape, range and unit), so the same
        device declared again, in another process, has the same identity (``id()`` would not).
        """
        name = getattr(self, "_identity", None)
        if name:
            return name
        inner = getattr(self, "inner", None)
        if isinstance(inner, PhysicalSystem):
            return inner.identity
        return f"{type(self).__name__}-{self.schema_hash()}"

    def schema_hash(self) -> str:
        """12 hex digits of a SHA-256 over the declared schema (see :attr:`identity`)."""
        def plain(v):
            return torch.as_tensor(v, dtype=torch.float64).reshape(-1).tolist()

        schema = [
            type(self).__qualname__, list(self.input_shape), list(self.output_shape),
            None if self.input_range is None else [float(v) for v in self.input_range],
            [[s.name, list(s.shape), plain(s.low), plain(s.high), s.unit] for s in self.parameter_specs.values()],
        ]
        return hashlib.sha256(repr(schema).encode()).hexdigest()[:12]

    @property
    def cost(self) -> Cost:
        """Everything measured on this device so far."""
        return Cost(self.queries, self.samples, self.device_seconds)

    def reset_counters(self) -> None:
        self.queries, self.samples, self.device_seconds = 0, 0, 0.0

    def state_dict(self) -> dict:
        """Counters and the noise generator's state: what an exact resume must restore.

        A ramp-limited device also records the setting it holds, so a resumed run ramps from there.
        """
        state = {
            "queries": self.queries,
            "samples": self.samples,
            "device_seconds": self.device_seconds,
            "clipped": self.guard.clipped,
            "generator": self.generator.get_state(),
        }
        if self.ramp_limited:
            state["setting"] = {n: v.clone() for n, v in self.setting.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.queries = int(state["queries"])
        self.samples = int(state["samples"])
        self.device_seconds = float(state["device_seconds"])
        self.guard.clipped = int(state["clipped"])
        self.generator.set_state(state["generator"])
        if "setting" in state and state["setting"] is not None:
            self.setting = {n: torch.as_tensor(state["setting"][n]).clone() for n in self.parameter_specs}

    # ----------------------------------------------------------------------------- contact
    def measure(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """Apply ``K`` settings to a batch of inputs and return what the instrument reads.

        ``params[name]`` is ``[K, *shape]`` (or ``shape`` alone for ``K = 1``); ``inputs`` is
        ``[B, *input_shape]`` (shared by all probes) or ``[K, B, *input_shape]``. Returns
        ``[K, B, *output_shape]``, detached. Counts ``K`` queries and ``K·B`` samples.
        """
        params, inputs, k, b = self._checked(params, inputs)
        try:
            with torch.no_grad():
                out = self.response(params, inputs)
                if self.noise.enabled:
                    out = self.noise.apply(out, self.generator)
        finally:  # the driver applies probes in order: it now holds the last one
            if params and k:
                self.setting = {n: v[-1].detach().clone() for n, v in params.items()}
        self._count(k, b)
        return self.checked_answer(out, (k, b, *self.output_shape), inputs.dtype)

    def checked_answer(self, out, expected: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A device's answer as a method may use it: a detached tensor of ``expected`` shape, finite,
        in the request's floating ``dtype`` (an answer of another float dtype — a driver answering
        float64 — is cast; an integer or complex answer is refused, naming its dtype).
        Anything else is a :class:`MeasurementError`."""
        who = type(self).__name__
        if not isinstance(out, torch.Tensor):
            try:
                out = torch.as_tensor(out)
            except (TypeError, ValueError, RuntimeError) as e:
                raise MeasurementError(f"{who} answered a {type(out).__name__}, not an array of numbers: {e}") from None
        if tuple(out.shape) != tuple(expected):
            raise MeasurementError(f"{who} answered shape {tuple(out.shape)}, expected {tuple(expected)}")
        if out.dtype != dtype:
            if not out.dtype.is_floating_point:
                raise MeasurementError(
                    f"{who} answered dtype {out.dtype}; a measurement must be a real floating-point array "
                    f"(the request was {dtype}): convert the driver's answer to {dtype}"
                )
            out = out.to(dtype if dtype.is_floating_point else torch.get_default_dtype())
        return require_finite(who, "answer", out.detach())

    def simulate(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """The noiseless response through autograd: only for the backpropagation oracle.

        Same shapes and range guard as :meth:`measure`; counted as queries too.
        """
        if not self.differentiable:
            raise TypeError(f"{type(self).__name__} is not a differentiable simulator; backpropagation cannot train it")
        params, inputs, k, b = self._checked(params, inputs)
        self._count(k, b)
        return self.response(params, inputs)

    @abc.abstractmethod
    def response(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """Noiseless response, ``params[name]: [K, *shape]``, ``inputs: [K, B, *input_shape]``."""

    # ----------------------------------------------------------------------------- helpers
    def _count(self, k: int, b: int) -> None:
        self.queries += k
        self.samples += k * b
        self.device_seconds += k * self.seconds_per_query

    def _checked(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor):
        unknown = set(params) - set(self.parameter_specs)
        if unknown:
            raise ShapeError(f"{type(self).__name__} has no parameter(s) {sorted(unknown)}; it has {list(self.parameter_specs)}")
        missing = set(self.parameter_specs) - set(params)
        if missing:
            raise ShapeError(f"{type(self).__name__}: setting for parameter(s) {sorted(missing)} missing")
        k = None
        batched: dict[str, torch.Tensor] = {}
        clipped_before = self.guard.clipped
        for name, spec in self.parameter_specs.items():
            value = torch.as_tensor(params[name])
            if tuple(value.shape) == spec.shape:
                value = value.unsqueeze(0)
            if tuple(value.shape[1:]) != spec.shape:
                raise ShapeError(
                    f"parameter {name!r}: expected shape {spec.shape} or [K, *{spec.shape}], got {tuple(value.shape)}"
                )
            if k is None:
                k = value.shape[0]
            elif value.shape[0] != k:
                raise ShapeError(f"parameter {name!r} has {value.shape[0]} probes, others have {k}")
            batched[name] = self.guard.check(spec, value)
        if batched and k and self.ramp_limited and self.checks_ramp_locally:
            first = {n: v[0] for n, v in batched.items()}
            far = any(
                spec.max_step is not None
                and first[n].numel() > 0
                and float((first[n].double() - self.setting[n].double()).abs().max()) > spec.max_step
                for n, spec in self.parameter_specs.items()
            )
            if far and self.can_ramp:
                self.ramp_to(first)  # every waypoint checked; then the probes themselves are checked below
            for name, spec in self.parameter_specs.items():
                check_command(spec, batched[name], previous=self.setting[name])
        inputs = torch.as_tensor(inputs)
        n_in = len(self.input_shape)
        if tuple(inputs.shape[-n_in:] if n_in else ()) != self.input_shape or inputs.dim() not in (n_in + 1, n_in + 2):
            raise ShapeError(
                f"{type(self).__name__} expects inputs [B, *{self.input_shape}] or [K, B, *{self.input_shape}], "
                f"got {tuple(inputs.shape)}"
            )
        if k is None:  # a device with no controllable parameters
            k = inputs.shape[0] if inputs.dim() == n_in + 2 else 1
        if inputs.dim() == n_in + 1:
            inputs = inputs.unsqueeze(0).expand(k, *inputs.shape)
        elif inputs.shape[0] != k:
            raise ShapeError(f"inputs carry {inputs.shape[0]} probes but parameters carry {k}")
        inputs = self.guard_inputs(inputs)
        if self.guard.clipped > clipped_before:
            self.warn_clipped(self.guard.clipped - clipped_before)
        return batched, inputs, k, inputs.shape[1]

    def warn_clipped(self, count: int) -> None:
        """Say, once per device, that its range guard moved settings onto a bound (never silently).

        The model's parameters then no longer match what the device received; keep them in range
        (``method.backward`` projects them, or :func:`physgrad.models.keep_in_range`). Later clips are
        counted in ``guard.clipped`` and logged at DEBUG level.
        """
        if getattr(self, "_clip_warned", False):
            log.debug("%s: range guard clipped %d more value(s) (%d in all)", type(self).__name__, count, self.guard.clipped)
            return
        self._clip_warned = True
        warnings.warn(
            f"{type(self).__name__}: the range guard clipped {count} value(s) (settings or inputs) into the safe range, "
            "so the device received something other than what was asked. Keep device parameters in range "
            "(method.backward projects them; physgrad.models.keep_in_range(optimizer, model) after each step). "
            f"This warning is shown once per device; the count continues in guard.clipped.",
            RuntimeWarning,
            stacklevel=3,
        )

    def input_bounds(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-element input limits ``(low, high)`` of shape ``input_shape`` (``None``: unbounded).

        The default comes from ``input_range``; a device with per-electrode limits overrides it.
        The device server publishes these limits and refuses inputs outside them.
        """
        if self.input_range is None:
            return None
        return (torch.full(self.input_shape, float(self.input_range[0]), dtype=dtype),
                torch.full(self.input_shape, float(self.input_range[1]), dtype=dtype))

    def guard_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Inputs as the device may receive them: inside ``input_range`` (clip or refuse), never NaN/inf."""
        if self.input_range is not None:
            low, high = (torch.tensor(v, dtype=inputs.dtype) for v in self.input_range)
            return self.guard("inputs", inputs, low, high)
        if not torch.isfinite(inputs).all():
            raise RangeError("inputs: non-finite value(s) (NaN/inf) refused; nothing was sent to the device")
        return inputs
