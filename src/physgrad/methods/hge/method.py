"""Homodyne gradient extraction (HGE): every parameter wobbles at its own frequency; lock-in reads the gradient.

Boon, Cassola, Ruiz Euler, Chen, van de Ven, Alegre Ibarra, Bobbert, van der Wiel, "Gradient
descent in materia through homodyne gradient extraction", arXiv 2105.11233 (Nat. Commun. 2025).

Each channel (control parameter, optionally each input) is modulated by its own sinusoid,
``θ_i(t) = θ_i + a_i sin(2π f_i t)``. To first order the output is

    I(t) ≈ I(θ) + Σ_i a_i ∂I/∂θ_i · |H(f_i)| sin(2π f_i t + φ_i)

where ``H(f) = |H| e^{iφ}`` is the device's own transfer (bandwidth, delay). Multiplying the
mean-removed output by ``sin`` and ``cos`` at ``f_i`` and averaging over a window of whole cycles
(the homodyne / lock-in step) gives the in-phase and quadrature parts

    X_i = ⟨Ĩ sin(2π f_i t)⟩ = (a_i/2) ∂I/∂θ_i |H| cos φ_i,   Y_i = ⟨Ĩ cos(2π f_i t)⟩ = (a_i/2) ∂I/∂θ_i |H| sin φ_i,

so ``∂I/∂θ_i = 2 X_i / a_i`` for an instantaneous device (the paper's rule) and, in general,
``∂I/∂θ_i = 2 Re(Z_i / H(f_i)) / a_i`` with ``Z_i = X_i + iY_i`` (``phase="calibrated"``: ``H`` is
measured once per frequency, :meth:`HGE.calibrate`). The authors' code takes the magnitude
``2|Z_i|/a_i`` and the sign from the phase (``sign_from_phase=True``: positive when
``|arg Z_i − arg H_i| < 90°``). All partial derivatives come from one window (``mode="parallel"``);
``mode="sequential"`` modulates one channel per window (the reference HGE is compared to).

Frequency plan (:func:`plan_frequencies`): the ``f_i`` are whole numbers of cycles in the window
(so distinct bins are exactly orthogonal), below the device bandwidth and Nyquist, and chosen so
that no mixing product ``Σ_j n_j f_j`` with ``Σ|n_j| ≤ order`` (other than the channel itself)
lands on a channel: with ``order=2`` harmonics and sums/differences of pairs never alias
(the authors' odd multiples of a base frequency, ``odd=True``, are one such plan).

Range safety: ``θ_i ± a_i`` must stay in the safe range. Near a bound the amplitude is shrunk to the
room left, at most to half its nominal value, and beyond that the centre is moved inward
(``at_bound="shrink"``), or the method refuses (``at_bound="refuse"``); every waveform sample then
passes the device's range guard.

Loss gradient: the output gradient per data point times ``dL/dI`` (digital chain rule, default),
or ``loss_signal=True``: the loss computed sample by sample from the modulated outputs and
demodulated directly (the in-materia variant: ``dL/dθ_i = 2 X_i^L / a_i``).

Scopes: ``global`` modulates every trainable parameter of the model (digital ones in software) and
plays the whole network's response as one waveform; ``local`` estimates the vector–Jacobian product
of one device (its controls and, when needed, its inputs) so it can be a layer in a larger model.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from ...cost import Cost
from ...errors import ConfigError, MeasurementError, RangeError, ShapeError
from ...models.physical_layer import gradient_path, parameter_bounds, physical_layers, systems_of
from ...systems.base import PhysicalSystem
from ...systems.wrappers.timedomain import TimeDomainDevice
from ..base import Estimate, GradientMethod, LossFn, accumulate_grads, flatten_with_bounds, unflatten

MODES = ("parallel", "sequential")
PHASES = ("calibrated", "none")
DEMODULATIONS = ("iq", "fft")
AT_BOUND = ("shrink", "refuse")
Bounds = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


# ===================================================================================== plan
def mixing_collisions(bins: Sequence[int], order: int, guard_bins: int = 0) -> list[tuple[int, dict[int, int]]]:
    """Mixing products of order ``2..order`` that land within ``guard_bins`` of a channel's bin.

    A product is ``Σ_j n_j k_j`` with integer ``n`` and ``2 ≤ Σ|n_j| ≤ order`` (terms of a Taylor
    expansion of order ``Σ|n_j|``). Products whose net coefficients are ``±e_i`` (the channel
    itself, e.g. ``f_i + f_j − f_j``) are not collisions. Returns ``(channel, {j: n_j})`` pairs.
    """
    bins = [int(k) for k in bins]
    signed = [(j, s) for j in range(len(bins)) for s in (1, -1)]
    found = []
    for r in range(2, order + 1):
        for combo in itertools.combinations_with_replacement(signed, r):
            net: dict[int, int] = {}
            for j, s in combo:
                net[j] = net.get(j, 0) + s
            net = {j: n for j, n in net.items() if n}
            if not net:
                continue
            value = abs(sum(n * bins[j] for j, n in net.items()))
            for i, k in enumerate(bins):
                if abs(value - k) <= guard_bins and not (len(net) == 1 and abs(net.get(i, 0)) == 1):
                    found.append((i, net))
    return found


def check_frequencies(
    freqs: Sequence[float],
    fs: float,
    window_s: float,
    *,
    order: int = 2,
    f_max: float | None = None,
    guard_bins: int = 0,
) -> list[int]:
    """Validate a frequency plan; return the number of cycles of each frequency in the window.

    Raises :class:`ConfigError` naming the problem: a frequency at/above Nyquist or above the
    device bandwidth, a window that is not a whole number of samples or cycles, repeated
    frequencies, or a mixing product landing on a channel.
    """
    n = window_s * fs
    if abs(n - round(n)) > 1e-6 * max(1.0, n) or round(n) < 2:
        raise ConfigError(f"window {window_s} s at fs={fs} Hz is {n:g} samples; it must be a whole number >= 2")
    bins = []
    for f in freqs:
        if not f > 0:
            raise ConfigError(f"modulation frequency {f} Hz must be > 0")
        if f >= fs / 2:
            raise ConfigError(f"modulation frequency {f:g} Hz is at or above Nyquist (fs/2 = {fs / 2:g} Hz)")
        if f_max is not None and f > f_max * (1 + 1e-9):
            raise ConfigError(f"modulation frequency {f:g} Hz is above the device bandwidth ({f_max:g} Hz)")
        cycles = f * window_s
        if abs(cycles - round(cycles)) > 1e-6:
            raise ConfigError(
                f"the window of {window_s} s holds {cycles:g} cycles of {f:g} Hz, not a whole number: "
                "choose frequencies that are multiples of 1/window"
            )
        bins.append(int(round(cycles)))
    if len(set(bins)) != len(bins):
        raise ConfigError(f"modulation frequencies {list(freqs)} repeat a frequency bin")
    bad = mixing_collisions(bins, order, guard_bins)
    if bad:
        i, net = bad[0]
        term = " ".join(f"{n:+d}·{freqs[j]:g}" for j, n in net.items())
        raise ConfigError(
            f"mixing product {term} Hz (order {sum(abs(n) for n in net.values())}) lands on channel {i} at "
            f"{freqs[i]:g} Hz; {len(bad)} collision(s) up to order {order}"
        )
    return bins


def plan_frequencies(
    count: int,
    fs: float,
    window_s: float,
    *,
    spacing: float | None = None,
    f_min: float | None = None,
    f_max: float | None = None,
    min_cycles: int = 10,
    order: int = 2,
    odd: bool = False,
    guard_bins: int = 0,
) -> list[float]:
    """Choose ``count`` frequencies: the lowest collision-free multiples of ``spacing``.

    Candidates are ``m · spacing`` (``spacing`` defaults to ``1/window``, the bin width; it must be
    a multiple of it), from ``f_min`` (default: ``min_cycles`` cycles in the window) up to
    ``f_max`` (the device bandwidth) and below Nyquist; ``odd=True`` keeps odd ``m`` only (the
    authors' choice, free of second-order products by parity). Greedy: a candidate is taken when
    the set stays free of mixing collisions up to ``order``. Raises :class:`ConfigError` when no
    plan fits.
    """
    if count < 1:
        raise ConfigError(f"need at least one channel to plan, got {count}")
    if order < 1:
        raise ConfigError(f"mixing order must be >= 1, got {order}")
    spacing = 1.0 / window_s if spacing is None else float(spacing)
    per_bin = spacing * window_s
    if spacing <= 0 or abs(per_bin - round(per_bin)) > 1e-6 or round(per_bin) < 1:
        raise ConfigError(
            f"frequency spacing {spacing:g} Hz is not a whole number of cycles per window of {window_s} s "
            f"(bin width {1 / window_s:g} Hz)"
        )
    step = int(round(per_bin))
    f_min = min_cycles / window_s if f_min is None else float(f_min)
    top = fs / 2 if f_max is None else min(float(f_max), fs / 2)
    m = max(1, math.ceil(f_min / spacing - 1e-9))
    if odd and m % 2 == 0:
        m += 1
    chosen: list[int] = []
    while len(chosen) < count:
        f = m * spacing
        if f > top * (1 + 1e-9) or f >= fs / 2:
            raise ConfigError(
                f"no frequency plan for {count} channels: only {len(chosen)} collision-free frequencies (order {order}) "
                f"fit between {f_min:g} Hz and {top:g} Hz with spacing {spacing:g} Hz. Use a longer window, a lower "
                "mixing order, a smaller spacing, or a faster device/sample rate"
            )
        trial = chosen + [m * step]
        if not mixing_collisions(trial, order, guard_bins):
            chosen.append(m * step)
        m += 2 if odd else 1
    return [k / window_s for k in chosen]


@dataclass(frozen=True)
class FrequencyPlan:
    """Frequencies (Hz) and their whole numbers of cycles in a window of ``window_samples`` at ``fs``."""

    fs: float
    window_samples: int
    settle_samples: int
    freqs: tuple[float, ...]
    bins: tuple[int, ...]
    mode: str

    @property
    def segment(self) -> int:
        return self.settle_samples + self.window_samples

    @property
    def segments(self) -> int:
        return 1 if self.mode == "parallel" else len(self.freqs)

    @property
    def total_samples(self) -> int:
        return self.segments * self.segment

    def channel_freqs(self) -> torch.Tensor:
        """Frequency of each channel's modulation (sequential: all channels share the first)."""
        if self.mode == "parallel":
            return torch.tensor(self.freqs, dtype=torch.float64)
        return torch.full((len(self.freqs),), self.freqs[0], dtype=torch.float64)


# ===================================================================================== probes
@dataclass
class WaveformProbes:
    """What to play: control waveforms ``[N, *shape]`` per parameter and inputs (held or waveforms)."""

    params: dict[str, torch.Tensor]
    inputs: torch.Tensor | None
    plan: FrequencyPlan
    amplitudes: torch.Tensor  # [P] for parameter channels
    input_amplitudes: torch.Tensor | None  # [B, n_in] for input channels (or None)
    transfer: torch.Tensor  # [C] complex: H at each channel's frequency (1 if phase="none")
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    clip: tuple[float, float] | None = None

    @property
    def count(self) -> int:
        return self.plan.total_samples


# ===================================================================================== method
class HGE(GradientMethod):
    """Homodyne gradient extraction (see module docstring).

    Parameters
    ----------
    window_s:
        Demodulation window ``T`` (s); every frequency has a whole number of cycles in it.
    frequencies:
        Explicit frequencies (Hz) for the channels in order (validated), or ``None`` to plan.
    spacing, f_min, min_cycles, order, odd, guard_bins:
        Planning settings (:func:`plan_frequencies`).
    amplitude:
        Modulation amplitude as a fraction of each channel's safe range (paper: a few %).
    amplitude_abs:
        Absolute amplitude (parameter units) for every channel, overriding ``amplitude``; also
        the amplitude of unbounded (digital) channels (default 0.01).
    input_amplitude:
        Fraction of each input's range used when inputs are modulated (local scope).
    at_bound:
        ``"shrink"`` (shrink the amplitude to the room left, at most to half, then move the centre
        inward) or ``"refuse"`` (:class:`RangeError` when ``θ ± a`` leaves the range).
    mode:
        ``"parallel"`` (all channels in one window) or ``"sequential"`` (one window each).
    phase:
        ``"calibrated"`` (divide by the measured transfer ``H(f)``) or ``"none"`` (``2X/a``).
    sign_from_phase:
        Magnitude ``2|Z|/(a|H|)`` with the sign from the phase (the authors' code).
    demodulation:
        ``"iq"`` (multiply by sin/cos and average) or ``"fft"`` (read the planned FFT bins).
    loss_signal:
        Demodulate the loss computed sample by sample (in-materia variant, global scope).
    calibration_window_s:
        Window per tone of :meth:`calibrate` (default ``max(10 · window_s, 1 s)``).
    calibration_snr:
        Required ratio of the reference reading to its lock-in noise (default 20: phase and
        magnitude of ``H`` within ~1/20 of their values; raise it for more accurate calibration).
    scope, seed:
        See :class:`~physgrad.methods.base.GradientMethod`.
    """

    name = "hge"

    def __init__(
        self,
        window_s: float = 0.1,
        *,
        frequencies: Sequence[float] | None = None,
        spacing: float | None = None,
        f_min: float | None = None,
        min_cycles: int = 10,
        order: int = 2,
        odd: bool = False,
        guard_bins: int = 0,
        amplitude: float = 0.02,
        amplitude_abs: float | None = None,
        input_amplitude: float = 0.02,
        at_bound: str = "shrink",
        mode: str = "parallel",
        phase: str = "calibrated",
        sign_from_phase: bool = False,
        demodulation: str = "iq",
        loss_signal: bool = False,
        calibration_window_s: float | None = None,
        calibration_snr: float = 20.0,
        scope: str = "global",
        seed: int = 0,
    ) -> None:
        super().__init__(scope, seed)
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ConfigError(f"window_s must be a finite number > 0, got {window_s!r}")
        for name, value, options in (
            ("mode", mode, MODES), ("phase", phase, PHASES), ("demodulation", demodulation, DEMODULATIONS),
            ("at_bound", at_bound, AT_BOUND),
        ):
            if value not in options:
                raise ConfigError(f"{name} must be one of {options}, got {value!r}")
        for name, value in (("amplitude", amplitude), ("input_amplitude", input_amplitude)):
            if not (0 < value < 0.5):
                raise ConfigError(f"{name} is a fraction of the safe range and must lie in (0, 0.5), got {value!r}")
        if amplitude_abs is not None and not (amplitude_abs > 0 and math.isfinite(amplitude_abs)):
            raise ConfigError(f"amplitude_abs must be a finite number > 0, got {amplitude_abs!r}")
        if loss_signal and scope == "local":
            raise ConfigError("loss_signal=True demodulates the whole loss: it needs scope='global'")
        self.window_s = float(window_s)
        self.frequencies = None if frequencies is None else [float(f) for f in frequencies]
        self.plan_options = dict(spacing=spacing, f_min=f_min, min_cycles=min_cycles, order=order, odd=odd,
                                 guard_bins=guard_bins)
        self.amplitude = float(amplitude)
        self.amplitude_abs = amplitude_abs
        self.input_amplitude = float(input_amplitude)
        self.at_bound = at_bound
        self.mode = mode
        self.phase = phase
        self.sign_from_phase = bool(sign_from_phase)
        self.demodulation = demodulation
        self.loss_signal = bool(loss_signal)
        self.calibration_window_s = (
            max(10 * self.window_s, 1.0) if calibration_window_s is None else float(calibration_window_s)
        )
        if not calibration_snr > 0:
            raise ConfigError(f"calibration_snr must be > 0, got {calibration_snr!r}")
        self.calibration_snr = float(calibration_snr)
        self.calibration: dict[tuple[int, float], complex] = {}
        self.calibration_cost = Cost()
        self._plans: dict[tuple, FrequencyPlan] = {}

    # ------------------------------------------------------------------ plan
    def plan(self, channels: int, system: TimeDomainDevice) -> FrequencyPlan:
        """The frequency plan for ``channels`` channels on ``system`` (validated; cached)."""
        key = (channels, system.fs, system.settle_s, system.bandwidth_hz)
        if key not in self._plans:
            self._plans[key] = self._make_plan(channels, system)
        return self._plans[key]

    def _make_plan(self, channels: int, system: TimeDomainDevice) -> FrequencyPlan:
        fs = system.fs
        n = self.window_s * fs
        if abs(n - round(n)) > 1e-6 * max(1.0, n):
            raise ConfigError(f"window {self.window_s} s at fs={fs} Hz is {n:g} samples, not a whole number")
        need = channels if self.mode == "parallel" else 1
        opts = self.plan_options
        if self.frequencies is not None:
            if len(self.frequencies) < need:
                raise ConfigError(f"{len(self.frequencies)} frequencies given for {need} channel(s)")
            freqs = self.frequencies[:need]
        else:
            freqs = plan_frequencies(need, fs, self.window_s, f_max=system.bandwidth_hz, **opts)
        bins = check_frequencies(freqs, fs, self.window_s, order=opts["order"], f_max=system.bandwidth_hz,
                                 guard_bins=opts["guard_bins"])
        if self.mode == "sequential":
            freqs, bins = [freqs[0]] * channels, [bins[0]] * channels
        settle = int(math.ceil(system.settle_s * fs - 1e-9))
        return FrequencyPlan(fs, int(round(n)), settle, tuple(freqs), tuple(bins), self.mode)

    # ------------------------------------------------------------------ ask / tell
    def ask(
        self,
        theta: Mapping[str, torch.Tensor],
        inputs: torch.Tensor | None = None,
        bounds: Bounds | None = None,
        input_bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        system: TimeDomainDevice,
        input_grad: bool = False,
    ) -> WaveformProbes:
        """Waveforms for one gradient at ``theta`` on ``system`` (and inputs, modulated if ``input_grad``).

        Play them with ``system.measure_waveform(probes.params, probes.inputs)`` and pass the
        answer to :meth:`tell`. ``bounds`` default to the device's parameter ranges and
        ``input_bounds`` to its input ranges.
        """
        if not isinstance(system, TimeDomainDevice):
            raise ConfigError(
                f"HGE needs a time-domain device (sampled waveforms in, a signal out), got {type(system).__name__}; "
                "wrap it with physgrad.systems.TimeDomainDevice"
            )
        theta = {n: torch.as_tensor(t).detach() for n, t in theta.items()}
        bounds = system.parameter_bounds() if bounds is None else bounds
        if input_grad:
            if inputs is None:
                raise ShapeError("input_grad=True needs the inputs to modulate")
            if input_bounds is None:
                input_bounds = system.input_bounds(inputs.dtype)
        return self._probes(theta, bounds, system, inputs, input_bounds if input_grad else None, input_grad)

    def tell(self, probes: WaveformProbes, answers: torch.Tensor, cotangent: torch.Tensor | None = None) -> Estimate:
        """Turn the played answer into a gradient estimate.

        ``answers`` is the loss signal ``[N]`` (then the gradient is of the loss) or the outputs
        ``[N, B, *out]`` with ``cotangent [B, *out]`` (the vector–Jacobian product ``vᵀJ``).
        """
        answers = torch.as_tensor(answers)
        if answers.shape[0] != probes.count:
            raise ShapeError(f"tell expects {probes.count} samples along axis 0, got {tuple(answers.shape)}")
        if not torch.isfinite(answers).all():
            raise RangeError(f"hge: {int((~torch.isfinite(answers)).sum())} non-finite answer sample(s); no estimate made")
        if probes.clip is not None:
            lo, hi = probes.clip
            railed = int(((answers <= lo) | (answers >= hi)).sum())
            if railed:
                raise MeasurementError(
                    f"hge: {railed} output sample(s) sit on the amplifier rails {probes.clip}: a clipped signal has "
                    "spurious harmonics and a wrong gradient. Reduce the modulation amplitude, the amplifier gain, "
                    "or move the operating point"
                )
        jac = self.jacobian(probes, answers)  # [*rest, C]
        p = probes.amplitudes.numel()
        if cotangent is None:
            if answers.dim() != 1:
                raise ShapeError("answers with a batch need a cotangent (the vector of the vector–Jacobian product)")
            flat = jac[:p]
            input_grad = None
            batch = 1
        else:
            if tuple(cotangent.shape) != tuple(answers.shape[1:]):
                raise ShapeError(f"cotangent shape {tuple(cotangent.shape)} does not match answers {tuple(answers.shape)}")
            v = cotangent.to(torch.float64).unsqueeze(-1)
            weighted = (v * jac).reshape(answers.shape[1], -1, jac.shape[-1]).sum(1)  # [B, C]
            flat = weighted[:, :p].sum(0)
            input_grad = None
            if probes.input_amplitudes is not None:
                input_grad = weighted[:, p:].reshape(probes.input_shape)
            batch = answers.shape[1]
        grads, offset = {}, 0
        dtype = next(iter(probes.params.values())).dtype
        for name, shape in probes.shapes.items():
            size = math.prod(shape)
            grads[name] = flat[offset : offset + size].reshape(shape).to(dtype)
            offset += size
        if input_grad is not None:
            input_grad = input_grad.to(dtype)
        seconds = batch * probes.count / probes.plan.fs
        return Estimate(grads, input_grad, Cost(probes.plan.segments, batch * probes.plan.segments, seconds))

    def jacobian(self, probes: WaveformProbes, answers: torch.Tensor) -> torch.Tensor:
        """Per-element derivative estimates ``[*answers.shape[1:], C]`` (float64), channels last."""
        z = self._demodulate(answers.to(torch.float64), probes.plan)  # [*rest, C] complex
        h = probes.transfer.to(z.dtype)
        if self.sign_from_phase:
            rel = torch.angle(z) - torch.angle(h)
            val = z.abs() / h.abs() * torch.sign(torch.cos(rel))
        else:
            val = (z / h).real
        amps = probes.amplitudes.to(torch.float64)
        if probes.input_amplitudes is not None:
            b = probes.input_amplitudes.shape[0]
            a = torch.cat([amps.expand(b, -1), probes.input_amplitudes.reshape(b, -1).to(torch.float64)], dim=1)
            a = a.reshape(b, *([1] * (val.dim() - 2)), a.shape[-1])
        else:
            a = amps
        return 2.0 * val / a

    # ------------------------------------------------------------------ calibration
    def calibrate(
        self,
        system: TimeDomainDevice,
        params: Mapping[str, torch.Tensor] | None = None,
        inputs: torch.Tensor | None = None,
        freqs: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Measure the device's complex transfer ``H(f)`` at each frequency, once.

        At the operating point ``(params, one of inputs)`` one control is modulated, at the same
        amplitude, by one tone per frequency and by two slow reference tones ``f_ref`` and ``2 f_ref``
        (``f_ref ≤ f_c/20``; ``calibration_window_s`` each). A quasi-static response gives the same
        first-harmonic reading at every frequency — kinks and curvature included — so the ratio is
        the chain's transfer, ``H(f) = Z(f) / Z(0)``, with the zero-frequency reading extrapolated
        from the references (the phase of a low-pass plus delay is linear in ``f`` well below the
        cut-off: ``arg Z(0) = 2 arg Z(f_ref) − arg Z(2 f_ref)``, ``|Z(0)| = |Z(f_ref)|``, errors
        ``O((f_ref/f_c)²)``). The chain after the static response is linear and time-invariant,
        so ``H`` does not depend on the operating point. The (data point, control) pair is the one
        with the largest response in a first window; when its reference reading is not
        ``calibration_snr`` (20) times above
        the lock-in noise (estimated from the residual) the next is tried (three), then the three
        again with windows twice and four times as long, then :class:`MeasurementError`. Cost is added to ``calibration_cost`` and the device's counters.
        """
        if not isinstance(system, TimeDomainDevice):
            raise ConfigError(f"calibrate needs a TimeDomainDevice, got {type(system).__name__}")
        params = system.initial_parameters() if params is None else {n: torch.as_tensor(v).detach() for n, v in params.items()}
        inputs = _midpoint_inputs(system) if inputs is None else inputs.detach()
        before = system.cost
        bounds = system.parameter_bounds()
        if freqs is None:
            channels = sum(v.numel() for v in params.values())
            freqs = sorted(set(self.plan(channels, system).freqs))
        flat, low, high, shapes = flatten_with_bounds(params, bounds)
        centre, amp = self._centre(flat, low, high, self._amplitudes(low, high), "parameter")
        # which controls respond most: one ordinary parallel window
        probe = self._probes(params, bounds, system, inputs, None, False, transfer=False)
        first = self.jacobian(probe, system.measure_waveform(probe.params, probe.inputs))  # [B, *out, C]
        strength = first.reshape(first.shape[0], -1, first.shape[-1]).abs().sum(1)  # [B, C]
        order = strength.reshape(-1).argsort(descending=True)[:3].tolist()
        fs = system.fs
        settle = int(math.ceil(system.settle_s * fs - 1e-9))
        attempts = [(self.calibration_window_s * 2 ** m, divmod(i, strength.shape[1])) for m in range(3) for i in order]
        for window, (b, j) in attempts:  # the strongest pairs first, then twice and four times as long
            seg = int(round(window * fs))
            cycles = 5 if system.bandwidth_hz is None else max(1, min(5, int(window * system.bandwidth_hz / 20)))
            tones = [float(f) for f in freqs] + [cycles / window, 2 * cycles / window]
            t0 = torch.tensor([i * (settle + seg) + settle for i in range(len(tones))], dtype=torch.float64) / fs
            pieces = []
            for i, f in enumerate(tones):
                t = (torch.arange(settle + seg, dtype=torch.float64) + i * (settle + seg)) / fs
                wave = centre.to(torch.float64).expand(settle + seg, -1).clone()
                wave[:, j] += amp[j] * torch.sin(2 * math.pi * f * t)
                pieces.append(wave)
            waves = torch.cat(pieces).clamp(low.to(torch.float64), high.to(torch.float64)).to(flat.dtype)
            out = system.measure_waveform(unflatten(waves, shapes), inputs[b : b + 1])[:, 0].reshape(waves.shape[0], -1)
            segs = out.to(torch.float64).reshape(len(tones), settle + seg, -1)[:, settle:]  # [F+1, seg, outs]
            z = _lockin(segs, torch.tensor(tones, dtype=torch.float64).unsqueeze(-1), t0, fs, "iq")[..., 0]  # [F+1, outs]
            k = int(z[-2].abs().argmax())
            ref = segs[-2, :, k]
            t = t0[-2] + torch.arange(seg, dtype=torch.float64) / fs
            w = 2 * math.pi * tones[-2] * t
            resid = ref - ref.mean() - 2 * (z[-2, k].real * torch.sin(w) + z[-2, k].imag * torch.cos(w))
            if z[-2, k].abs() > self.calibration_snr * resid.std() / math.sqrt(seg):
                zero = z[-2, k].abs() * torch.exp(1j * (2 * torch.angle(z[-2, k]) - torch.angle(z[-1, k])))
                h = z[:-2, k] / zero
                for f, hv in zip(freqs, h.tolist()):
                    self.calibration[(id(system), round(float(f), 9))] = complex(hv)
                self.calibration_cost = self.calibration_cost + (system.cost - before)
                return h
        self.calibration_cost = self.calibration_cost + (system.cost - before)
        raise MeasurementError(
            f"phase calibration failed: no control gives a response {self.calibration_snr:g}x above the noise at this "
            "operating point, "
            "even with 4x longer windows; calibrate elsewhere (HGE.calibrate(system, params, inputs)), lengthen "
            "calibration_window_s, or use phase='none'"
        )

    def _transfer(self, system: TimeDomainDevice, freqs: torch.Tensor, params=None, inputs=None) -> torch.Tensor:
        if self.phase == "none":
            return torch.ones(freqs.numel(), dtype=torch.complex128)
        missing = sorted({round(float(f), 9) for f in freqs} - {f for (s, f) in self.calibration if s == id(system)})
        if missing:
            self.calibrate(system, params, inputs, missing)
        return torch.tensor([self.calibration[(id(system), round(float(f), 9))] for f in freqs], dtype=torch.complex128)

    # ------------------------------------------------------------------ probes
    def _amplitudes(self, low: torch.Tensor, high: torch.Tensor, fraction: float | None = None) -> torch.Tensor:
        fraction = self.amplitude if fraction is None else fraction
        span = high - low
        fallback = self.amplitude_abs if self.amplitude_abs is not None else 0.01
        amp = torch.where(torch.isfinite(span), fraction * span, torch.full_like(span, fallback))
        if self.amplitude_abs is not None:
            amp = torch.full_like(span, self.amplitude_abs)
        return amp

    def _centre(self, value, low, high, amp, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre and amplitude so that ``centre ± amp`` lies in ``[low, high]`` (see ``at_bound``)."""
        room = torch.minimum(value - low, high - value)
        if self.at_bound == "refuse":
            if (room < amp).any():
                worst = float((amp - room).max())
                raise RangeError(
                    f"hge: a {what} modulation θ ± a would leave the safe range (by {worst:.4g}); refused, nothing sent. "
                    "Use at_bound='shrink' or a smaller amplitude"
                )
            return value, amp
        a = torch.minimum(amp, torch.maximum(room, amp / 2))
        if (2 * a > high - low).any():
            raise RangeError(f"hge: modulation amplitude exceeds half the safe range of a {what}; choose a smaller amplitude")
        centre = torch.maximum(torch.minimum(value, high - a), low + a)
        return centre, a

    def _probes(self, theta, bounds, system, inputs, input_bounds, input_grad, transfer: bool = True,
                point: tuple | None = None) -> WaveformProbes:
        flat, low, high, shapes = flatten_with_bounds(theta, bounds)
        centre, amp = self._centre(flat, low, high, self._amplitudes(low, high), "parameter")
        channels = flat.numel()
        in_centre = in_amp = None
        if input_grad:
            b = inputs.shape[0]
            x = inputs.detach().reshape(b, -1)
            if input_bounds is None:
                lo_in = torch.full_like(x[0], -math.inf)
                hi_in = torch.full_like(x[0], math.inf)
            else:
                lo_in, hi_in = (torch.as_tensor(v, dtype=x.dtype).reshape(-1) for v in input_bounds)
            lo_in, hi_in = lo_in.expand_as(x), hi_in.expand_as(x)
            in_centre, in_amp = self._centre(x, lo_in, hi_in, self._amplitudes(lo_in, hi_in, self.input_amplitude), "input")
            channels += x.shape[1]
        plan = self.plan(channels, system)
        n = plan.total_samples
        t = torch.arange(n, dtype=torch.float64) / plan.fs
        freqs = plan.channel_freqs()
        sines = torch.sin(2 * math.pi * t.unsqueeze(1) * freqs)  # [N, C]
        if plan.mode == "sequential":
            active = torch.zeros(n, channels, dtype=torch.float64)
            for c in range(channels):
                active[c * plan.segment : (c + 1) * plan.segment, c] = 1.0
            sines = sines * active
        p = flat.numel()
        waves = centre.to(torch.float64) + amp.to(torch.float64) * sines[:, :p]
        # rounding only: centre ± amp is inside the range by construction
        waves = torch.maximum(torch.minimum(waves, high.to(torch.float64)), low.to(torch.float64)).to(flat.dtype)
        probe_inputs = inputs
        if input_grad:
            x_wave = in_centre.to(torch.float64) + in_amp.to(torch.float64) * sines[:, None, p:]  # [N, B, n_in]
            x_wave = torch.maximum(torch.minimum(x_wave, hi_in.to(torch.float64)), lo_in.to(torch.float64))
            probe_inputs = x_wave.to(inputs.dtype).reshape(n, *inputs.shape)
        if transfer:
            # where to calibrate if needed: the device's own setting (global scope passes it as ``point``)
            own, at = point if point is not None else (theta, inputs)
            h = self._transfer(system, freqs, own, at)
        else:
            h = torch.ones(channels, dtype=torch.complex128)
        return WaveformProbes(
            unflatten(waves, shapes), probe_inputs, plan, amp, in_amp, h, shapes,
            None if inputs is None else tuple(inputs.shape), system.clip,
        )

    # ------------------------------------------------------------------ demodulation
    def _demodulate(self, signal: torch.Tensor, plan: FrequencyPlan) -> torch.Tensor:
        """``Z = X + iY`` per channel: ``[N, *rest] -> [*rest, C]`` complex128."""
        s, seg, settle = plan.segments, plan.segment, plan.settle_samples
        windows = signal.reshape(s, seg, *signal.shape[1:])[:, settle:]  # [S, N, *rest]
        t0 = (torch.arange(s, dtype=torch.float64) * seg + settle) / plan.fs
        if plan.mode == "parallel":
            z = _lockin(windows, torch.tensor(plan.freqs, dtype=torch.float64).unsqueeze(0), t0, plan.fs, self.demodulation)
            return z[0]  # [*rest, C]
        z = _lockin(windows, torch.tensor(plan.freqs, dtype=torch.float64).unsqueeze(1), t0, plan.fs, self.demodulation)
        return z[..., 0].movedim(0, -1)  # [*rest, C]

    # ------------------------------------------------------------------ backward
    def _backward(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.scope == "local":
            with gradient_path(model, "estimate", self):
                loss = loss_fn(model(x), y)
                loss.backward()
            return loss
        systems = systems_of(model)
        devices = [s for s in systems if isinstance(s, TimeDomainDevice)]
        if not devices or len(devices) != len(systems):
            raise ConfigError("HGE (global scope) needs every physical layer to hold a TimeDomainDevice")
        if len({(d.fs, d.settle_s) for d in devices}) != 1:
            raise ConfigError("HGE (global scope) plays one waveform: all devices must share fs and settle_s")
        if self.phase == "calibrated" and len(devices) > 1:
            raise ConfigError("phase calibration in the global scope supports one device; use scope='local'")
        device = devices[0]
        theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        layer = next(layer for _, layer in physical_layers(model) if layer.system is device)
        own = {n: p.detach() for n, p in layer.device_parameters().items()}
        n_in = len(device.input_shape)
        at = x if tuple(x.shape[x.dim() - n_in:]) == device.input_shape and x.dim() == n_in + 1 else None
        probes = self._probes(theta, parameter_bounds(model), device, None, None, False, point=(own, at))
        clipped = [d.clipped_samples for d in devices]
        with contextlib.ExitStack() as stack, torch.no_grad():
            for d in devices:
                stack.enter_context(d.waveform_mode())
            if self.loss_signal:
                answers = vmap(lambda p: loss_fn(functional_call(model, p, (x,)), y), randomness="same")(probes.params)
            else:
                answers = vmap(lambda p: functional_call(model, p, (x,)), randomness="same")(probes.params)
        if any(d.clipped_samples > c for d, c in zip(devices, clipped)):
            raise MeasurementError(
                "hge: the amplifier clipped during the window; the gradient would be wrong. Reduce the modulation "
                "amplitude or move the operating point"
            )
        plan = probes.plan
        first = answers[plan.settle_samples : plan.segment]
        if self.loss_signal:
            est = self.tell(probes, answers)
            loss = first.to(torch.float64).mean().to(answers.dtype)
        else:
            out0 = first.mean(0).detach().requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(out0, y)
                (cot,) = torch.autograd.grad(loss, out0)
            est = self.tell(probes, answers, cot)
        accumulate_grads(model, est.grads)
        return loss.detach()

    def vjp(
        self,
        system: PhysicalSystem,
        params: dict[str, torch.Tensor],
        inputs: torch.Tensor,
        outputs: torch.Tensor,
        cotangent: torch.Tensor,
        need_input_grad: bool = True,
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Estimated ``(vᵀ ∂y/∂x, vᵀ ∂y/∂θ)`` of one time-domain device, ``v = cotangent`` (local scope).

        The device's controls (and, if ``need_input_grad``, its inputs) are modulated; one window
        per data point. The input gradient needs input ranges (inputs are modulated within them).
        """
        theta = {n: p.detach() for n, p in params.items()}
        if not theta and not need_input_grad:
            return None, {}
        probes = self.ask(theta, inputs.detach(), system=system, input_grad=need_input_grad)
        clipped = system.clipped_samples
        answers = system.measure_waveform(probes.params, probes.inputs)
        if system.clipped_samples > clipped:
            raise MeasurementError("hge: the amplifier clipped during the window; reduce the modulation amplitude")
        est = self.tell(probes, answers, cotangent)
        return est.input_grad, est.grads

    def __repr__(self) -> str:
        return (
            f"HGE(window_s={self.window_s}, mode={self.mode!r}, phase={self.phase!r}, sign_from_phase={self.sign_from_phase}, "
            f"amplitude={self.amplitude}, order={self.plan_options['order']}, loss_signal={self.loss_signal}, scope={self.scope!r})"
        )


# ===================================================================================== helpers
def _lockin(windows: torch.Tensor, freqs: torch.Tensor, t0: torch.Tensor, fs: float, how: str) -> torch.Tensor:
    """Lock-in of ``windows [S, N, *rest]`` at ``freqs [S, M]``; window ``s`` starts at time ``t0[s]``.

    Returns ``Z = X + iY`` ``[S, *rest, M]``: ``X = ⟨w̃ sin ωt⟩``, ``Y = ⟨w̃ cos ωt⟩`` with absolute ``t``.
    """
    s, n = windows.shape[:2]
    rest = windows.shape[2:]
    w = windows - windows.mean(1, keepdim=True)
    w = w.reshape(s, n, -1)  # [S, N, R]
    omega = 2 * math.pi * freqs  # [S, M]
    if how == "iq":
        t = t0.unsqueeze(1) + torch.arange(n, dtype=torch.float64) / fs  # [S, N]
        phase = omega.unsqueeze(1) * t.unsqueeze(2)  # [S, N, M]
        x = torch.einsum("snr,snm->srm", w, torch.sin(phase)) / n
        yq = torch.einsum("snr,snm->srm", w, torch.cos(phase)) / n
        z = torch.complex(x, yq)
    else:
        spec = torch.fft.rfft(w, dim=1)  # [S, N//2+1, R]
        bins = torch.round(freqs * n / fs).long()  # [S, M]
        picked = torch.gather(spec, 1, bins.unsqueeze(-1).expand(-1, -1, spec.shape[-1]))  # [S, M, R]
        c = picked.conj() / n * torch.exp(1j * omega * t0.unsqueeze(1)).unsqueeze(-1)  # = <w e^{iωt}> = Y + iX
        z = torch.complex(c.imag, c.real).transpose(1, 2)  # [S, R, M]
    return z.reshape(s, *rest, freqs.shape[1])


def _midpoint_inputs(system: TimeDomainDevice) -> torch.Tensor:
    bounds = system.input_bounds()
    if bounds is None:
        return torch.zeros(1, *system.input_shape)
    low, high = bounds
    return ((low + high) / 2).reshape(1, *system.input_shape)
