"""How much detector noise can PGT train through? A sweep on the ring-hybrid dense net.

The ring's read-out is a diode: its measurement carries additive noise ``σ`` (in detector units;
:class:`~physgrad.systems.MeasurementNoise`). A perturbative method sees the device only through
differences ``y(θ + δP) − y(θ − δP)``, whose noise is ``√2 σ`` whatever ``δ`` is, while the signal
is ``≈ 2δ ∂y/∂P``: the estimate's noise-to-signal ratio grows like ``σ / δ``, and ``δ`` cannot grow
without paying curvature bias. This benchmark trains ``ReservoirNet(digits → ring → classes)`` at
noise levels ``σ`` with PGT-local at two ``δ`` and PGT-global, and backprop as the reference
(backprop trains on the noiseless simulator — it cannot see the noise — but is *tested* on the
noisy device, like every method here).

Run ``python -m benchmarks.ring_noise [--quick] [--out F.json]``. Figures:
``{method}_delta_{δ}_noise_{σ}_test_accuracy`` / ``_test_loss`` / ``_queries`` and ``signal_std`` (the spread of the noiseless
readings, so ``σ / signal_std`` is the inverse SNR).
"""

from __future__ import annotations

import torch

from benchmarks._common import markdown_table, parse_args, plot_path, save_figure, write_json
from benchmarks.reservoir_transformer import Settings, run_method
from physgrad.data import load_dataset
from physgrad.models import ReservoirNet
from physgrad.systems import AutoOscillationRing, MeasurementNoise

NOISE = (0.0, 0.03, 0.1, 0.3, 1.0)
CONFIGS = (("backprop", None), ("pgt_local", 1e-2), ("pgt_local", 1e-1), ("pgt_global", 1e-2))


def builder(sigma: float):
    def build(seed: int):
        ring = AutoOscillationRing(16, 100, mode="static", seed=1000 + seed, noise=MeasurementNoise(additive=sigma))
        return ReservoirNet(64, ring, 10, seed=seed)

    return build


def signal_std(data) -> float:
    """Spread of the noiseless readings of a fresh ring-hybrid net over the training inputs."""
    model = builder(0.0)(0)
    with torch.no_grad():
        return float(model.reservoir(model.encoder(data.x_train)).std())


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--epochs", type=int, default=None)
        p.add_argument("--seed", type=int, default=0)

    args = parse_args("PGT on the ring-hybrid net vs detector noise", extra, argv)
    if args.threads is None:
        torch.set_num_threads(1)
    data = load_dataset("digits")
    if args.quick:
        data = data.subset(train=300, test=200, seed=0)
    epochs = args.epochs or (1 if args.quick else 10)
    noise_levels = (NOISE[0], NOISE[2], NOISE[-1]) if args.quick else NOISE
    figures: dict = {"epochs": epochs, "signal_std": signal_std(data)}
    rows, loss_rows, curves = [], [], {}
    for method, delta in CONFIGS:
        label = method if delta is None else f"{method} δ={delta:g}"
        accs, losses = [], []
        for sigma in noise_levels:
            settings = Settings(delta_local=delta or 1e-2, delta_global=delta or 1e-3)
            run = run_method(builder(sigma), method, data, epochs=epochs, seed=args.seed, settings=settings)
            key = method if delta is None else f"{method}_delta_{delta:g}"
            figures[f"{key}_noise_{sigma:g}_test_accuracy"] = run["test_accuracy"]
            figures[f"{key}_noise_{sigma:g}_test_loss"] = run["test_loss"]
            figures[f"{key}_noise_{sigma:g}_queries"] = run["queries"]
            accs.append(run["test_accuracy"])
            losses.append(run["test_loss"])
        curves[label] = accs
        rows.append([label, *[f"{100 * a:.1f}" for a in accs]])
        loss_rows.append([label, *[f"{v:.3f}" for v in losses]])
    headers = ["method", *[f"σ = {s:g}" for s in noise_levels]]
    print(f"## Test accuracy [%] vs detector noise σ (signal spread {figures['signal_std']:.3g}, {epochs} epochs)\n")
    print(markdown_table(rows, headers))
    print("\n## Test loss (cross-entropy on the noisy device)\n")
    print(markdown_table(loss_rows, headers))
    print(f"\nplot: {plot(curves, noise_levels, figures['signal_std'], plot_path(args, 'ring_noise'))}")
    write_json(args.out, figures)
    return figures


def plot(curves: dict, noise_levels, scale: float, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = [max(s, 1e-3) / scale for s in noise_levels]
    for label, accs in curves.items():
        ax.plot(x, accs, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("noise σ / signal spread (σ = 0 drawn at 1e-3)")
    ax.set_ylabel("test accuracy (noisy device)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("ring-hybrid dense net, digits")
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
