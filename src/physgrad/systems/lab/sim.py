"""Simulated QCoDeS instruments whose readings come from a simulated physgrad device.

Real QCoDeS instruments (``qcodes.instrument.Instrument`` with real parameters and validators),
no hardware: for the tests, the docs' station example and ``benchmarks.qcodes_gate``.

``SimDAC``
    a multi-channel voltage source: ``ch1 … chN``, each a settable parameter with a
    ``Numbers(low, high)`` validator, a unit, and optional ``step``/``inter_delay``.
``SimDMM``
    a multimeter whose reading ``v`` is the device's output at the DAC's present voltages: the
    channels wired as controls and as inputs are read from the DAC and passed through a device
    (the built-in synthetic DNPU by default, or a surrogate file). ``fail_reads`` makes chosen
    reads raise (a flaky instrument).
``SimAWG``
    an arbitrary waveform generator: ``ch1 … chN`` are settable arrays (``Arrays(min_value,
    max_value)``), one row per record; ``metadata["max_slew"]`` declares its slew limit.
``SimDigitizer``
    a digitizer whose ``trace`` (a ``ParameterWithSetpoints`` over ``record_axis`` × ``time_axis``,
    at ``sample_rate``) is what a time-domain device answers to the AWG's waveforms.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .qcodes import require_qcodes

require_qcodes()

from qcodes.instrument import Instrument  # noqa: E402
from qcodes.parameters import Parameter, ParameterWithSetpoints  # noqa: E402
from qcodes.validators import Arrays, Ints, Numbers  # noqa: E402


def _per_channel(value, n: int, what: str) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{what}: {len(values)} values for {n} channels")
    return values


def _channel_ranges(low, high, channels: int, bounded: bool) -> list[tuple[float, float, float]]:
    """Per channel ``(low, high, start)``; ``start`` is 0 V moved into the range (0 when unbounded)."""
    lows, highs = _per_channel(low, channels, "low"), _per_channel(high, channels, "high")
    return [(lo, hi, min(max(0.0, lo), hi) if bounded else 0.0) for lo, hi in zip(lows, highs)]


def _instrument(value):
    return value if isinstance(value, Instrument) else Instrument.find_instrument(str(value))


def _device(spec):
    from ..base import PhysicalSystem

    if isinstance(spec, PhysicalSystem):
        return spec
    from ..devices.dnpu import load_dnpu

    return load_dnpu(None if spec in (None, "synthetic") else str(spec))


class SimDAC(Instrument):
    """``channels`` voltage outputs ``ch1 … chN`` with per-channel limits (see module docstring)."""

    def __init__(
        self,
        name: str,
        channels: int = 7,
        low: float | Sequence[float] = -1.0,
        high: float | Sequence[float] = 1.0,
        *,
        step: float | None = None,
        inter_delay: float = 0.0,
        unit: str = "V",
        bounded: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        for i, (lo, hi, start) in enumerate(_channel_ranges(low, high, channels, bounded)):
            vals = Numbers(lo, hi) if bounded else Numbers()
            self.add_parameter(
                f"ch{i + 1}", parameter_class=Parameter, label=f"channel {i + 1}", unit=unit, vals=vals,
                set_cmd=None, get_cmd=None, initial_value=start,
            )
        self.sets = 0  # hardware calls made (ramp waypoints included)
        self.history: dict[str, list[float]] = {}  # every value each channel was set to, in order
        for i in range(channels):
            p = self.parameters[f"ch{i + 1}"]
            p.step, p.inter_delay = step, inter_delay  # after the initial value: nothing to ramp from yet
            self.history[p.name] = [float(p.cache.get())]
            p.set_parser = self._logger(p.name)  # sees every call that reaches the "hardware"

    def _logger(self, channel: str):
        def log(value):
            self.sets += 1
            self.history[channel].append(float(value))
            return value

        return log

    def get_idn(self) -> dict:
        return {"vendor": "physgrad", "model": "SimDAC", "serial": self.name, "firmware": "sim"}


class SimDMM(Instrument):
    """A multimeter reading ``device`` at the DAC's voltages (see module docstring).

    ``controls``/``inputs``: the DAC channel names wired to the device's control parameter (in
    its order) and to its data inputs. The reading is the device's first output.
    """

    def __init__(
        self,
        name: str,
        dac: Any,
        controls: Sequence[str],
        inputs: Sequence[str] = (),
        device: Any = "synthetic",
        *,
        control_name: str = "controls",
        unit: str = "nA",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.dac = _instrument(dac)
        self.device = _device(device)
        self.control_channels = [self.dac.parameters[c] for c in controls]
        self.input_channels = [self.dac.parameters[c] for c in inputs]
        self.control_name = control_name
        self.reads = 0
        self.fail_reads: set[int] = set()  # read numbers (0-based) that raise
        self.add_parameter("v", parameter_class=Parameter, label="output", unit=unit, get_cmd=self._read, set_cmd=False)

    def _read(self) -> float:
        number = self.reads
        self.reads += 1
        if number in self.fail_reads:
            raise RuntimeError(f"{self.name}: read {number} timed out (simulated fault)")
        c = torch.tensor([float(p.cache.get()) for p in self.control_channels], dtype=torch.float32)
        x = torch.tensor([[float(p.cache.get()) for p in self.input_channels]], dtype=torch.float32)
        # evaluated on 8 copies of the data point: the float32 rounding of a batched evaluation, so the
        # reading is bit for bit what the in-process device answers inside a batch
        y = self.device.measure({self.control_name: c}, x.expand(8, x.shape[1]))
        return float(y[0, 0].reshape(-1)[0])

    def get_idn(self) -> dict:
        return {"vendor": "physgrad", "model": "SimDMM", "serial": self.name, "firmware": "sim"}


class SimAWG(Instrument):
    """``channels`` waveform outputs ``ch1 … chN``: settable arrays ``[records, points]`` or ``[points]``."""

    def __init__(
        self,
        name: str,
        channels: int = 7,
        low: float | Sequence[float] = -1.0,
        high: float | Sequence[float] = 1.0,
        *,
        max_slew: float | None = None,
        unit: str = "V",
        bounded: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        for i, (lo, hi, start) in enumerate(_channel_ranges(low, high, channels, True)):
            vals = Arrays(min_value=lo, max_value=hi) if bounded else Arrays()
            self.add_parameter(
                f"ch{i + 1}", parameter_class=Parameter, label=f"waveform {i + 1}", unit=unit, vals=vals,
                set_cmd=None, get_cmd=None, initial_value=np.full(1, start),
                metadata={} if max_slew is None else {"max_slew": float(max_slew)},
            )

    def get_idn(self) -> dict:
        return {"vendor": "physgrad", "model": "SimAWG", "serial": self.name, "firmware": "sim"}


class SimDigitizer(Instrument):
    """A digitizer recording what ``device`` (a time-domain device) answers to the AWG's waveforms.

    ``controls``/``inputs``: the AWG channels wired to the device's controls and data inputs. One
    acquisition of ``n_records`` records of ``n_points`` samples plays the control waveform (the
    same in every record) with each record's input waveform, as
    :meth:`~physgrad.systems.wrappers.timedomain.TimeDomainDevice.measure_waveform` does.
    """

    def __init__(
        self,
        name: str,
        awg: Any,
        controls: Sequence[str],
        inputs: Sequence[str] = (),
        device: Any = None,
        *,
        control_name: str = "controls",
        unit: str = "nA",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        from ..devices.dnpu import time_domain_dnpu
        from ..wrappers.timedomain import TimeDomainDevice

        self.awg = _instrument(awg)
        self.device = device if isinstance(device, TimeDomainDevice) else time_domain_dnpu(
            None if device in (None, "synthetic") else str(device))
        self.control_channels = [self.awg.parameters[c] for c in controls]
        self.input_channels = [self.awg.parameters[c] for c in inputs]
        self.control_name = control_name
        self.acquisitions = 0
        self.fail_reads: set[int] = set()
        fs = float(self.device.fs)
        self.add_parameter("sample_rate", parameter_class=Parameter, unit="Hz", get_cmd=lambda: fs, set_cmd=False)
        self.add_parameter("bandwidth", parameter_class=Parameter, unit="Hz",
                           get_cmd=lambda: self.device.bandwidth_hz, set_cmd=False)
        self.add_parameter("n_points", parameter_class=Parameter, vals=Ints(1, 10**8), set_cmd=None, get_cmd=None,
                           initial_value=1000)
        self.add_parameter("n_records", parameter_class=Parameter, vals=Ints(1, 10**6), set_cmd=None, get_cmd=None,
                           initial_value=1)
        self.add_parameter("time_axis", parameter_class=Parameter, unit="s", label="time",
                           get_cmd=lambda: np.arange(self.n_points.get_latest()) / fs, set_cmd=False,
                           vals=Arrays(shape=(self.n_points.get_latest,)))
        self.add_parameter("record_axis", parameter_class=Parameter, label="record",
                           get_cmd=lambda: np.arange(self.n_records.get_latest()), set_cmd=False,
                           vals=Arrays(shape=(self.n_records.get_latest,)))
        self.add_parameter("trace", parameter_class=ParameterWithSetpoints, unit=unit, label="output",
                           setpoints=(self.record_axis, self.time_axis), get_cmd=self._acquire, set_cmd=False,
                           vals=Arrays(shape=(self.n_records.get_latest, self.n_points.get_latest)))

    def _acquire(self) -> np.ndarray:
        number = self.acquisitions
        self.acquisitions += 1
        if number in self.fail_reads:
            raise RuntimeError(f"{self.name}: acquisition {number} timed out (simulated fault)")
        n, b = int(self.n_points.get_latest()), int(self.n_records.get_latest())
        ctrl = [np.asarray(p.cache.get(), dtype=np.float64).reshape(-1, n) for p in self.control_channels]
        ins = [np.asarray(p.cache.get(), dtype=np.float64).reshape(-1, n) for p in self.input_channels]
        for w in ctrl + ins:
            if w.shape[0] not in (1, b):
                raise RuntimeError(f"{self.name}: a waveform has {w.shape[0]} records, the acquisition {b}")
        same = all((w == w[:1]).all() for w in ctrl)
        groups = [list(range(b))] if same else [[j] for j in range(b)]
        out = np.empty((b, n))
        for group in groups:
            controls = torch.from_numpy(np.stack([w[min(group[0], w.shape[0] - 1)] for w in ctrl], axis=-1)).to(torch.float32)
            x = np.stack([np.broadcast_to(w, (b, n))[group] for w in ins], axis=-1) if ins else np.zeros((len(group), n, 0))
            inputs = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))).to(torch.float32)  # [N, G, n_in]
            y = self.device.measure_waveform({self.control_name: controls}, inputs)  # [N, G, out]
            out[group] = y[..., 0].to(torch.float64).numpy().T
        return out

    def get_idn(self) -> dict:
        return {"vendor": "physgrad", "model": "SimDigitizer", "serial": self.name, "firmware": "sim"}
