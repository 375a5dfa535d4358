"""Any static device as a time-domain device: sampled waveforms in, a sampled signal out.

Homodyne gradient extraction (Boon et al., arXiv 2105.11233, Nat. Commun. 2025) drives a device
with waveforms and reads a *signal*, so the device's dynamics matter: its bandwidth and delay put a
phase lag on every modulation, its noise sets how long a window must be, and its amplifier and
converters clip and round. :class:`TimeDomainDevice` wraps any static
:class:`~physgrad.systems.base.PhysicalSystem` (its response ``f(x, θ)`` taken as the
instantaneous, quasi-static response) and adds the measurement chain, sample by sample at rate
``fs``::

    θ[n], x[n]  ──DAC ramp──▶  f(x[n], θ[n])  ──delay d──▶  first-order low-pass (f_c)
                ──▶ + white noise (PSD S_w) + 1/f noise (PSD S_f/f) ──▶ clip [lo, hi] ──▶ ADC step q

* Low-pass: ``y[n] = y[n−1] + α (u[n] − y[n−1])``, ``α = 1 − exp(−2π f_c / fs)`` (an RC stage
  with ``τ = 1/(2π f_c)``), so a tone at ``f`` is scaled by ``≈ 1/√(1 + (f/f_c)²)`` and lags by
  ``atan(f/f_c) + 2π f d``.
* Noise PSDs are one-sided, in output units²/Hz (the paper's figure: 10⁻⁵ nA²/Hz): white noise
  has per-sample variance ``S_w·fs/2``; 1/f noise is white noise shaped in the Fourier domain to
  ``S_f/f``.
* The DAC moves the controls from the last setting to the first sample of a new waveform along a
  straight line lasting ``dac_ramp_s`` (inside the safe box, which is convex); those samples are
  played, filtered and charged, then dropped.

Two ways to use it:

``measure_waveform(params {name: [N, *shape]}, inputs [B, *in] or [N, B, *in]) -> [N, B, *out]``
    one waveform of ``N`` samples, played once per data point (``B`` windows with the same
    control modulation). Counts 1 query, ``B`` samples and ``B·(N + ramp)/fs`` device seconds.
``measure(params, inputs)``
    a *static* measurement: hold each setting, wait ``settle_s``, average ``sample_s`` of signal.
    Every data point of every probe costs ``seconds_per_query = dac_ramp_s + settle_s + sample_s``
    (a single-output device reads one data point at a time). Inside :meth:`waveform_mode` the
    probe axis of ``measure`` is read as the time axis instead, so a
    :class:`~physgrad.models.physical_layer.PhysicalLayer` evaluated under ``torch.func.vmap``
    over time samples plays one waveform.

Every sample of every waveform (ramps included) passes the wrapped device's range guard.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np
import torch
from scipy.signal import lfilter, lfilter_zi

from ...errors import ConfigError, MeasurementError, ShapeError
from ..base import PhysicalSystem


@dataclass(frozen=True)
class TimeDomainNoise:
    """Output noise of a time-domain device, as one-sided PSDs in output units²/Hz.

    ``white_psd``: flat PSD ``S_w``; ``flicker_psd_1hz``: the 1/f part ``S_f/f``, given at 1 Hz.
    """

    white_psd: float = 0.0
    flicker_psd_1hz: float = 0.0

    def __post_init__(self) -> None:
        for name in ("white_psd", "flicker_psd_1hz"):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise ConfigError(f"TimeDomainNoise.{name} must be a finite number >= 0, got {value!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.white_psd or self.flicker_psd_1hz)

    def sample(self, n: int, fs: float, rest: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Noise of ``n`` time samples (axis 0) for ``rest`` independent channels, float64."""
        out = torch.zeros(n, *rest, dtype=torch.float64)
        if self.white_psd:
            sigma = math.sqrt(self.white_psd * fs / 2.0)
            out += sigma * torch.randn(n, *rest, generator=generator, dtype=torch.float64)
        if self.flicker_psd_1hz and n > 1:
            white = torch.randn(n, *rest, generator=generator, dtype=torch.float64)
            spec = torch.fft.rfft(white, dim=0)
            f = torch.fft.rfftfreq(n, d=1.0 / fs, dtype=torch.float64)
            scale = torch.zeros_like(f)
            scale[1:] = torch.sqrt(self.flicker_psd_1hz / f[1:] * fs / 2.0)  # unit white has PSD 2/fs
            spec = spec * scale.reshape(-1, *([1] * len(rest)))
            out += torch.fft.irfft(spec, n=n, dim=0)
        return out


class TimeDomainDevice(PhysicalSystem):
    """A static :class:`PhysicalSystem` driven by sampled waveforms (see module docstring).

    Parameters
    ----------
    static:
        The device's quasi-static response (its parameters, safe ranges and guard are reused).
    fs:
        Sample rate of the DAC/ADC in Hz.
    bandwidth_hz:
        Cut-off ``f_c`` of the first-order low-pass (``None``: instantaneous).
    delay_s:
        Pure delay of the output, rounded to whole samples.
    noise:
        White and 1/f output noise (:class:`TimeDomainNoise`).
    clip:
        ``(lo, hi)`` range of the amplifier; samples beyond are railed (and counted).
    adc_step:
        Quantisation step of the ADC in output units (``None`` or 0: none).
    dac_ramp_s:
        Duration of the straight ramp from the last control setting to a new waveform's start.
    settle_s:
        Wait before a static measurement is read (default ``delay + 7τ``: within 0.1% of final).
    sample_s:
        Averaging time of a static measurement.
    seed:
        Seed of the noise generator.
    electrode_bandwidth_hz:
        Electrode-dependent dynamics: ``{name: cut-off}`` for a parameter (a number or one per
        element) or ``"inputs"`` (one per input element); each such waveform passes its own
        first-order low-pass before the device responds, so channels see different transfers
        ``H_j(f) ≈ H_electrode,j(f) · H_chain(f)`` (the paper's devices; issue 11, §5).
    """

    def __init__(
        self,
        static: PhysicalSystem,
        fs: float = 10_000.0,
        *,
        bandwidth_hz: float | None = None,
        delay_s: float = 0.0,
        noise: TimeDomainNoise | None = None,
        clip: tuple[float, float] | None = None,
        adc_step: float | None = None,
        dac_ramp_s: float = 0.0,
        settle_s: float | None = None,
        sample_s: float = 0.01,
        seed: int = 0,
        electrode_bandwidth_hz: Mapping[str, object] | None = None,
    ) -> None:
        if isinstance(static, TimeDomainDevice):
            raise ConfigError("static is already a TimeDomainDevice; wrap the static device itself")
        if not (fs > 0 and math.isfinite(fs)):
            raise ConfigError(f"sample rate fs must be a finite number > 0 Hz, got {fs!r}")
        if bandwidth_hz is not None and not (0 < bandwidth_hz < math.inf):
            raise ConfigError(f"bandwidth_hz must be a finite number > 0 (or None), got {bandwidth_hz!r}")
        if bandwidth_hz is not None and bandwidth_hz >= fs / 2:
            raise ConfigError(f"bandwidth_hz={bandwidth_hz} is at or above Nyquist (fs/2 = {fs / 2}); raise fs")
        for name, value in (("delay_s", delay_s), ("dac_ramp_s", dac_ramp_s), ("sample_s", sample_s)):
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if clip is not None and not clip[0] < clip[1]:
            raise ConfigError(f"clip={clip} is not a range (lo < hi)")
        if adc_step is not None and not (adc_step >= 0 and math.isfinite(adc_step)):
            raise ConfigError(f"adc_step must be a finite number >= 0, got {adc_step!r}")
        self.static = static
        self.fs = float(fs)
        self._bandwidth_hz = None if bandwidth_hz is None else float(bandwidth_hz)
        self._delay_s = float(delay_s)
        self.td_noise = noise or TimeDomainNoise()
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.adc_step = float(adc_step or 0.0)
        self.dac_ramp_s = float(dac_ramp_s)
        tau = 0.0 if self._bandwidth_hz is None else 1.0 / (2 * math.pi * self._bandwidth_hz)
        self._settle_s = float(self._delay_s + 7.0 * tau) if settle_s is None else float(settle_s)
        if not (self._settle_s >= 0 and math.isfinite(self._settle_s)):
            raise ConfigError(f"settle_s must be a finite number >= 0, got {settle_s!r}")
        self.sample_s = float(sample_s)
        super().__init__(
            static.input_shape,
            static.output_shape,
            list(static.parameter_specs.values()),
            input_range=static.input_range,
            guard=static.guard,
            seconds_per_query=self.dac_ramp_s + self._settle_s + self.sample_s,
            seed=seed,
        )
        self.differentiable = static.differentiable
        self._electrode_bandwidth_hz = self._electrode_bandwidths(electrode_bandwidth_hz or {})
        self._clipped_samples = 0
        self._records: list[list[torch.Tensor]] = []
        self._last: dict[str, torch.Tensor] | None = None
        self._waveform_mode = False

    # ----------------------------------------------------------------------------- simulator truth
    # What the simulator knows and a lab does not (for tests, docs and benchmarks' oracles). No
    # method reads these: HGE takes nominal values from its settings or measures them (issue 11, §2).
    @property
    def bandwidth_hz(self) -> float | None:
        return self._bandwidth_hz

    @property
    def delay_s(self) -> float:
        return self._delay_s

    @property
    def settle_s(self) -> float:
        return self._settle_s

    @property
    def clipped_samples(self) -> int:
        return self._clipped_samples

    @property
    def electrode_bandwidth_hz(self) -> dict[str, torch.Tensor]:
        return self._electrode_bandwidth_hz

    # ----------------------------------------------------------------------------- declared
    @property
    def identity(self) -> str:
        """The wrapped device's identity (one device, whatever drives it); settable, e.g. to a lab's serial number."""
        given = self.__dict__.get("_identity")
        if given is not None:
            return given
        inner = getattr(self.static, "identity", type(self.static).__name__)
        name = getattr(self.static, "name", None)
        return f"TimeDomainDevice[{inner}{'' if name is None else ':' + str(name)}]"

    @identity.setter
    def identity(self, value: str) -> None:
        self.__dict__["_identity"] = str(value)

    def _electrode_bandwidths(self, spec: Mapping[str, object]) -> dict[str, torch.Tensor]:
        out = {}
        for name, value in spec.items():
            shape = self.input_shape if name == "inputs" else (
                self.parameter_specs[name].shape if name in self.parameter_specs else None)
            if shape is None:
                raise ConfigError(f"electrode_bandwidth_hz: unknown parameter {name!r}")
            bw = torch.as_tensor(value, dtype=torch.float64).expand(tuple(shape)).clone()
            if not bool((bw > 0).all() and (bw < self.fs / 2).all()):
                raise ConfigError(f"electrode_bandwidth_hz[{name!r}] must lie in (0, fs/2), got {bw.tolist()}")
            out[name] = bw
        return out

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[torch.Tensor]]:
        """Inside, every waveform's recorded samples ``[N, B, *out]`` (what the ADC read) are kept in a list."""
        record: list[torch.Tensor] = []
        self._records.append(record)
        try:
            yield record
        finally:
            self._records.remove(record)

    @property
    def delay_samples(self) -> int:
        return int(round(self._delay_s * self.fs))

    @property
    def ramp_samples(self) -> int:
        return int(math.ceil(self.dac_ramp_s * self.fs - 1e-9))

    def transfer(self, freqs: torch.Tensor) -> torch.Tensor:
        """The nominal complex gain of the chain at ``freqs`` (Hz): discrete low-pass × delay.

        For documentation and tests; methods measure it instead (:meth:`HGE.calibrate`).
        """
        freqs = torch.as_tensor(freqs, dtype=torch.float64)
        z = torch.exp(-2j * math.pi * freqs / self.fs)
        h = torch.ones_like(z)
        if self._bandwidth_hz is not None:
            alpha = 1.0 - math.exp(-2 * math.pi * self._bandwidth_hz / self.fs)
            h = alpha / (1.0 - (1.0 - alpha) * z)
        return h * z ** self.delay_samples

    def input_bounds(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-element input range of the wrapped device, if it declares one."""
        bounds = getattr(self.static, "input_bounds", None)
        if callable(bounds):
            return bounds(dtype)
        if self.input_range is None:
            return None
        return (torch.full(self.input_shape, self.input_range[0], dtype=dtype),
                torch.full(self.input_shape, self.input_range[1], dtype=dtype))

    def state_dict(self) -> dict:
        """The base counters plus the clipped-sample count and the last setting (where a DAC ramp starts)."""
        state = super().state_dict()
        state["clipped_samples"] = self._clipped_samples
        state["last"] = None if self._last is None else {n: v.clone() for n, v in self._last.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._clipped_samples = int(state.get("clipped_samples", 0))
        last = state.get("last")
        self._last = None if last is None else {n: torch.as_tensor(v).clone() for n, v in last.items()}

    @contextlib.contextmanager
    def waveform_mode(self) -> Iterator["TimeDomainDevice"]:
        """Inside, :meth:`measure` reads its probe axis as time: one waveform, one window per input."""
        saved = self._waveform_mode
        self._waveform_mode = True
        try:
            yield self
        finally:
            self._waveform_mode = saved

    # ----------------------------------------------------------------------------- contact
    def response(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """The steady-state (quasi-static) response of the wrapped device."""
        return self.static.response(params, inputs)

    def _checked(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor):
        # the wrapped device's own checks (per-electrode ranges etc.) with the shared guard
        return self.static._checked(params, inputs)

    def measure(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """A static measurement (settle, then average ``sample_s``), or a waveform in waveform mode."""
        if self._waveform_mode:
            return self.measure_waveform(params, inputs)
        params, inputs, k, b = self._checked(params, inputs)
        with torch.no_grad():
            clean = self.static.response(params, inputs)
            self._expect_shape(clean, (k, b, *self.output_shape))
            n = max(1, int(round(self.sample_s * self.fs)))
            base = clean.to(torch.float64)
            if self.td_noise.enabled or self.clip is not None or self.adc_step:
                samples = base.unsqueeze(0) + self.td_noise.sample(n, self.fs, tuple(base.shape), self.generator)
                samples = self._rail_and_round(samples)
                base = samples.mean(0)
            out = base.to(clean.dtype)
        self._last = {name: v[-1].detach().clone() for name, v in params.items()}
        self.queries += k
        self.samples += k * b
        self.device_seconds += k * b * self.seconds_per_query
        self._expect_finite(out)
        return out.detach()

    def measure_waveform(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """Play control waveforms ``params[name]: [N, *shape]`` once per data point; return ``[N, B, *out]``.

        ``inputs`` is ``[B, *input_shape]`` (held) or ``[N, B, *input_shape]`` (input waveforms).
        Sample ``n`` of the answer is the chain's output at time ``n/fs`` after the waveform starts.
        """
        if not params:
            raise ShapeError("measure_waveform needs at least one control waveform (it fixes N)")
        n = next(iter(torch.as_tensor(v).shape[0] for v in params.values()))
        if n < 1:
            raise ShapeError("a waveform needs at least one sample")
        inputs = torch.as_tensor(inputs)
        n_in = len(self.input_shape)
        if inputs.dim() == n_in + 1:
            inputs = inputs.unsqueeze(0).expand(n, *inputs.shape)
        elif inputs.dim() != n_in + 2 or inputs.shape[0] != n:
            raise ShapeError(
                f"inputs must be [B, *{self.input_shape}] or [N={n}, B, *{self.input_shape}], got {tuple(inputs.shape)}"
            )
        params, inputs, k, b = self._checked(params, inputs)
        if k != n:
            raise ShapeError(f"control waveforms have different lengths ({k} vs {n})")
        r = self.ramp_samples
        last = self._last if self._last is not None else self.initial_parameters()  # at power-up the DAC holds the defaults
        if r:
            frac = torch.arange(1, r + 1, dtype=torch.float64) / r
            ramped = {}
            for name, wave in params.items():
                start = last[name].to(torch.float64)
                end = wave[0].to(torch.float64)
                ramp = start + (end - start) * frac.reshape(-1, *([1] * start.dim()))
                low, high = self.parameter_specs[name].bounds(wave.dtype)
                ramp = self.guard(f"parameter {name!r} (DAC ramp)", ramp.to(wave.dtype), low, high)
                ramped[name] = torch.cat([ramp, wave])
            params = ramped
            inputs = torch.cat([inputs[:1].expand(r, *inputs.shape[1:]), inputs])
        with torch.no_grad():
            driven, driven_inputs = params, inputs
            if self._electrode_bandwidth_hz:
                driven = {k: self._electrode(k, v) for k, v in params.items()}
                if "inputs" in self._electrode_bandwidth_hz:
                    driven_inputs = self._electrode("inputs", inputs, batch_dims=1)
            clean = self.static.response(driven, driven_inputs)
            self._expect_shape(clean, (n + r, b, *self.output_shape))
            signal = self._chain(clean.to(torch.float64))[r:]
            out = signal.to(clean.dtype)
        self._last = {name: v[-1].detach().clone() for name, v in params.items()}
        self.queries += 1
        self.samples += b
        self.device_seconds += b * (n + r) / self.fs
        self._expect_finite(out)
        for record in self._records:
            record.append(out.detach())
        return out.detach()

    def _electrode(self, name: str, wave: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
        """``wave [T, (B,) *shape]`` through each element's first-order low-pass (at rest at its first sample)."""
        bw = self._electrode_bandwidth_hz.get(name)
        if bw is None:
            return wave
        alpha = (1.0 - torch.exp(-2 * math.pi * bw / self.fs)).expand(wave.shape[1:]).reshape(-1).tolist()
        x = wave.to(torch.float64).reshape(wave.shape[0], -1).numpy()
        y = np.empty_like(x)
        for m, a in enumerate(alpha):
            b_coef, a_coef = np.array([a]), np.array([1.0, a - 1.0])
            y[:, m], _ = lfilter(b_coef, a_coef, x[:, m], zi=lfilter_zi(b_coef, a_coef) * x[0, m])
        y = torch.from_numpy(y).reshape(wave.shape)
        return y.to(wave.dtype)

    # ----------------------------------------------------------------------------- the chain
    def _chain(self, u: torch.Tensor) -> torch.Tensor:
        """Delay, low-pass, noise, clip and ADC along time (axis 0) of ``u`` (float64)."""
        d = self.delay_samples
        if d:
            u = torch.cat([u[:1].expand(min(d, u.shape[0]), *u.shape[1:]), u[: max(u.shape[0] - d, 0)]])
        if self._bandwidth_hz is not None:
            alpha = 1.0 - math.exp(-2 * math.pi * self._bandwidth_hz / self.fs)
            b_coef, a_coef = np.array([alpha]), np.array([1.0, alpha - 1.0])
            x = u.numpy()
            zi = lfilter_zi(b_coef, a_coef).reshape(1, *([1] * (x.ndim - 1))) * x[:1]  # at rest at u[0]
            y, _ = lfilter(b_coef, a_coef, x, axis=0, zi=zi)
            u = torch.from_numpy(np.ascontiguousarray(y))
        if self.td_noise.enabled:
            u = u + self.td_noise.sample(u.shape[0], self.fs, tuple(u.shape[1:]), self.generator)
        return self._rail_and_round(u)

    def _rail_and_round(self, y: torch.Tensor) -> torch.Tensor:
        if self.clip is not None:
            lo, hi = self.clip
            self._clipped_samples += int(((y < lo) | (y > hi)).sum())
            y = y.clamp(lo, hi)
        if self.adc_step:
            y = torch.round(y / self.adc_step) * self.adc_step
        return y

    def is_clipped(self, y: torch.Tensor) -> torch.Tensor:
        """Where ``y`` sits on an amplifier rail (boolean, same shape)."""
        if self.clip is None:
            return torch.zeros_like(y, dtype=torch.bool)
        lo, hi = self.clip
        return (y <= lo) | (y >= hi)

    def _expect_shape(self, out: torch.Tensor, expected: tuple[int, ...]) -> None:
        if tuple(out.shape) != expected:
            raise MeasurementError(f"{type(self.static).__name__} answered shape {tuple(out.shape)}, expected {expected}")

    def _expect_finite(self, out: torch.Tensor) -> None:
        if not torch.isfinite(out).all():
            bad = int((~torch.isfinite(out)).sum())
            raise MeasurementError(f"{type(self.static).__name__} returned {bad} non-finite value(s) (NaN/inf)")

    def __repr__(self) -> str:
        return (
            f"TimeDomainDevice({type(self.static).__name__}, fs={self.fs:g} Hz, bandwidth={self._bandwidth_hz} Hz, "
            f"delay={self._delay_s:g} s, noise={self.td_noise})"
        )
