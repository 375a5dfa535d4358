"""QCoDeS instrument parameters as a physgrad device (the ``lab`` extra).

QCoDeS (https://microsoft.github.io/Qcodes/) is the lab-automation stack many groups already drive
their devices with: instruments expose *parameters* with units, validators (safe ranges) and ramp
limits (``step``: the largest change per hardware call, ``inter_delay``: the wait between calls).
A :class:`QCoDeSSystem` is a :class:`~physgrad.systems.base.PhysicalSystem` made of such
parameters, so one declaration in the lab's station serves QCoDeS and physgrad alike:

* **controls** (the trainable settings): settable parameters, each with a *bounded* ``Numbers``
  validator; the bounds become the :class:`~physgrad.systems.base.ParameterSpec` safe range, the
  parameter's unit its unit, ``step``/``inter_delay`` its ramp limit (``max_step``,
  ``step_delay_s``). A parameter without finite bounds is refused when the system is built.
* **inputs** (the data): settable parameters, bounded the same way.
* **outputs**: gettable parameters (a DMM's reading); scalars or fixed-shape arrays.

physgrad's own check stays in front of QCoDeS's: every setting of a batch passes the range guard
(``guard="refuse"`` by default: nothing is sent when any value of the batch is out of range, NaN
or inf) *before* the first value reaches an instrument, and a change larger than ``max_step`` is
applied as a ramp of waypoints ``max_step`` apart, ``step_delay_s`` apart in time, each waypoint
checked again. A batch of ``K`` probes is measured as an instrument would: one setting after
another, every data point's inputs set, ``settle_s`` waited, the outputs read. The wall-clock time
of all of it is the device time in the cost (``device_seconds``).

A parameter that raises when read, or reads NaN/inf, is a
:class:`~physgrad.errors.MeasurementError`: the query is counted (it was applied), the failure is
counted in ``failed_reads``, and the answers read before it travel on the exception
(``partial_answers``, NaN where nothing was read) so a recorder can keep them.

:class:`QCoDeSWaveformSystem` is the time-domain variant for homodyne gradient extraction: the
controls and inputs are AWG-like settable *arrays* (one waveform per channel, bounded by an
``Arrays(min_value=..., max_value=...)`` validator) and the output a digitizer-like
``ParameterWithSetpoints`` recorded at the digitizer's sample rate; it is a
:class:`~physgrad.systems.wrappers.timedomain.TimeDomainDevice`, so HGE (and anything else that
calls ``measure_waveform``) runs on it unchanged.

:func:`system_from_station` builds either from a QCoDeS station configuration file.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ...errors import ConfigError, MeasurementError, RangeError, ShapeError
from ..base import ParameterSpec, PhysicalSystem, check_command
from ..wrappers.timedomain import TimeDomainDevice

log = logging.getLogger(__name__)

MIN_QCODES = (0, 50)
INSTALL_HINT = "install the lab extra: pip install 'physgrad[lab]' (QCoDeS >= 0.50)"


# ===================================================================================== qcodes
def require_qcodes():
    """The ``qcodes`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import qcodes
    except ImportError as exc:  # pragma: no cover - the test extra installs qcodes
        raise ConfigError(f"QCoDeS is not installed; {INSTALL_HINT}") from exc
    parts = []
    for piece in str(qcodes.__version__).split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    if tuple(parts) < MIN_QCODES:
        raise ConfigError(f"QCoDeS {qcodes.__version__} is too old; {INSTALL_HINT}")
    return qcodes


def resolve_parameter(spec: Any, station: Any = None):
    """A QCoDeS parameter from itself or a dotted name ``"instrument.channel.parameter"`` in ``station``.

    Instruments named in the station's configuration that are not loaded yet are loaded.
    """
    require_qcodes()
    from qcodes.parameters import ParameterBase

    if isinstance(spec, ParameterBase):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"a QCoDeS parameter or a dotted name like 'dac.ch1' is needed, got {spec!r}")
    name = spec.strip()
    head, _, rest = name.partition(".")
    if not rest:
        raise ConfigError(f"{name!r} names no parameter: write instrument.parameter, e.g. 'dac.ch1' or 'dmm.v'")
    obj = _instrument(head, station)
    for part in rest.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{name!r}: {type(obj).__name__} {getattr(obj, 'full_name', obj)!r} has no {part!r}") from None
    if not isinstance(obj, ParameterBase):
        raise ConfigError(f"{name!r} is a {type(obj).__name__}, not a QCoDeS parameter")
    return obj


def _instrument(name: str, station: Any):
    from qcodes.instrument import Instrument

    if station is not None:
        if name in station.components:
            return station.components[name]
        config = getattr(station, "config", None) or {}
        if name in (config.get("instruments") or {}):
            return station.load_instrument(name)
        raise ConfigError(
            f"the station has no instrument {name!r}; it has {sorted(set(station.components) | set(config.get('instruments') or {}))}"
        )
    try:
        return Instrument.find_instrument(name)
    except KeyError:
        raise ConfigError(f"no QCoDeS instrument named {name!r} exists (create it, or give a station)") from None


def _limits(param, what: str) -> tuple[float, float]:
    """The finite ``(low, high)`` of a parameter's validators, or a :class:`ConfigError`."""
    lows, highs = [], []
    for v in getattr(param, "validators", ()) or ((param.vals,) if param.vals is not None else ()):
        lo, hi = getattr(v, "min_value", None), getattr(v, "max_value", None)
        if lo is not None:
            lows.append(float(lo))
        if hi is not None:
            highs.append(float(hi))
    low = max(lows) if lows else -math.inf
    high = min(highs) if highs else math.inf
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(
            f"{what} {param.full_name!r}: its validator {param.vals!r} has no finite bounds (low={low}, high={high}). "
            "physgrad drives only parameters with a safe range: give it vals=Numbers(min_value=..., max_value=...) "
            "(Arrays(min_value=..., max_value=...) for a waveform), or 'limits: [lo, hi]' in the station file"
        )
    if not low < high:
        raise ConfigError(f"{what} {param.full_name!r}: validator bounds [{low}, {high}] are not a range")
    return low, high


def _float32_inside(low: float, high: float) -> tuple[float, float]:
    """The widest float32 range inside ``[low, high]`` (float32 tensors then never leave the validator)."""
    lo32, hi32 = np.float32(low), np.float32(high)
    if float(lo32) < low:
        lo32 = np.nextafter(lo32, np.float32(np.inf))
    if float(hi32) > high:
        hi32 = np.nextafter(hi32, np.float32(-np.inf))
    return float(lo32), float(hi32)


def _unit(params: Sequence) -> str:
    units = sorted({p.unit or "" for p in params})
    return units[0] if len(units) == 1 else ",".join(units)


def _ramp(params: Sequence, max_step: float | None, step_delay_s: float | None, what: str) -> tuple[float | None, float]:
    """The ramp limit declared by ``params`` (smallest ``step``, longest ``inter_delay``), checked against overrides."""
    steps = [float(p.step) for p in params if getattr(p, "step", None)]
    delays = [float(getattr(p, "inter_delay", 0.0) or 0.0) for p in params]
    inst_step = min(steps) if steps else None
    inst_delay = max(delays) if delays else 0.0
    if max_step is not None:
        if not (max_step > 0 and math.isfinite(max_step)):
            raise ConfigError(f"{what}: max_step must be a finite number > 0, got {max_step!r}")
        if inst_step is not None and max_step > inst_step * (1 + 1e-12):
            raise ConfigError(
                f"{what}: max_step={max_step:g} ramps faster than the instrument allows (its step is {inst_step:g}); "
                "refused. Use a max_step <= the parameters' step"
            )
    if step_delay_s is not None:
        if not (step_delay_s >= 0 and math.isfinite(step_delay_s)):
            raise ConfigError(f"{what}: step_delay_s must be a finite number >= 0, got {step_delay_s!r}")
        if step_delay_s < inst_delay * (1 - 1e-12):
            raise ConfigError(
                f"{what}: step_delay_s={step_delay_s:g} s ramps faster than the instrument allows (its inter_delay is "
                f"{inst_delay:g} s); refused. Use a step_delay_s >= the parameters' inter_delay"
            )
    step = max_step if max_step is not None else inst_step
    delay = step_delay_s if step_delay_s is not None else inst_delay
    return step, delay


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)


class _Channels:
    """Settable QCoDeS parameters presented as one vector parameter (bounds, unit, ramp)."""

    def __init__(self, params: Sequence, what: str, station: Any = None, *, arrays: bool = False) -> None:
        self.params = [resolve_parameter(p, station) for p in params]
        self.what = what
        names = [p.full_name for p in self.params]
        if len(set(names)) != len(names):
            raise ConfigError(f"{what}: a parameter appears twice in {names}")
        for p in self.params:
            if not p.settable:
                raise ConfigError(f"{what} {p.full_name!r} is not settable")
            if arrays and getattr(p.vals, "shape", None) is None and not hasattr(p.vals, "min_value"):
                raise ConfigError(f"{what} {p.full_name!r} needs an Arrays(min_value=..., max_value=...) validator")
        lims = [_float32_inside(*_limits(p, what)) for p in self.params]
        self.low = torch.tensor([lo for lo, _ in lims], dtype=torch.float32)
        self.high = torch.tensor([hi for _, hi in lims], dtype=torch.float32)
        self.names = names
        self.unit = _unit(self.params)

    def __len__(self) -> int:
        return len(self.params)


# ===================================================================================== static
class QCoDeSSystem(PhysicalSystem):
    """A device made of QCoDeS parameters (see the module docstring).

    Parameters
    ----------
    controls:
        Settable parameters (objects, or dotted names with ``station``) with bounded validators:
        the trainable parameter ``name`` of shape ``[len(controls)]``, per-element safe range.
    inputs:
        Settable, bounded parameters that carry one data point's values (``input_shape =
        [len(inputs)]``; may be empty: then every data point is a repeat reading).
    outputs:
        Gettable parameters read after each data point (``output_shape = [total size]``).
    settle_s:
        Wait after a setting (controls or inputs) before reading (also ``ParameterSpec.settle_s``).
    max_step, step_delay_s:
        A ramp limit slower than the parameters' own (``step``/``inter_delay``); a faster one is
        refused with :class:`ConfigError`. Default: the parameters' (smallest ``step``, longest
        ``inter_delay``).
    guard:
        ``"refuse"`` (default: an out-of-range batch is refused whole, nothing sent) or ``"clip"``.
    station:
        A QCoDeS ``Station`` in which dotted names are looked up.
    name:
        Name of the vector control parameter (default ``"controls"``, as the DNPU's).
    clock, sleep:
        Time source and wait (wall clock by default).
    """

    def __init__(
        self,
        controls: Sequence,
        inputs: Sequence = (),
        outputs: Sequence = (),
        *,
        settle_s: float = 0.0,
        max_step: float | None = None,
        step_delay_s: float | None = None,
        guard: str = "refuse",
        station: Any = None,
        name: str = "controls",
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
        seed: int = 0,
    ) -> None:
        require_qcodes()
        if not controls:
            raise ConfigError("a QCoDeSSystem needs at least one control parameter")
        if not outputs:
            raise ConfigError("a QCoDeSSystem needs at least one output parameter to read")
        if not (settle_s >= 0 and math.isfinite(settle_s)):
            raise ConfigError(f"settle_s must be a finite number >= 0, got {settle_s!r}")
        self.controls = _Channels(controls, "control", station)
        self.inputs = _Channels(inputs, "input", station) if inputs else None
        self.outputs = [resolve_parameter(p, station) for p in outputs]
        sizes = []
        for p in self.outputs:
            if not p.gettable:
                raise ConfigError(f"output {p.full_name!r} is not gettable")
            shape = getattr(p.vals, "shape", None) if p.vals is not None else None
            sizes.append(int(np.prod(shape)) if shape else 1)
        self.output_sizes = sizes
        self.settle_s = float(settle_s)
        step, delay = _ramp(self.controls.params, max_step, step_delay_s, "controls")
        in_step, in_delay = (None, 0.0)
        if self.inputs is not None:
            in_step, in_delay = _ramp(self.inputs.params, None, None, "inputs")
        self.input_ramp = (in_step, in_delay)
        self.control_name = name
        centre = (self.controls.low + self.controls.high) / 2
        spec = ParameterSpec(name, (len(self.controls),), self.controls.low, self.controls.high, default=centre,
                             unit=self.controls.unit, max_step=step, step_delay_s=delay, settle_s=self.settle_s)
        n_in = len(self.inputs) if self.inputs is not None else 0
        super().__init__((n_in,), (sum(sizes),), [spec], guard=guard, seed=seed)
        self.clock, self.sleep = clock, sleep
        self.failed_reads = 0
        self.wall_seconds = 0.0
        self._applied: dict[str, torch.Tensor | None] = {"controls": None, "inputs": None}

    # ----------------------------------------------------------------------------- declared
    @property
    def identity(self) -> str:
        """Stable identity: the QCoDeS parameters it is made of."""
        names = self.controls.names + (self.inputs.names if self.inputs else []) + [p.full_name for p in self.outputs]
        return "qcodes:" + ",".join(names)

    @property
    def record_names(self) -> dict:
        """Column names and units for a recorder (one per element)."""
        out_names = []
        for p, size in zip(self.outputs, self.output_sizes):
            out_names += [p.full_name] if size == 1 else [f"{p.full_name}_{i}" for i in range(size)]
        return {
            "parameters": {self.control_name: self.controls.names},
            "parameter_units": {self.control_name: [p.unit for p in self.controls.params]},
            "inputs": self.inputs.names if self.inputs else [],
            "input_units": [p.unit for p in self.inputs.params] if self.inputs else [],
            "outputs": out_names,
            "output_units": sum(([p.unit] * s for p, s in zip(self.outputs, self.output_sizes)), []),
        }

    def input_bounds(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inputs is None:
            return torch.zeros(0, dtype=dtype), torch.zeros(0, dtype=dtype)
        return self.inputs.low.to(dtype), self.inputs.high.to(dtype)

    def _checked(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor):
        params, inputs, k, b = super()._checked(params, inputs)
        if self.inputs is not None:
            low, high = self.input_bounds(inputs.dtype)
            inputs = self.guard("inputs", inputs, low, high)
        return params, inputs, k, b

    def response(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        raise TypeError("a QCoDeSSystem answers only measure(): its response is the instrument's")

    # ----------------------------------------------------------------------------- contact
    checks_ramp_locally = False  # measure() ramps itself from where the instrument stands, each waypoint checked

    def apply_settings(self, settings: Mapping[str, torch.Tensor]) -> None:
        """Put settings on the controls without measuring (the hook :meth:`ramp` uses), one after another,
        each reached in waypoints within ``max_step`` (every waypoint through the command check)."""
        spec = self.parameter_specs[self.control_name]
        rows = torch.as_tensor(settings[self.control_name]).detach().reshape(-1, *spec.shape)
        for row in rows:
            self._apply("controls", self.controls, row.reshape(-1), spec.max_step, spec.step_delay_s)
            self.setting = {self.control_name: row.to(torch.float32).clone()}

    def measure(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """Apply ``K`` settings one after another; for each, every data point's inputs; read the outputs.

        Everything is checked before the first value is sent. Counts a query when its setting is
        applied and a sample per data point read; device seconds are the wall-clock time spent.
        """
        params, inputs, k, b = self._checked(params, inputs)
        controls = params[self.control_name].detach()
        out = torch.full((k, b, *self.output_shape), math.nan, dtype=torch.float32)
        start = self.clock()
        applied = 0
        try:
            for i in range(k):
                self._apply("controls", self.controls, controls[i], self.parameter_specs[self.control_name].max_step,
                            self.parameter_specs[self.control_name].step_delay_s)
                self.setting = {self.control_name: controls[i].to(torch.float32).clone()}
                self.queries += 1
                applied += 1
                for j in range(b):
                    if self.inputs is not None:
                        self._apply("inputs", self.inputs, inputs[i, j].reshape(-1), *self.input_ramp)
                    if self.settle_s:
                        self.sleep(self.settle_s)
                    self.samples += 1
                    out[i, j] = self._read(i, j)
        except MeasurementError as exc:
            exc.partial_answers = out[:applied]  # type: ignore[attr-defined]
            raise
        finally:
            elapsed = self.clock() - start
            self.device_seconds += elapsed
            self.wall_seconds += elapsed
        return out

    def _read(self, i: int, j: int) -> torch.Tensor:
        values = []
        for p, size in zip(self.outputs, self.output_sizes):
            try:
                v = p.get()
            except Exception as exc:  # noqa: BLE001 - any instrument failure is a measurement error
                self.failed_reads += 1
                raise MeasurementError(
                    f"reading {p.full_name!r} failed at probe {i}, data point {j}: {type(exc).__name__}: {exc}. "
                    "The setting was applied and is counted; no answer for it"
                ) from exc
            arr = np.asarray(v, dtype=np.float64).reshape(-1)
            if arr.size != size:
                self.failed_reads += 1
                raise MeasurementError(f"{p.full_name!r} read {arr.size} value(s), expected {size}")
            if not np.isfinite(arr).all():
                self.failed_reads += 1
                raise MeasurementError(f"{p.full_name!r} read a non-finite value ({arr.tolist()}) at probe {i}, data point {j}")
            values.append(arr)
        return torch.from_numpy(np.concatenate(values)).to(torch.float32)

    def _apply(self, key: str, channels: _Channels, target: torch.Tensor, max_step: float | None, delay: float) -> None:
        """Move ``channels`` to ``target``: straight waypoints at most ``max_step`` apart, ``delay`` apart."""
        previous = self._applied[key]
        if previous is None:
            previous = self._current(channels)
        target = target.to(torch.float64)
        if previous is not None and max_step is not None:
            jump = float((target - previous).abs().max()) if target.numel() else 0.0
            # waypoints a hair closer than max_step, so float32 rounding never makes one a step too long
            n = max(1, math.ceil(jump / (max_step * (1 - 1e-4)) - 1e-9))
        else:
            n = 1
        spec = self.parameter_specs[self.control_name] if key == "controls" else None
        last_time = None
        for w in range(1, n + 1):
            point = target if (w == n or previous is None) else previous + (target - previous) * (w / n)
            if spec is not None:
                self._check_waypoint(spec, point, previous if w == 1 else prev_point)
            if last_time is not None and delay:
                wait = delay - (self.clock() - last_time)
                if wait > 0:
                    self.sleep(wait)
            for p, value in zip(channels.params, point.tolist()):
                try:
                    p.set(float(value))
                except (ValueError, TypeError) as exc:
                    raise RangeError(f"{channels.what} {p.full_name!r} refused {value!r}: {exc}") from exc
                except Exception as exc:  # noqa: BLE001
                    raise MeasurementError(f"setting {p.full_name!r} to {value!r} failed: {type(exc).__name__}: {exc}") from exc
            last_time = self.clock()
            prev_point = point
        self._applied[key] = target.clone()

    @staticmethod
    def _check_waypoint(spec: ParameterSpec, point: torch.Tensor, previous: torch.Tensor | None) -> None:
        """The project's one command check on a ramp waypoint (range, finiteness, ``max_step``)."""
        check_command(spec, point.to(torch.float32), None if previous is None else previous.to(torch.float32))

    @staticmethod
    def _current(channels: _Channels) -> torch.Tensor | None:
        """Where the instrument stands now (its cache, else a read), or None when unknown."""
        values = []
        for p in channels.params:
            v = p.get_latest() if hasattr(p, "get_latest") else None
            if v is None and p.gettable:
                try:
                    v = p.get()
                except Exception:  # noqa: BLE001 - unknown start: no ramp from it
                    v = None
            if v is None:
                return None
            values.append(float(v))
        return torch.tensor(values, dtype=torch.float64)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(failed_reads=self.failed_reads, wall_seconds=self.wall_seconds)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.failed_reads = int(state.get("failed_reads", 0))
        self.wall_seconds = float(state.get("wall_seconds", 0.0))

    def __repr__(self) -> str:
        ins = self.inputs.names if self.inputs else []
        return f"QCoDeSSystem(controls={self.controls.names}, inputs={ins}, outputs={[p.full_name for p in self.outputs]})"


# ===================================================================================== waveform
class _Declared(PhysicalSystem):
    """Declarations only (specs, per-element input bounds, the check): what TimeDomainDevice wraps.

    Its ``max_step`` is the AWG's slew per sample, which :class:`QCoDeSWaveformSystem` checks on every
    waveform it plays (the ramp from the last setting included): the limit is honoured in the measurement.
    """

    ramps_within_measure = True
    checks_ramp_locally = False

    def __init__(self, input_shape, output_shape, specs, in_low, in_high, guard) -> None:
        super().__init__(input_shape, output_shape, specs, guard=guard)
        self.in_low, self.in_high = in_low, in_high

    def input_bounds(self, dtype: torch.dtype = torch.float32):
        return self.in_low.to(dtype), self.in_high.to(dtype)

    def _checked(self, params, inputs):
        params, inputs, k, b = super()._checked(params, inputs)
        if self.in_low.numel():
            inputs = self.guard("inputs", inputs, *self.input_bounds(inputs.dtype))
        return params, inputs, k, b

    def response(self, params, inputs):
        raise TypeError("the waveform system's response is the instruments'")


class QCoDeSWaveformSystem(TimeDomainDevice):
    """AWG channels and a digitizer as a time-domain device (see the module docstring).

    Parameters
    ----------
    controls, inputs:
        Settable array parameters (one per channel, an ``Arrays`` validator with finite
        ``min_value``/``max_value``). Each is set to a ``[records, points]`` array when the output
        records several data points per acquisition (the digitizer has a ``records`` parameter),
        else to ``[points]`` once per data point.
    output:
        A gettable ``ParameterWithSetpoints`` (or a list of them) whose value is ``[records, points]``
        or ``[points]``: the digitizer's trace.
    sample_rate:
        The parameter (or number) giving the sample rate in Hz (default: the output instrument's
        ``sample_rate``).
    points, records:
        Parameters the system sets to the waveform length and the number of data points before
        an acquisition (default: the output instrument's ``n_points`` and ``n_records``, if any).
    max_slew:
        Fastest allowed change (units/s) of a control waveform; default: the smallest
        ``metadata["max_slew"]`` of the control parameters, or none. A waveform (or the jump from
        the last setting over ``dac_ramp_s``) faster than it is refused before anything is played.
    settle_s, bandwidth_hz, clip, dac_ramp_s, sample_s:
        As :class:`TimeDomainDevice` declares them (HGE's plan and checks read them); the
        instruments do the actual settling, filtering and ramping.
    guard, station, name, clock:
        As :class:`QCoDeSSystem`.
    """

    # _check_slew checks every waveform against the slew limit (max_step per sample), the DAC ramp from the last
    # setting included; the static per-setting ramp check does not apply to waveforms
    ramps_within_measure = True
    checks_ramp_locally = False

    def __init__(
        self,
        controls: Sequence,
        inputs: Sequence = (),
        output: Any = None,
        *,
        sample_rate: Any = None,
        points: Any = None,
        records: Any = None,
        max_slew: float | None = None,
        settle_s: float = 0.0,
        bandwidth_hz: float | None = None,
        clip: tuple[float, float] | None = None,
        dac_ramp_s: float = 0.0,
        sample_s: float = 0.01,
        guard: str = "refuse",
        station: Any = None,
        name: str = "controls",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        require_qcodes()
        if not controls:
            raise ConfigError("a QCoDeSWaveformSystem needs at least one control waveform parameter")
        if output is None:
            raise ConfigError("a QCoDeSWaveformSystem needs an output (a digitizer's ParameterWithSetpoints)")
        self.controls = _Channels(controls, "control waveform", station, arrays=True)
        self.inputs = _Channels(inputs, "input waveform", station, arrays=True) if inputs else None
        outputs = output if isinstance(output, (list, tuple)) else [output]
        self.outputs = [resolve_parameter(p, station) for p in outputs]
        for p in self.outputs:
            if not p.gettable:
                raise ConfigError(f"output {p.full_name!r} is not gettable")
        owner = getattr(self.outputs[0], "instrument", None)
        self.rate_param = self._sibling(sample_rate, owner, "sample_rate", station)
        if self.rate_param is None:
            raise ConfigError(f"output {self.outputs[0].full_name!r}: give sample_rate= (its instrument has no 'sample_rate')")
        fs = float(self.rate_param.get()) if not isinstance(self.rate_param, (int, float)) else float(self.rate_param)
        self.points_param = self._sibling(points, owner, "n_points", station)
        self.records_param = self._sibling(records, owner, "n_records", station)
        slews = [float(p.metadata["max_slew"]) for p in self.controls.params if "max_slew" in (p.metadata or {})]
        if max_slew is not None:
            if not (max_slew > 0 and math.isfinite(max_slew)):
                raise ConfigError(f"max_slew must be a finite number > 0, got {max_slew!r}")
            if slews and max_slew > min(slews) * (1 + 1e-12):
                raise ConfigError(
                    f"max_slew={max_slew:g}/s is faster than the instrument allows ({min(slews):g}/s); refused"
                )
        self.max_slew = max_slew if max_slew is not None else (min(slews) if slews else None)
        self.control_name = name
        centre = (self.controls.low + self.controls.high) / 2
        spec = ParameterSpec(name, (len(self.controls),), self.controls.low, self.controls.high, default=centre,
                             unit=self.controls.unit, max_step=None if self.max_slew is None else self.max_slew / fs,
                             step_delay_s=1.0 / fs, settle_s=float(settle_s))
        n_in = len(self.inputs) if self.inputs is not None else 0
        in_low = self.inputs.low if self.inputs is not None else torch.zeros(0)
        in_high = self.inputs.high if self.inputs is not None else torch.zeros(0)
        declared = _Declared((n_in,), (len(self.outputs),), [spec], in_low, in_high, guard)
        super().__init__(declared, fs, bandwidth_hz=bandwidth_hz, clip=clip, dac_ramp_s=dac_ramp_s,
                         settle_s=settle_s, sample_s=sample_s)
        self.clock = clock
        self.failed_reads = 0
        self.wall_seconds = 0.0

    @staticmethod
    def _sibling(given, owner, default_name: str, station):
        if given is not None:
            return given if isinstance(given, (int, float)) else resolve_parameter(given, station)
        return getattr(owner, default_name, None) if owner is not None else None

    # ----------------------------------------------------------------------------- declared
    @property
    def identity(self) -> str:
        names = self.controls.names + (self.inputs.names if self.inputs else []) + [p.full_name for p in self.outputs]
        return "qcodes-waveform:" + ",".join(names)

    @property
    def record_names(self) -> dict:
        return {
            "parameters": {self.control_name: self.controls.names},
            "parameter_units": {self.control_name: [p.unit for p in self.controls.params]},
            "inputs": self.inputs.names if self.inputs else [],
            "input_units": [p.unit for p in self.inputs.params] if self.inputs else [],
            "outputs": [p.full_name for p in self.outputs],
            "output_units": [p.unit for p in self.outputs],
        }

    # ----------------------------------------------------------------------------- contact
    def measure_waveform(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """Play control waveforms ``[N, C]`` (and held ``[B, n_in]`` or ``[N, B, n_in]`` inputs); return ``[N, B, out]``.

        Checked whole before anything is set (range, finiteness, slew). Counts 1 query, ``B``
        samples and ``B·(N + ramp)/fs`` device seconds (the signal played, as
        :class:`TimeDomainDevice` counts it); the wall-clock time is in ``wall_seconds``.
        """
        if not params:
            raise ShapeError("measure_waveform needs at least one control waveform (it fixes N)")
        n = next(iter(torch.as_tensor(v).shape[0] for v in params.values()))
        inputs = torch.as_tensor(inputs)
        n_in = len(self.input_shape)
        if inputs.dim() == n_in + 1:
            inputs = inputs.unsqueeze(0).expand(n, *inputs.shape)
        elif inputs.dim() != n_in + 2 or inputs.shape[0] != n:
            raise ShapeError(f"inputs must be [B, *{self.input_shape}] or [N={n}, B, *{self.input_shape}], got {tuple(inputs.shape)}")
        params, inputs, k, b = self._checked(params, inputs)
        if k != n:
            raise ShapeError(f"control waveforms have different lengths ({k} vs {n})")
        waves = params[self.control_name].detach()
        self._check_slew(waves)
        answer = self._play(waves, inputs)
        r = self.ramp_samples  # from the power-up defaults before the first waveform too, as TimeDomainDevice counts
        self._last = {self.control_name: waves[-1].clone()}
        self.queries += 1
        self.samples += b
        self.device_seconds += b * (n + r) / self.fs
        return answer

    def measure(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """In waveform mode a waveform; otherwise a static read-out: per setting, hold it, wait
        ``settle_s``, average ``sample_s`` of the digitizer's trace (1 query per setting)."""
        if self._waveform_mode:
            return self.measure_waveform(params, inputs)
        params, inputs, k, b = self._checked(params, inputs)
        settle = int(math.ceil(self.settle_s * self.fs - 1e-9))
        hold = settle + max(1, int(round(self.sample_s * self.fs)))
        outs = []
        for i in range(k):
            waves = params[self.control_name][i].expand(hold, -1)
            self._check_slew(waves)
            x = inputs[i].unsqueeze(0).expand(hold, *inputs[i].shape)
            y = self._play(waves, x)
            r = self.ramp_samples  # from the power-up defaults before the first waveform too, as TimeDomainDevice counts
            self._last = {self.control_name: waves[-1].clone()}
            self.queries += 1
            self.samples += b
            self.device_seconds += b * (hold + r) / self.fs
            outs.append(y[settle:].to(torch.float64).mean(0).to(y.dtype))
        return torch.stack(outs)

    def _check_slew(self, waves: torch.Tensor) -> None:
        spec = self.parameter_specs[self.control_name]
        if spec.max_step is None:
            return
        w = waves.to(torch.float64)
        worst = float(w.diff(dim=0).abs().max()) if w.shape[0] > 1 else 0.0
        where = "within the waveform"
        last = self._last if self._last is not None else self.initial_parameters()  # power-up: the defaults
        r = max(1, self.ramp_samples)
        jump = float((w[0] - last[self.control_name].to(torch.float64)).abs().max()) / r
        if jump > worst:
            worst, where = jump, f"on the ramp from the last setting ({r} sample(s))"
        if worst > spec.max_step * (1 + 1e-6):
            raise RangeError(
                f"control waveform changes by {worst:.4g} {spec.unit} per sample {where}: faster than the instrument's "
                f"ramp limit ({self.max_slew:g} {spec.unit}/s = {spec.max_step:.4g} per sample at {self.fs:g} Hz); "
                "refused, nothing was played"
            )

    def _play(self, waves: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Set the waveforms, acquire, return ``[N, B, n_out]`` (float32)."""
        n, b = inputs.shape[0], inputs.shape[1]
        start = self.clock()
        try:
            if self.points_param is not None:
                self.points_param.set(int(n))
            if self.records_param is not None:
                self.records_param.set(int(b))
                self._set_waves(waves, inputs, None)
                traces = [self._get(p, (b, n)) for p in self.outputs]  # each [B, N]
                y = np.stack(traces, axis=-1).transpose(1, 0, 2)  # [N, B, out]
            else:
                per = []
                for j in range(b):
                    self._set_waves(waves, inputs, j)
                    per.append(np.stack([self._get(p, (n,)) for p in self.outputs], axis=-1))  # [N, out]
                y = np.stack(per, axis=1)
        finally:
            self.wall_seconds += self.clock() - start
        out = torch.from_numpy(np.ascontiguousarray(y)).to(torch.float32)
        if self.clip is not None:
            lo, hi = self.clip
            self._clipped_samples += int(((out <= lo) | (out >= hi)).sum())  # the simulator-side count (HGE reads the samples)
        return out

    def _set_waves(self, waves: torch.Tensor, inputs: torch.Tensor, record: int | None) -> None:
        n, b = inputs.shape[0], inputs.shape[1]
        for c, p in enumerate(self.controls.params):
            w = waves[:, c].to(torch.float64).numpy()
            self._set(p, np.ascontiguousarray(np.broadcast_to(w, (b, n))) if record is None else w)
        if self.inputs is not None:
            x = inputs.reshape(n, b, -1).to(torch.float64).numpy()
            for c, p in enumerate(self.inputs.params):
                self._set(p, np.ascontiguousarray(x[:, :, c].T) if record is None else np.ascontiguousarray(x[:, record, c]))

    @staticmethod
    def _set(p, value) -> None:
        try:
            p.set(value)
        except (ValueError, TypeError) as exc:
            raise RangeError(f"{p.full_name!r} refused the waveform: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            raise MeasurementError(f"setting {p.full_name!r} failed: {type(exc).__name__}: {exc}") from exc

    def _get(self, p, shape: tuple[int, ...]) -> np.ndarray:
        try:
            v = np.asarray(p.get(), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001
            self.failed_reads += 1
            raise MeasurementError(f"acquiring {p.full_name!r} failed: {type(exc).__name__}: {exc}") from exc
        if v.shape != shape:
            self.failed_reads += 1
            raise MeasurementError(f"{p.full_name!r} returned shape {v.shape}, expected {shape}")
        if not np.isfinite(v).all():
            self.failed_reads += 1
            raise MeasurementError(f"{p.full_name!r} returned {int((~np.isfinite(v)).sum())} non-finite sample(s)")
        return v

    def __repr__(self) -> str:
        return (f"QCoDeSWaveformSystem(controls={self.controls.names}, inputs={self.inputs.names if self.inputs else []}, "
                f"output={[p.full_name for p in self.outputs]}, fs={self.fs:g} Hz)")


# ===================================================================================== station
def system_from_station(
    path: str | Path | Any,
    controls: Sequence[str],
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    *,
    waveform: bool = False,
    **kwargs,
) -> QCoDeSSystem | QCoDeSWaveformSystem:
    """A device from a QCoDeS station configuration (YAML) and dotted parameter names.

    ``path`` is the station file (or a ready ``Station``). Only the instruments the names refer
    to are loaded. ``waveform=True`` builds a :class:`QCoDeSWaveformSystem` (one output: the
    digitizer trace); ``kwargs`` go to the system (``settle_s``, ``max_step``, ...).

    >>> system_from_station("station.yaml", ["dac.ch1", "dac.ch2"], ["dac.ch6"], ["dmm.v"], settle_s=0.01)  # doctest: +SKIP
    """
    require_qcodes()
    from qcodes.station import Station

    if isinstance(path, Station):
        station = path
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"station file {path} not found")
        station = Station(config_file=str(path))
    controls, inputs, outputs = _names(controls), _names(inputs), _names(outputs)
    if waveform:
        if len(outputs) != 1:
            raise ConfigError(f"a waveform system reads one digitizer trace; got outputs {outputs}")
        system = QCoDeSWaveformSystem(controls, inputs, outputs[0], station=station, **kwargs)
    else:
        system = QCoDeSSystem(controls, inputs, outputs, station=station, **kwargs)
    system.station = station
    return system


def _names(value) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [v for v in value]


def add_station_arguments(parser) -> None:
    """The ``--station/--controls/--inputs/--outputs/--settle-s/--record`` options of ``physgrad train``.

    Adding them imports nothing from QCoDeS; only ``--station`` does.
    """
    group = parser.add_argument_group("lab instruments (QCoDeS; pip install 'physgrad[lab]')")
    group.add_argument("--station", default=None, help="QCoDeS station file (YAML): train the instruments it names")
    group.add_argument("--controls", default="", help="comma-separated control parameters, e.g. dac.ch1,dac.ch2")
    group.add_argument("--inputs", default="", help="comma-separated data-input parameters, e.g. dac.ch4,dac.ch5")
    group.add_argument("--outputs", default="", help="comma-separated output parameters, e.g. dmm.v")
    group.add_argument("--settle-s", type=float, default=0.0, help="wait after each setting before reading (s)")
    group.add_argument("--guard", choices=("refuse", "clip"), default="refuse",
                       help="a setting or input outside the validators: refuse the batch (default) or clip it")
    group.add_argument("--record", default=None,
                       help="folder of a QCoDeS database: record every setting and answer of the training there")
    group.add_argument("--experiment", default=None, help="QCoDeS experiment name of the record (default: the run's label)")
    group.add_argument("--sample", default=None, help="QCoDeS sample name of the record (default: the station file's name)")


def system_from_args(args) -> QCoDeSSystem | None:
    """The station system the options of :func:`add_station_arguments` describe (``None`` without ``--station``)."""
    if not getattr(args, "station", None):
        return None
    if not args.controls or not args.outputs:
        raise ConfigError("--station needs --controls and --outputs (comma-separated parameter names)")
    return system_from_station(args.station, args.controls, args.inputs, args.outputs, settle_s=args.settle_s,
                               guard=getattr(args, "guard", "refuse"))
