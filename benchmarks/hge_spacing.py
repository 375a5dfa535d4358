"""HGE error against frequency spacing Δf and measurement time: single- vs multi-parameter extraction (issue 11 §5)

The paper's analysis (Boon et al., arXiv 2105.11233): at random operating points of a DNPU, the
five control gradients are extracted either one parameter at a time (*single*: only control ``i``
modulated, at its own frequency, for ``T`` seconds — five windows per point) or all at once
(*multi*: the five controls at ``f_i = f_0 + iΔf`` in one window of ``T`` seconds), with
Δf = 10 Hz and 40 Hz, white output noise of 10⁻⁵ nA²/Hz (the paper's figure), at measurement
times ``T`` from 10 ms to 0.5 s (0.1 s in the paper's headline). In the multi-parameter window the
channels are orthogonal only when ``T·Δf`` is a whole number (beyond it, neighbouring tones leak
into each other, ``sinc``-like in ``T·Δf``); the single-parameter window has no neighbours and pays
five windows instead of one. The device is instantaneous (no low-pass, no delay: the paper's
simulated analysis), sampled at 10 kHz, no ADC step, so the error is noise plus cross-talk; the
lock-in is :func:`physgrad.methods.hge.lockin.lockin` on windows that need not hold whole cycles
(HGE's planner would refuse them; this benchmark measures why). Error: relative error of the five
extracted derivatives against autograd through the surrogate, median and 90th percentile over the
operating points.

    python -m benchmarks.hge_spacing [--device PATH.npz] [--points N] [--quick] [--out F.json]
"""

from __future__ import annotations

import math
import time

import torch

from benchmarks._common import markdown_table, parse_args, write_json
from benchmarks.hge_fidelity import device_argument, exact_gradients, random_settings, save_plot
from physgrad.methods.hge.lockin import lockin
from physgrad.methods.hge.plan import mixing_collisions
from physgrad.systems import time_domain_dnpu

FS = 10_000.0
F0 = 150.0  # Hz: the lowest channel
SPACINGS = (10.0, 40.0)
AMPLITUDE = 0.02  # fraction of each control's range (the paper: a few %)
CHUNK = 50  # operating points played back to back in one waveform (the device is instantaneous)


def extract(device, controls: torch.Tensor, inputs: torch.Tensor, freqs: list[float], window_s: float,
            active: list[int]) -> torch.Tensor:
    """Derivatives ``[n, 5]`` (only ``active`` channels modulated; others read as they come) from one window per point."""
    n_pts = controls.shape[0]
    n = int(round(window_s * FS))
    low, high = device.parameter_bounds()["controls"]
    amp = AMPLITUDE * (high - low)
    t = torch.arange(n, dtype=torch.float64) / FS
    f = torch.tensor(freqs, dtype=torch.float64)
    mask = torch.zeros(5, dtype=torch.float64)
    mask[active] = 1.0
    wave = (amp.double() * mask) * torch.sin(2 * math.pi * t.unsqueeze(1) * f)  # [n, 5]
    centre = torch.maximum(torch.minimum(controls.double(), (high - amp).double()), (low + amp).double())
    out = []
    for start in range(0, n_pts, CHUNK):
        c = centre[start : start + CHUNK]  # [P, 5]
        p = c.shape[0]
        play = (c.unsqueeze(1) + wave.unsqueeze(0)).reshape(p * n, 5).float()
        x = inputs[start : start + CHUNK, 0].unsqueeze(1).expand(p, n, -1).reshape(p * n, 1, -1)
        signal = device.measure_waveform({"controls": play}, x)[:, 0, 0].reshape(p, n, 1)  # [P, n, 1]
        z = lockin(signal, f.expand(p, -1), torch.zeros(p, dtype=torch.float64), FS, "iq")[:, 0]  # [P, 5]
        out.append(2 * z.real / amp.double())
    return torch.cat(out)


def main(argv=None) -> dict:
    def extra(parser) -> None:
        device_argument(parser)
        parser.add_argument("--points", type=int, default=None,
                            help="random operating points (default 1000, the paper's; 100 with --quick)")

    args = parse_args(__doc__.splitlines()[0], extra, argv)
    torch.set_num_threads(args.threads or 1)
    n = args.points or (100 if args.quick else 1000)
    if n < 2:
        raise SystemExit(f"--points must be >= 2, got {n}")
    windows = [0.01, 0.025, 0.05, 0.1, 0.2] if args.quick else [0.01, 0.015, 0.02, 0.025, 0.04, 0.05, 0.075, 0.1,
                                                               0.15, 0.2, 0.3, 0.5]
    t_start = time.time()
    device = time_domain_dnpu(args.device, fs=FS, bandwidth_hz=None, delay_s=0.0, white_psd=1e-5, clip=None,
                              adc_bits=None, dac_ramp_s=0.0, seed=11)
    dnpu = device.static
    controls, inputs = random_settings(dnpu, n, seed=0)
    exact = exact_gradients(dnpu, controls, inputs).double()
    norm = exact.norm(dim=1).clamp_min(1e-12)
    rows, figures, curves = [], {}, {}
    for df in SPACINGS:
        freqs = [F0 + i * df for i in range(5)]
        assert not mixing_collisions([int(f) for f in freqs], 2), freqs  # no 2nd-order product on a channel
        for mode in ("multi", "single"):
            med, p90 = [], []
            for w in windows:
                if mode == "multi":
                    est = extract(device, controls, inputs, freqs, w, list(range(5)))
                else:
                    est = torch.stack([extract(device, controls, inputs, freqs, w, [i])[:, i] for i in range(5)], 1)
                rel = (est - exact).norm(dim=1) / norm
                med.append(float(rel.median()))
                p90.append(float(rel.quantile(0.9)))
                point_s = w if mode == "multi" else 5 * w
                rows.append([f"{df:g}", mode, f"{w:g}", point_s, f"{w * df:g}", med[-1], p90[-1]])
                figures[f"{mode}_df{df:g}_T{w:g}_median_relative_error"] = med[-1]
            curves[(df, mode)] = (med, p90)
    for df in SPACINGS:
        figures[f"multi_over_single_df{df:g}_T0.1"] = (
            figures[f"multi_df{df:g}_T0.1_median_relative_error"] / figures[f"single_df{df:g}_T0.1_median_relative_error"])
    figures["operating_points"] = n
    figures["seconds"] = time.time() - t_start
    print(f"## HGE error vs frequency spacing and measurement time on {dnpu.name} ({n} random operating points, "
          "white noise 1e-5 nA²/Hz, instantaneous device, 10 kHz)\n")
    print(markdown_table(rows, ["Δf (Hz)", "extraction", "window T (s)", "device s per point", "T·Δf",
                                "median rel. error", "90% rel. error"]))
    print(f"\nat T = 0.1 s: multi / single median error = {figures['multi_over_single_df10_T0.1']:.3g} (Δf 10 Hz), "
          f"{figures['multi_over_single_df40_T0.1']:.3g} (Δf 40 Hz)")
    _plot(args, dnpu.name, windows, curves)
    write_json(args.out, figures)
    return figures


def _plot(args, name, windows, curves) -> None:
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for (df, mode), (med, p90) in curves.items():
        style = "o-" if mode == "multi" else "s--"
        a.loglog(windows, med, style, label=f"{mode}, Δf = {df:g} Hz")
        b.loglog([w * (1 if mode == "multi" else 5) for w in windows], med, style, label=f"{mode}, Δf = {df:g} Hz")
    a.set_xlabel("window T per extraction (s)")
    b.set_xlabel("device seconds per operating point (single: 5 windows)")
    for ax in (a, b):
        ax.set_ylabel("median relative error")
        ax.axvline(0.1, color="0.8", lw=0.8, zorder=0)
        ax.legend(fontsize=8)
    a.set_title(f"error vs measurement time ({name})")
    b.set_title("at equal device time per point")
    fig.tight_layout()
    save_plot(args, fig, "hge_spacing", name)


if __name__ == "__main__":
    main()
