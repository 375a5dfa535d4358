"""How close is a homodyne gradient to the exact one? (Boon et al., arXiv 2105.11233; issue 4, task 1)

Random settings of all seven electrodes of a DNPU (two held as inputs, five controls modulated),
the paper's noise level (10⁻⁵ nA²/Hz white) and a 0.1 s window: HGE's gradient of the output
current with respect to the controls against autograd through the surrogate. Also: parallel vs
sequential, window length (the noise part of the error should fall as 1/√T), frequency spacing,
phase handling (calibrated, none, sign-from-phase) and 1/f noise.

    python -m benchmarks.hge_fidelity [--device PATH.npz] [--quick] [--out F.json]
"""

from __future__ import annotations

import math
import time

import torch

from benchmarks._common import markdown_table, parse_args, plot_path, save_figure, write_json
from physgrad.methods import HGE
from physgrad.systems import time_domain_dnpu


def device_argument(parser) -> None:
    parser.add_argument("--device", default=None, help="surrogate .npz in the shared format (default: built-in synthetic DNPU)")


def save_plot(args, fig, bench: str, device_name: str) -> None:
    """Write the figure beside the docs: ``BENCH.png`` for the built-in device, ``BENCH_<device>.png`` else."""
    save_figure(fig, plot_path(args, bench if args.device is None else f"{bench}_{device_name}"))


def random_settings(dnpu, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uniform random electrode settings: controls ``[n, 5]`` and inputs ``[n, 1, 2]``."""
    g = torch.Generator().manual_seed(seed)
    v = dnpu.voltage_min + (dnpu.voltage_max - dnpu.voltage_min) * torch.rand(n, 7, generator=g)
    return v[:, dnpu.control_electrodes], v[:, dnpu.input_electrodes].unsqueeze(1)


def exact_gradients(dnpu, controls: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """d I / d controls by autograd through the surrogate, ``[n, 5]`` (the oracle)."""
    c = controls.clone().requires_grad_(True)
    out = dnpu.net(dnpu.electrode_voltages(c, inputs))  # [n, 1, 1]
    (g,) = torch.autograd.grad(out.sum(), c)
    return g


def hge_gradients(method: HGE, device, controls: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """One HGE estimate per setting (ask → play → tell); returns ``[n, 5]`` and device seconds used."""
    before = device.device_seconds - method.calibration_cost.device_seconds
    out = []
    for c, x in zip(controls, inputs):
        probes = method.ask({"controls": c}, x, system=device)
        answers = method.carrier(device, probes)
        out.append(method.tell(probes, answers, torch.ones(1, 1)).grads["controls"])
    spent = device.device_seconds - method.calibration_cost.device_seconds - before  # calibration is once per plan
    return torch.stack(out), spent / len(controls)


def downstream_errors(device, controls: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global scope, ``device → Linear(1, 1)``: relative error of the digital layer's gradient (issue 11 §1)
    and of the device's controls, against backprop, default phase mode, one HGE (calibrated once)."""
    from torch import nn

    from physgrad.methods import Backprop
    from physgrad.models import PhysicalLayer

    method = HGE(0.1)
    g = torch.Generator().manual_seed(5)
    down, ctrl = [], []
    for c, x in zip(controls, inputs):
        model = nn.Sequential(PhysicalLayer(device), nn.Linear(1, 1))
        with torch.no_grad():
            model[0].params["controls"].copy_(c)
            model[1].weight.fill_(0.05)
            model[1].bias.zero_()
        xs = x.expand(4, -1) + 0.05 * torch.randn(4, x.shape[-1], generator=g)
        xs = torch.minimum(torch.maximum(xs, device.static.input_bounds()[0]), device.static.input_bounds()[1])
        y = torch.randn(4, 1, generator=g)
        loss_fn = nn.MSELoss()
        method.backward(model, loss_fn, xs, y)
        est = [p.grad.detach().clone() for p in model.parameters()]
        model.zero_grad()
        Backprop().backward(model, loss_fn, xs, y)
        ref = [p.grad.detach().clone() for p in model.parameters()]
        e, r = torch.cat([t.reshape(-1) for t in est[1:]]), torch.cat([t.reshape(-1) for t in ref[1:]])
        down.append(float((e - r).norm() / r.norm().clamp_min(1e-12)))
        ctrl.append(float((est[0] - ref[0]).norm() / ref[0].norm().clamp_min(1e-12)))
    return torch.tensor(down), torch.tensor(ctrl)


def scores(est: torch.Tensor, exact: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    est, exact = est.double(), exact.double()
    cos = torch.nn.functional.cosine_similarity(est, exact, dim=1)
    rel = (est - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-12)
    return cos, rel


def main(argv=None) -> dict:
    args = parse_args(__doc__.splitlines()[0], device_argument, argv)
    torch.set_num_threads(args.threads or 1)  # small tensors: one thread is fastest on a shared box
    n_main = 60 if args.quick else 1000
    n_side = 20 if args.quick else 200
    windows = [0.02, 0.05, 0.1, 0.2, 0.4]
    t_start = time.time()
    device = time_domain_dnpu(args.device, seed=1)
    quiet = time_domain_dnpu(device.static, white_psd=0.0, adc_bits=None, seed=1)
    dnpu = device.static
    controls, inputs = random_settings(dnpu, n_main, seed=0)
    exact = exact_gradients(dnpu, controls, inputs)
    rows, figures = [], {}

    def run(label, method, n, dev=device):
        est, secs = hge_gradients(method, dev, controls[:n], inputs[:n])
        cos, rel = scores(est, exact[:n])
        rows.append([label, n, float(cos.median()), float(cos.quantile(0.1)), float(rel.median()), secs])
        return est, cos, rel

    _, cos_main, rel_main = run("parallel, calibrated, T=0.1 s", HGE(0.1), n_main)
    figures["median_cosine"] = float(cos_main.median())
    figures["median_relative_error"] = float(rel_main.median())
    _, cos_seq, rel_seq = run("sequential, calibrated, T=0.1 s per control", HGE(0.1, mode="sequential"), n_side)
    figures["sequential_median_cosine"] = float(cos_seq.median())
    figures["sequential_median_relative_error"] = float(rel_seq.median())
    _, c, r = run("parallel, no phase correction (2X/a)", HGE(0.1, phase="none"), n_side)
    figures["nophase_median_relative_error"] = float(r.median())
    _, c, r = run("parallel, sign from phase (authors' rule)", HGE(0.1, sign_from_phase=True), n_side)
    figures["signphase_median_cosine"] = float(c.median())
    _, c, r = run("parallel, FFT bins instead of I/Q", HGE(0.1, demodulation="fft"), n_side)
    figures["fft_median_cosine"] = float(c.median())
    for spacing in (10.0, 20.0, 40.0):
        _, c, r = run(f"parallel, spacing {spacing:g} Hz, odd multiples", HGE(0.1, spacing=spacing, odd=True, f_min=spacing), n_side)
        figures[f"spacing{int(spacing)}_median_cosine"] = float(c.median())
        figures[f"spacing{int(spacing)}_median_relative_error"] = float(r.median())
    down, ctrl = downstream_errors(device, controls[:n_side], inputs[:n_side])
    figures["downstream_relative_error"] = float(down.median())
    figures["global_controls_relative_error"] = float(ctrl.median())
    rows.append(["global scope: Linear(1,1) after the device (its gradient)", n_side, float("nan"), float("nan"),
                 float(down.median()), float("nan")])
    rows.append(["global scope: the device's controls in that model", n_side, float("nan"), float("nan"),
                 float(ctrl.median()), float("nan")])
    flicker = time_domain_dnpu(dnpu, flicker_psd_1hz=1e-3, seed=1)
    _, c, r = run("parallel, + 1/f noise (10⁻³ nA²/Hz at 1 Hz)", HGE(0.1), n_side, flicker)
    figures["flicker_median_cosine"] = float(c.median())

    # error vs window at fixed frequencies (500, 600, ... Hz: whole cycles in every window): total error
    # (calibrated), and the noise part = noisy minus noiseless estimate with the same (uncorrected) phase
    total, noise_part = [], []
    fixed = dict(spacing=100.0, f_min=500.0)
    for w in windows:
        est, _ = hge_gradients(HGE(w, **fixed), device, controls[:n_side], inputs[:n_side])
        _, rel = scores(est, exact[:n_side])
        total.append(float(rel.median()))
        est, _ = hge_gradients(HGE(w, phase="none", **fixed), device, controls[:n_side], inputs[:n_side])
        clean, _ = hge_gradients(HGE(w, phase="none", **fixed), quiet, controls[:n_side], inputs[:n_side])
        noise_part.append(float(((est - clean).double().norm(dim=1) / exact[:n_side].double().norm(dim=1)).median()))
    slope = _slope(windows, noise_part)
    figures["noise_error_slope_vs_window"] = slope
    for w, t, nz in zip(windows, total, noise_part):
        figures[f"window{w:g}_median_relative_error"] = t
        figures[f"window{w:g}_noise_relative_error"] = nz
    figures["settings"] = n_main
    figures["seconds"] = time.time() - t_start

    print(f"## HGE gradient fidelity on {dnpu.name} ({device})\n")
    print(markdown_table(rows, ["setting", "n", "median cosine", "10% cosine", "median rel. error", "device s / gradient"]))
    print()
    print(markdown_table([[w, t, nz] for w, t, nz in zip(windows, total, noise_part)],
                         ["window T (s)", "median rel. error (total)", "median rel. error (noise part)"]))
    print(f"\nnoise part ∝ T^{slope:.3f} (theory for white noise: T^-0.5); floor median cosine >= 0.99: "
          f"{figures['median_cosine']:.4f} -> {'PASS' if figures['median_cosine'] >= 0.99 else 'FAIL'}")
    _plot(args, dnpu.name, windows, total, noise_part, cos_main, cos_seq)
    write_json(args.out, figures)
    return figures


def _slope(x, y) -> float:
    lx = torch.tensor([math.log(v) for v in x])
    ly = torch.tensor([math.log(max(v, 1e-300)) for v in y])
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())


def _plot(args, name, windows, total, noise_part, cos_par, cos_seq) -> None:
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.loglog(windows, total, "o-", label="total error")
    a.loglog(windows, noise_part, "s-", label="noise part")
    ref = [noise_part[2] * math.sqrt(windows[2] / w) for w in windows]  # the 1/sqrt(T) law through T = 0.1 s
    a.loglog(windows, ref, "k--", label="∝ 1/√T")
    a.set_xticks(windows, [f"{w:g}" for w in windows])
    a.minorticks_off()
    a.set_xlabel("window T (s)")
    a.set_ylabel("median relative error")
    a.legend()
    a.set_title(f"HGE error vs window, fixed 500-900 Hz ({name})")
    bins = torch.linspace(0.9, 1.0, 41).tolist()
    b.hist(cos_par.clamp(0.9, 1).numpy(), bins=bins, alpha=0.6, label="parallel")
    b.hist(cos_seq.clamp(0.9, 1).numpy(), bins=bins, alpha=0.6, label="sequential")
    b.set_xlabel("cosine to exact gradient (clamped at 0.9)")
    b.legend()
    save_plot(args, fig, "hge_fidelity", name)


if __name__ == "__main__":
    main()
