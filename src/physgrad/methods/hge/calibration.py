"""Per-channel transfer calibration for HGE: probes of their own, pure functions, a state record.

A channel ``j`` (a control or input electrode) modulated at ``f`` reads, to first order,
``Z_j(f) = (a_j/2) (∂I/∂θ_j) H_j(f)``, where ``H_j`` is the transfer of the path the modulation
travels (the electrode's own dynamics, the device, the amplifier's low-pass and delay). The
calibration measures ``H_j(f_j)`` for every channel at once, at one operating point, in three
segments of ``calibration_window_s`` each (one waveform, one device query):

1. *fast*: every channel at its own planned frequency ``f_j`` (the plan of the device's own
   channels, controls then inputs), giving ``Z_j(f_j)``;
2. *slow*: every channel at its own low frequency ``r_j`` (a collision-free plan with five cycles
   upward in the calibration window), giving ``Z_j(r_j)``;
3. *slow × 2*: every channel at ``2 r_j``, giving ``Z_j(2 r_j)``.

The zero-frequency reading is extrapolated from the slow pair (:func:`transfer_from_tones`):
``arg Z_j(0) = 2 arg Z_j(r_j) − arg Z_j(2r_j)`` (the phase of a low-pass and delay is linear in
``f`` well below the cut-off) and ``|Z_j(0)| = |Z_j(r_j)|``, so ``H_j(f_j) = Z_j(f_j)/Z_j(0)``. A quasi-static response gives the
same first-harmonic reading at every frequency, kinks and curvature included, so the ratio does not
depend on the operating point. Errors are ``O((2r/f_c)³)`` in phase and ``(r/f_c)²/2`` in magnitude (0.3 % at 150 Hz).

``per_channel=False`` (default): the channels share one chain (the simulated DNPU's amplifier),
so one first-order-plus-delay model is fitted to every reliable channel's ``H_j(f_j)`` (weighted by
SNR²; :func:`common_fit`), averaging the noise of all channels. ``per_channel=True``: each channel
keeps its own ``H_j`` (electrode-dependent dynamics).

From each ``H_j(f_j)`` a first-order-plus-delay model is solved exactly
(:func:`first_order_fit`: ``|H| = 1/√(1+(f/f_c)²)``, ``arg H = −atan(f/f_c) − 2πfd``, the smallest
``d ≥ 0``); it gives ``H_j`` at other frequencies (sequential mode, another plan) and the lab's
*measured* bandwidth and delay (settling = ``d + 10τ``). Channels whose slow reading is below
``calibration_snr`` times its lock-in noise borrow the median model of the reliable channels
(``per_channel=True``); the shared-chain fit pools every channel above 5× its noise and needs their
combined SNR ``√Σ snr_j²`` above ``calibration_snr``. Otherwise the calibration fails with
:class:`MeasurementError`.

Boon et al. (arXiv 2105.11233) calibrate the phase per electrode; their devices' electrodes have
different dynamics (issue 11, §5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ...cost import Cost
from ...errors import MeasurementError
from .lockin import lockin
from .plan import plan_frequencies

REF_MIN_CYCLES = 5


@dataclass(frozen=True)
class Calibration:
    """One device's measured per-channel transfer (what a checkpoint keeps, keyed by device identity)."""

    freqs: tuple[float, ...]  # frequency at which each channel's H was measured
    transfer: tuple[complex, ...]  # H_j(f_j)
    snr: tuple[float, ...]
    bandwidth_hz: tuple[float, ...]  # fitted first-order cut-off per channel (inf: no pole seen)
    delay_s: tuple[float, ...]
    gain: tuple[float, ...]
    reliable: tuple[bool, ...]
    n_controls: int
    cost: Cost = Cost()
    fs: float | None = None

    @property
    def channels(self) -> int:
        return len(self.freqs)

    def at(self, channel: int, f: float) -> complex:
        """``H_channel(f)``: the measured value at its own frequency, the fitted model elsewhere."""
        if abs(f - self.freqs[channel]) < 1e-9 * max(1.0, f):
            return self.transfer[channel]
        return model_transfer(f, self.bandwidth_hz[channel], self.delay_s[channel], self.gain[channel], self.fs)

    def inputs_at(self, f: float) -> complex:
        """Transfer seen by a modulation that reaches the device through its inputs (mean over input electrodes)."""
        idx = list(range(self.n_controls, self.channels)) or list(range(self.channels))
        return complex(sum(self.at(i, f) for i in idx) / len(idx))

    @property
    def settle_s(self) -> float:
        """Measured settling: the slowest reliable channel's ``d + 10τ`` (the old default ``d + 7τ`` with a margin
        for the fit's trade between ``τ`` and ``d``)."""
        worst = 0.0
        for fc, d, ok in zip(self.bandwidth_hz, self.delay_s, self.reliable):
            if ok:
                tau = 0.0 if math.isinf(fc) else 1.0 / (2 * math.pi * fc)
                worst = max(worst, d + 10 * tau)
        return worst

    def as_state(self) -> dict:
        return {
            "freqs": list(self.freqs), "transfer_re": [z.real for z in self.transfer],
            "transfer_im": [z.imag for z in self.transfer], "snr": list(self.snr),
            "bandwidth_hz": list(self.bandwidth_hz), "delay_s": list(self.delay_s), "gain": list(self.gain),
            "reliable": list(self.reliable), "n_controls": self.n_controls, "cost": self.cost.as_dict(), "fs": self.fs,
        }

    @classmethod
    def from_state(cls, state: dict) -> "Calibration":
        return cls(
            tuple(float(f) for f in state["freqs"]),
            tuple(complex(a, b) for a, b in zip(state["transfer_re"], state["transfer_im"])),
            tuple(float(s) for s in state["snr"]), tuple(float(b) for b in state["bandwidth_hz"]),
            tuple(float(d) for d in state["delay_s"]), tuple(float(g) for g in state["gain"]),
            tuple(bool(r) for r in state["reliable"]), int(state["n_controls"]), Cost(**state["cost"]),
            None if state.get("fs") is None else float(state["fs"]),
        )


def model_transfer(f: float, bandwidth_hz: float, delay_s: float, gain: float = 1.0, fs: float | None = None) -> complex:
    """``g e^{−i2πfd} / (1 + i f/f_c)``; with ``fs`` the pole as the sampled chain sees it,
    ``α / (1 − (1−α) e^{−i2πf/fs})``, ``α = 1 − e^{−2π f_c/fs}`` (a one-pole IIR: an RC read by an ADC)."""
    if math.isinf(bandwidth_hz):
        pole = 1.0
    elif fs is None:
        pole = 1.0 + 1j * f / bandwidth_hz
    else:
        alpha = 1.0 - math.exp(-2 * math.pi * bandwidth_hz / fs)
        pole = (1.0 - (1.0 - alpha) * complex(math.cos(-2 * math.pi * f / fs), math.sin(-2 * math.pi * f / fs))) / alpha
    return complex(gain * complex(math.cos(-2 * math.pi * f * delay_s), math.sin(-2 * math.pi * f * delay_s)) / pole)


def first_order_fit(f: float, h: complex) -> tuple[float, float, float]:
    """``(f_c, d, g)`` of the first-order-plus-delay chain through ``H(f) = h`` (exact; smallest ``d ≥ 0``)."""
    mag = abs(h)
    if mag < 1.0 - 1e-12:
        fc = f / math.sqrt(1.0 / mag ** 2 - 1.0)
        gain = 1.0
    else:
        fc, gain = math.inf, mag
    pole_phase = 0.0 if math.isinf(fc) else -math.atan(f / fc)
    rest = math.atan2(h.imag, h.real) - pole_phase  # = -2π f d (mod 2π)
    lag = (-rest + math.pi / 2) % (2 * math.pi) - math.pi / 2  # in [-90°, 270°): a small lead is noise, not a delay
    return fc, max(0.0, lag / (2 * math.pi * f)), gain


def common_fit(freqs: Sequence[float], h: Sequence[complex], weights: Sequence[float],
               fs: float | None = None) -> tuple[float, float]:
    """``(f_c, d)`` of one first-order-plus-delay chain fitted to every channel's ``H_j(f_j)`` (weighted least squares)."""
    import numpy as np
    from scipy.optimize import least_squares

    f = np.asarray(freqs, dtype=float)
    z = np.asarray(h, dtype=complex)
    w = np.sqrt(np.asarray(weights, dtype=float))
    starts = [first_order_fit(fi, complex(zi)) for fi, zi in zip(f, z)]
    fc0 = float(np.median([min(s[0], 1e7) for s in starts]))
    d0 = float(np.median([s[1] for s in starts]))

    def resid(p):
        fc, d = math.exp(p[0]), p[1]
        m = np.array([model_transfer(fi, fc, d, 1.0, fs) for fi in f])
        r = w * (z - m)
        return np.concatenate([r.real, r.imag])

    fit = least_squares(resid, [math.log(max(fc0, f.max() * 1e-3)), d0],
                        bounds=([math.log(f.max() * 1e-3), 0.0], [math.log(1e9), 1.0 / f.min()]))
    fc = math.exp(fit.x[0])
    return (math.inf if fc > 1e8 else fc), float(fit.x[1])


def transfer_from_tones(z_fast: torch.Tensor, z_ref: torch.Tensor, z_ref2: torch.Tensor) -> torch.Tensor:
    """``H_j(f_j) = Z_j(f_j) / Z_j(0)``, ``Z_j(0)`` extrapolated from the readings at ``r_j`` and ``2r_j``."""
    phase0 = 2 * torch.angle(z_ref) - torch.angle(z_ref2)
    zero = z_ref.abs() * torch.exp(1j * phase0)
    return z_fast / zero


@dataclass
class CalibrationProbes:
    """One waveform (three segments, see module docstring) played at one data point: one device query."""

    params: dict[str, torch.Tensor]
    inputs: torch.Tensor  # [N, 1, *input_shape] (inputs modulated) or [1, *input_shape]
    fs: float
    segment: int  # samples per segment (settle + window)
    settle: int
    fast: tuple[float, ...]
    ref: tuple[float, ...]
    ramp_samples: int
    n_controls: int
    identity: str

    @property
    def count(self) -> int:
        return 1

    @property
    def window_samples(self) -> int:
        return 3 * self.segment

    @property
    def cost(self) -> Cost:
        return Cost(1, 1, (self.window_samples + self.ramp_samples) / self.fs)

    def answer(self, system) -> torch.Tensor:
        return system.measure_waveform(self.params, self.inputs)

    def shard(self, n: int) -> list["CalibrationProbes"]:
        return [self]

    def join(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return parts[0]


def reference_frequencies(channels: int, fs: float, window_s: float) -> list[float]:
    """Low, collision-free (order 2) frequencies from five cycles up; their doubles are collision-free too."""
    return plan_frequencies(channels, fs, window_s, min_cycles=REF_MIN_CYCLES, order=2)


def calibration_waveform(
    centre: torch.Tensor, amp: torch.Tensor, fast: Sequence[float], ref: Sequence[float], fs: float, segment: int
) -> torch.Tensor:
    """``[3·segment, C]`` float64: every channel at ``fast``, then at ``ref``, then at ``2·ref``."""
    pieces = []
    for i, freqs in enumerate((fast, ref, [2 * r for r in ref])):
        t = (torch.arange(segment, dtype=torch.float64) + i * segment) / fs
        f = torch.tensor(list(freqs), dtype=torch.float64)
        pieces.append(centre.to(torch.float64) + amp.to(torch.float64) * torch.sin(2 * math.pi * t.unsqueeze(1) * f))
    return torch.cat(pieces)


def read_calibration(probes: CalibrationProbes, signal: torch.Tensor, snr_floor: float,
                     per_channel: bool = False) -> Calibration:
    """Demodulate a calibration answer ``[3·segment, 1, *out]`` into a :class:`Calibration` (pure).

    The output element with the largest slow readings carries the calibration. Raises
    :class:`MeasurementError` when no channel's slow reading is ``snr_floor`` times its noise.
    """
    seg, settle, fs = probes.segment, probes.settle, probes.fs
    flat = signal.to(torch.float64).reshape(signal.shape[0], -1)
    windows = flat.reshape(3, seg, -1)[:, settle:]  # [3, N, R]
    n = windows.shape[1]
    t0 = (torch.arange(3, dtype=torch.float64) * seg + settle) / fs
    freqs = torch.stack([torch.tensor(probes.fast), torch.tensor(probes.ref), 2 * torch.tensor(probes.ref)]).double()
    z = lockin(windows, freqs, t0, fs, "iq")  # [3, R, C]
    # noise of the slow window: the residual after removing every channel's tone
    t = t0[1] + torch.arange(n, dtype=torch.float64) / fs
    w = 2 * math.pi * t.unsqueeze(1) * freqs[1]  # [N, C]
    fit = 2 * (torch.sin(w) @ z[1].real.T + torch.cos(w) @ z[1].imag.T)  # [N, R]
    resid = windows[1] - windows[1].mean(0, keepdim=True) - fit
    noise = resid.std(0) / math.sqrt(n)  # [R]
    k = int(z[1].abs().sum(-1).argmax())
    snr = z[1, k].abs() / noise[k].clamp_min(1e-300)
    h = transfer_from_tones(z[0, k], z[1, k], z[2, k])
    finite = [bool(torch.isfinite(v)) for v in h]
    if per_channel:
        reliable = [bool(s >= snr_floor) and ok for s, ok in zip(snr.tolist(), finite)]
    else:  # one shared chain: the channels' readings pool (combined SNR = √Σ snr²); each must still show its phase
        reliable = [bool(s >= min(5.0, snr_floor)) and ok for s, ok in zip(snr.tolist(), finite)]
        if math.sqrt(sum(float(s) ** 2 for s, ok in zip(snr, reliable) if ok)) < snr_floor:
            reliable = [False] * len(reliable)
    if not any(reliable):
        raise MeasurementError(
            f"hge: transfer calibration failed: no channel responds {snr_floor:g}x above the noise at this operating "
            f"point (best {float(snr.max()):.3g}x); calibrate elsewhere (HGE.calibrate(system, params, inputs)), "
            "lengthen calibration_window_s, or use phase='none'"
        )
    fits = []
    for f, v in zip(probes.fast, h.tolist()):
        fc, d, g = first_order_fit(f, complex(v))
        if g == 1.0:  # refine for the sampled pole through the same single point
            fc, d = common_fit([f], [complex(v)], [1.0], fs)
        fits.append((fc, d, g))
    if not per_channel:
        idx = [j for j, ok in enumerate(reliable) if ok]
        fc, d = common_fit([probes.fast[j] for j in idx], [complex(h[j]) for j in idx],
                           [float(snr[j]) ** 2 for j in idx], fs)
        transfer = tuple(model_transfer(f, fc, d, 1.0, fs) for f in probes.fast)
        c = len(probes.fast)
        return Calibration(tuple(probes.fast), transfer, tuple(float(x) for x in snr), (fc,) * c, (d,) * c,
                           (1.0,) * c, tuple(reliable), probes.n_controls, probes.cost, fs)
    good = [fit for fit, ok in zip(fits, reliable) if ok]
    median = sorted(good, key=lambda m: m[1] + (0.0 if math.isinf(m[0]) else 1 / (2 * math.pi * m[0])))[len(good) // 2]
    transfer = []
    for j, ok in enumerate(reliable):
        if not ok:
            fits[j] = median
            transfer.append(model_transfer(probes.fast[j], *median, fs))
        else:
            transfer.append(complex(h[j]))
    return Calibration(
        tuple(probes.fast), tuple(transfer), tuple(float(s) for s in snr), tuple(m[0] for m in fits),
        tuple(m[1] for m in fits), tuple(m[2] for m in fits), tuple(reliable), probes.n_controls, probes.cost, fs,
    )
