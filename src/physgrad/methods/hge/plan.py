"""Frequency plans for homodyne gradient extraction (Boon et al., arXiv 2105.11233, Methods).

Every channel ``i`` is modulated at its own frequency ``f_i``, a whole number of cycles in the
demodulation window (so distinct bins are exactly orthogonal), below the device bandwidth the
user states and below Nyquist, chosen so that no mixing product ``Σ_j n_j f_j`` with
``2 ≤ Σ|n_j| ≤ order`` lands on a channel (with ``order=2`` harmonics and sums/differences of
pairs never alias; the authors' odd multiples of a base frequency, ``odd=True``, are one such plan).

:func:`modulation_amplitudes` is the rule that scales amplitudes with frequency (issue 11, §5).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ...errors import ConfigError


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



def modulation_amplitudes(
    base: torch.Tensor,
    freqs: Sequence[float],
    *,
    rule: str = "flat",
    bandwidth_hz: float | None = None,
    white_psd: float = 0.0,
    flicker_psd_1hz: float = 0.0,
    max_ratio: float = 2.0,
) -> torch.Tensor:
    """Per-channel amplitudes ``a_i`` from the nominal ones ``base`` by a stated rule.

    ``"flat"``: ``a_i = base_i`` (the paper's text). ``"equal_snr"``: the lock-in reading of channel
    ``i`` is ``a_i |∂I/∂θ_i| |H(f_i)| / 2`` against a noise of ``√(S(f_i)/(2T))``, so every channel
    gets the same signal-to-noise ratio per unit slope when ``a_i ∝ √S(f_i) / |H(f_i)|``, with the
    user's nominal noise ``S(f) = S_w + S_f/f`` and first-order bandwidth ``f_c``
    (``|H(f)| = 1/√(1 + (f/f_c)²)``). With 1/f noise this gives the authors' larger amplitudes at low
    frequency; with a low-pass it raises them towards the cut-off. The factor is normalised to 1 at
    the geometric mean and clamped to ``[1/max_ratio, max_ratio]`` so no channel leaves the small-
    signal regime; range safety (``at_bound``) applies afterwards.
    """
    if rule == "flat" or not len(freqs):
        return base
    if rule != "equal_snr":
        raise ConfigError(f"amplitude_rule must be 'flat' or 'equal_snr', got {rule!r}")
    f = torch.as_tensor(list(freqs), dtype=torch.float64)
    noise = white_psd + flicker_psd_1hz / f
    if not bool((noise > 0).all()):
        noise = torch.ones_like(f)
    gain = torch.ones_like(f) if bandwidth_hz is None else 1.0 / torch.sqrt(1.0 + (f / bandwidth_hz) ** 2)
    factor = torch.sqrt(noise) / gain
    factor = factor / torch.exp(torch.log(factor).mean())
    factor = factor.clamp(1.0 / max_ratio, max_ratio)
    return base * factor.to(base.dtype)
