"""Boolean gates on a DNPU trained by homodyne gradient extraction (Boon et al., arXiv 2105.11233; issue 4, task 3)

Inputs on two electrodes (logical 0/1 = the electrode's lowest/highest safe voltage), five controls
trained by HGE in the time domain (one 0.1 s window per input case, the paper's noise, Adam), for
AND, OR, NAND, NOR, XOR, XNOR and 10 seeds each (random initial controls). A gate succeeds when its
outputs separate: the lowest "1" output exceeds the highest "0" output by more than the noise
(3 × the standard deviation of a static read-out, measured). The loss is correlation based with a
separation term (the form used for DNPU gates: low when the outputs correlate with the truth
table *and* the classes are apart)::

    L = (1.05 − ρ(I, t)) · (1 + softplus((m − Δ) / w)),   Δ = min I[t=1] − max I[t=0]

(``1 + softplus(−x)`` in place of the usual ``1/sigmoid(x) = 1 + exp(−x)``: the same near the
margin, but it grows linearly rather than exponentially, so it stays finite far from separation.)

    python -m benchmarks.hge_gates [--device PATH.npz] [--quick] [--out F.json]
"""

from __future__ import annotations

import time

import torch

from benchmarks._common import markdown_table, parse_args, write_json
from benchmarks.hge_fidelity import device_argument, save_plot
from physgrad.methods import HGE, Backprop
from physgrad.models import PhysicalLayer, clamp_to_safe_range_
from physgrad.systems import time_domain_dnpu

GATES = {
    "and": [0, 0, 0, 1],
    "or": [0, 1, 1, 1],
    "nand": [1, 1, 1, 0],
    "nor": [1, 0, 0, 0],
    "xor": [0, 1, 1, 0],
    "xnor": [1, 0, 0, 1],
}
CASES = [(0, 0), (0, 1), (1, 0), (1, 1)]


def gate_inputs(dnpu) -> torch.Tensor:
    """The four input cases as electrode voltages ``[4, 2]``: 0 → lowest, 1 → highest safe voltage."""
    low, high = dnpu.input_bounds()
    bits = torch.tensor(CASES, dtype=torch.float32)
    return low + bits * (high - low)


def corr_sig_loss(out: torch.Tensor, target: torch.Tensor, margin: float = 5.0, width: float = 2.0) -> torch.Tensor:
    """``(1.05 − ρ)·(1 + softplus((margin − Δ)/width))`` on outputs ``[4, 1]`` (nA), targets ``[4]`` (0/1)."""
    i = out.reshape(-1)
    t = target.to(i.dtype)
    ic, tc = i - i.mean(), t - t.mean()
    rho = (ic * tc).sum() / (ic.norm() * tc.norm() + 1e-9)
    delta = i[t > 0.5].min() - i[t < 0.5].max()
    return (1.05 - rho) * (1.0 + torch.nn.functional.softplus((margin - delta) / width))


def train_gate(device, target: torch.Tensor, seed: int, steps: int, lr: float, method: str = "hge") -> tuple[torch.Tensor, list[float]]:
    """Train the controls for one gate from a random start; returns the controls and the loss curve.

    ``method="backprop"`` trains the same way with exact gradients through the surrogate (the
    diagnostic that separates a hard gate from a bad gradient).
    """
    layer = PhysicalLayer(device)
    g = torch.Generator().manual_seed(seed)
    low, high = device.parameter_bounds()["controls"]
    with torch.no_grad():
        layer.params["controls"].copy_(low + (high - low) * torch.rand(low.shape, generator=g))
    method = HGE(0.1, seed=seed) if method == "hge" else Backprop(seed=seed)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    x = gate_inputs(device.static)
    curve = []
    for _ in range(steps):
        opt.zero_grad()
        loss = method.backward(layer, lambda out, y: corr_sig_loss(out, y), x, target)
        opt.step()
        clamp_to_safe_range_(layer)
        curve.append(float(loss))
    return layer.params["controls"].detach().clone(), curve


def evaluate(device, controls: torch.Tensor, target: torch.Tensor, repeats: int = 8) -> tuple[float, float]:
    """Separation ``min I[1] − max I[0]`` of the mean static read-out, and the read-out noise std."""
    x = gate_inputs(device.static)
    reads = torch.stack([device.measure({"controls": controls}, x)[0, :, 0] for _ in range(repeats)])  # [R, 4]
    mean = reads.mean(0)
    sep = float(mean[target > 0.5].min() - mean[target < 0.5].max())
    return sep, float(reads.std(0).mean())


def main(argv=None) -> dict:
    def extra(parser) -> None:
        device_argument(parser)
        parser.add_argument("--method", choices=("hge", "backprop"), default="hge",
                            help="hge (default) or backprop through the surrogate (diagnostic)")
        parser.add_argument("--gates", default=",".join(GATES), help="comma-separated subset of the gates")

    args = parse_args(__doc__.splitlines()[0], extra, argv)
    gates = [g.strip().lower() for g in args.gates.split(",")]
    unknown = sorted(set(gates) - set(GATES))
    if unknown:
        raise SystemExit(f"unknown gate(s) {unknown}; choose from {list(GATES)}")
    torch.set_num_threads(args.threads or 1)
    seeds = 2 if args.quick else 10
    steps = 60 if args.quick else 300
    lr = 0.03
    t_start = time.time()
    device = time_domain_dnpu(args.device, seed=7)
    figures, rows, curves = {}, [], {}
    total_ok = 0
    seconds = 0.0
    for gate in gates:
        table = GATES[gate]
        target = torch.tensor(table, dtype=torch.float32)
        ok, seps, curves[gate] = 0, [], []
        for seed in range(seeds):
            before = device.device_seconds
            controls, curve = train_gate(device, target, seed, steps, lr, args.method)
            seconds += device.device_seconds - before
            sep, noise = evaluate(device, controls, target)
            seps.append(sep)
            success = sep > 3 * noise
            ok += int(success)
            curves[gate].append(curve)
        total_ok += ok
        figures[f"success_{gate}"] = ok / seeds
        figures[f"median_separation_{gate}"] = float(torch.tensor(seps).median())
        final = torch.tensor([c[-1] for c in curves[gate]])
        rows.append([gate.upper(), f"{ok}/{seeds}", float(torch.tensor(seps).median()), float(torch.tensor(seps).min()),
                     float(final.median()), "PASS" if ok >= 0.9 * seeds else "FAIL"])
    figures["success_rate"] = total_ok / (seeds * len(gates))
    figures["seeds"] = seeds
    figures["steps"] = steps
    figures["device_seconds_per_run"] = seconds / (seeds * len(gates))
    figures["seconds"] = time.time() - t_start
    print(f"## Boolean gates by {args.method} on {device.static.name} ({steps} steps, {seeds} seeds, Adam lr={lr} V)\n")
    print(markdown_table(rows, ["gate", "successes", "median separation (nA)", "worst separation (nA)",
                                "median final loss", "floor >= 9/10"]))
    print(f"\nsuccess rate {figures['success_rate']:.3f}; device time per training run "
          f"{figures['device_seconds_per_run']:.1f} s")
    if args.method == "hge" and gates == list(GATES):
        _plot(args, device.static.name, curves)
    write_json(args.out, figures)
    return figures


def _plot(args, name, curves) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6), sharex=True)
    for ax, (gate, runs) in zip(axes.flat, curves.items()):
        for c in runs:
            ax.semilogy(c, lw=0.8, alpha=0.7)
        ax.set_title(gate.upper())
        ax.set_xlabel("step")
    axes[0, 0].set_ylabel("correlation-sigmoid loss")
    fig.suptitle(f"HGE-trained Boolean gates on {name}")
    save_plot(args, fig, "hge_gates", name)


if __name__ == "__main__":
    main()
