"""Lock-in (homodyne) demodulation: pure functions on sampled signals.

Multiplying the mean-removed signal by ``sin`` and ``cos`` at ``f`` and averaging over a window of
whole cycles gives ``Z = X + iY`` with ``X = ⟨w̃ sin ωt⟩``, ``Y = ⟨w̃ cos ωt⟩`` (absolute time ``t``),
so a tone ``A sin(ωt + φ)`` reads ``Z = (A/2) e^{iφ}`` (Boon et al., arXiv 2105.11233, Eq. 3–4).
``how="fft"`` reads the same numbers from the planned FFT bins.
"""

from __future__ import annotations

import math

import torch

from .plan import FrequencyPlan

HOWS = ("iq", "fft")


def lockin(windows: torch.Tensor, freqs: torch.Tensor, t0: torch.Tensor, fs: float, how: str = "iq") -> torch.Tensor:
    """Lock-in of ``windows [S, N, *rest]`` at ``freqs [S, M]``; window ``s`` starts at time ``t0[s]``.

    Returns ``Z = X + iY`` ``[S, *rest, M]`` (complex128).
    """
    s, n = windows.shape[:2]
    rest = windows.shape[2:]
    w = windows.to(torch.float64)
    w = (w - w.mean(1, keepdim=True)).reshape(s, n, -1)  # [S, N, R]
    freqs = freqs.to(torch.float64)
    omega = 2 * math.pi * freqs  # [S, M]
    t0 = t0.to(torch.float64)
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


def demodulate(signal: torch.Tensor, plan: FrequencyPlan, how: str = "iq") -> torch.Tensor:
    """``Z`` of every channel of ``plan`` from a played signal: ``[N, *rest] -> [*rest, C]`` complex128.

    Parallel plans read every channel from the one window; sequential plans read channel ``c`` from
    window ``c``. The first ``settle_samples`` of each segment are dropped.
    """
    s, seg, settle = plan.segments, plan.segment, plan.settle_samples
    windows = signal.reshape(s, seg, *signal.shape[1:])[:, settle:]  # [S, N, *rest]
    t0 = (torch.arange(s, dtype=torch.float64) * seg + settle) / plan.fs
    if plan.mode == "parallel":
        return lockin(windows, torch.tensor(plan.freqs, dtype=torch.float64).unsqueeze(0), t0, plan.fs, how)[0]
    z = lockin(windows, torch.tensor(plan.freqs, dtype=torch.float64).unsqueeze(1), t0, plan.fs, how)
    return z[..., 0].movedim(0, -1)


def lockin_noise(window: torch.Tensor, freq: float, z: torch.Tensor, t0: float, fs: float) -> torch.Tensor:
    """Standard deviation of a lock-in reading, from the residual after removing the fitted tone.

    ``window [N, *rest]``, ``z [*rest]`` its reading at ``freq``: residual std / √N (white noise).
    """
    n = window.shape[0]
    t = t0 + torch.arange(n, dtype=torch.float64) / fs
    w = 2 * math.pi * freq * t
    shape = (n,) + (1,) * (window.dim() - 1)
    fit = 2 * (z.real.unsqueeze(0) * torch.sin(w).reshape(shape) + z.imag.unsqueeze(0) * torch.cos(w).reshape(shape))
    resid = window.to(torch.float64) - window.to(torch.float64).mean(0, keepdim=True) - fit
    return resid.std(0) / math.sqrt(n)


def railed(samples: torch.Tensor, clip: tuple[float, float] | None, *, tolerance: float = 0.0) -> int:
    """How many recorded samples sit on an amplifier rail (at or beyond ``clip``): what a lab can see."""
    if clip is None:
        return 0
    lo, hi = clip
    return int(((samples <= lo + tolerance) | (samples >= hi - tolerance)).sum())
