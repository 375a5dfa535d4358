"""Aeqprop (3 variants) vs EqProp vs backprop on the same layered Hopfield network.

Every method trains the same :class:`~physgrad.systems.HopfieldNetwork` from the same
initialisation with the same effective learning rate: Aeqprop performs its *physical* update
(θ moves by the joint relaxation against frozen knobs, learning rate ε(β₂ − β₁) per parameter,
the reference code's first-order form), EqProp and backprop (implicit differentiation of the
equilibrium) fill ``p.grad`` and a plain ``torch.optim.SGD`` with learning rate ε(β₂ − β₁) takes
the step; ``aeqprop_centered_exact`` uses the exact joint relaxation with stiff springs
(ε = 1e-3) as a gradient estimator under the same SGD. Settings follow the paper's reference code (github.com/bscellier/
agnostic-equilibrium-propagation, ``hyperparameters.py``: gains 0.8/1.2, β = 0.2, batch 32,
ε = 0.1/0.05 for weights and 0.02/0.01 for biases), with ``--lr-scale`` times those ε because
our runs are far shorter than the reference's 200 epochs.

    python -m benchmarks.aeqprop --dataset {digits,fashion-mnist} [--quick] [--out F.json]

Long runs can be split by method (``--methods aeqprop_centered --out a.json > a.log``, one process
each) and joined afterwards: ``--merge a.json a.log b.json b.log … --out all.json`` merges the
figures, reads the learning curves from the logs' progress lines and draws the plot.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path

import torch

from benchmarks._common import markdown_table, parse_args, plot_path, save_figure, write_json
from physgrad.data import load_dataset
from physgrad.methods import Aeqprop, Backprop, EqProp
from physgrad.models import EnergyModel
from physgrad.systems import HopfieldNetwork

METHODS = ("aeqprop_centered", "aeqprop_optimistic", "aeqprop_pessimistic", "aeqprop_centered_exact", "eqprop", "backprop")


def reference_epsilon(num_layers: int, scale: float) -> dict[str, float]:
    """Per-parameter spring softness: the reference's 0.1/0.05 (weights), 0.02/0.01 (biases), halving per layer."""
    eps = {}
    for k in range(1, num_layers + 1):
        eps[f"W{k}"] = scale * 0.1 * 0.5 ** (k - 1)
        eps[f"b{k}"] = scale * 0.02 * 0.5 ** (k - 1)
    return eps


def build(sizes: list[int], seed: int, tolerance: float) -> EnergyModel:
    gains = [0.8] * (len(sizes) - 2) + [1.2]
    return EnergyModel(HopfieldNetwork(sizes, gains=gains, tolerance=tolerance, max_sweeps=200, seed=seed))


@torch.no_grad()
def accuracy(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def train(method_name: str, data, sizes: list[int], args, seed: int) -> dict:
    model = build(sizes, seed, args.tolerance)
    device = model.device
    eps = reference_epsilon(len(sizes) - 1, args.lr_scale)
    beta = args.beta
    physical = method_name.startswith("aeqprop") and not method_name.endswith("_exact")
    if method_name == "aeqprop_centered_exact":
        # exact joint relaxation needs stiff springs (ε·λ_max(E[xxᵀ]) < 1): a gradient estimator + SGD
        method = Aeqprop(beta, "centered", epsilon=args.exact_epsilon, relaxation="exact")
        groups = [{"params": [p], "lr": eps[n] * beta} for n, p in model.parameter_dict().items()]
        optimizer = torch.optim.SGD(groups)
    elif physical:
        method = Aeqprop(beta, method_name.split("_")[1], epsilon=eps, relaxation="first-order")
        optimizer = None
    else:
        method = EqProp(beta, "centered") if method_name == "eqprop" else Backprop()
        groups = [{"params": [p], "lr": eps[n] * beta} for n, p in model.parameter_dict().items()]
        optimizer = torch.optim.SGD(groups)
    g = torch.Generator().manual_seed(seed)
    n = len(data.x_train)
    curve, steps = [], 0
    device.reset_counters()
    start = time.perf_counter()
    for _ in range(args.epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, args.batch):
            idx = perm[i : i + args.batch]
            x, y = data.x_train[idx], data.y_train[idx]
            if physical:
                method.step(model, model.loss, x, y)
            else:
                optimizer.zero_grad()
                method.backward(model, model.loss, x, y)
                optimizer.step()
                model.clamp_()
            steps += 1
        train_sweeps = device.sweeps
        curve.append(accuracy(model, data.x_test, data.y_test))
        device.sweeps = train_sweeps  # evaluation relaxations are not training cost
        print(f"  {method_name} seed {seed} epoch {len(curve)}: test {curve[-1]:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    wall = time.perf_counter() - start
    return {
        "method": method_name,
        "net": "-".join(map(str, sizes)),
        "seed": seed,
        "test_accuracy": curve[-1],
        "train_accuracy": accuracy(model, data.x_train[:5000], data.y_train[:5000]),
        "curve": curve,
        "sweeps_per_step": device.sweeps / max(steps, 1),
        "relaxations_per_step": method.total_cost.queries / max(steps, 1),
        "wall_s": wall,
        "nonconverged": device.nonconverged,
    }


def extra_args(p) -> None:
    p.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist", "mnist"])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--hidden", type=int, nargs="+", default=[512], help="hidden layer sizes of the main net")
    p.add_argument("--deep", type=int, nargs="*", default=None, help="hidden sizes of the deeper net (digits: 256 256)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed … first-seed + seeds − 1")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--beta", type=float, default=0.2)
    p.add_argument("--lr-scale", type=float, default=2.0)
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--exact-epsilon", type=float, default=1e-3, help="ε of aeqprop_centered_exact")
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--merge", nargs="+", type=Path, default=None,
                   help="join the .json figures and .log curves of runs split by method; no training")


PROGRESS = re.compile(r"^\s+(\w+) seed (\d+) epoch (\d+): test ([0-9.]+)")


def plot_curves(curves: dict[str, dict[str, list[float]]], dataset: str, path) -> None:
    """``curves[net][method]`` = mean test accuracy per epoch, one panel per net."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.6), squeeze=False)
    for ax, (net, by_method) in zip(axes[0], curves.items()):
        for name, curve in by_method.items():
            ax.plot(range(1, len(curve) + 1), [100 * a for a in curve], marker=".", label=name)
        ax.set_title(f"{dataset}, {net}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def merge(args) -> dict:
    figures: dict = {}
    runs: dict[str, dict[int, dict[int, float]]] = {}
    for path in args.merge:
        if path.suffix == ".json":
            figures.update(json.loads(path.read_text()))
        else:
            for line in path.read_text().splitlines():
                m = PROGRESS.match(line)
                if m:
                    runs.setdefault(m[1], {}).setdefault(int(m[2]), {})[int(m[3])] = float(m[4])
    curves = {}
    for name, seeds in runs.items():
        per_seed = [[acc for _, acc in sorted(epochs.items())] for epochs in seeds.values()]
        curves[name] = [statistics.mean(c) for c in zip(*per_seed)]
    rows = [[k[: -len("_test_accuracy")], v, figures.get(k[: -len("test_accuracy")] + "sweeps_per_step"),
             figures.get(k[: -len("test_accuracy")] + "wall_s")]
            for k, v in sorted(figures.items()) if k.endswith("_test_accuracy")]
    print(markdown_table(rows, ["method", "test_accuracy", "sweeps_per_step", "wall_s"]))
    dataset = figures.get("dataset", "")
    plot_curves({"merged runs": curves}, dataset, plot_path(args, f"aeqprop_{dataset}"))
    write_json(args.out, figures)
    return figures


def main(argv=None) -> dict:
    args = parse_args(__doc__.splitlines()[0], extra_args, argv)
    if not args.threads:
        torch.set_num_threads(1)  # small matmuls: one thread is fastest, and the box is shared
    if args.merge:
        return merge(args)
    data = load_dataset(args.dataset)
    big = args.dataset != "digits"
    if args.quick:
        args.epochs = args.epochs or (1 if big else 2)
        args.seeds = args.seeds or 1
        data = data.subset(train=2000, test=1000, seed=0) if big else data
        deep = []
    else:
        args.epochs = args.epochs or (8 if big else 20)
        args.seeds = args.seeds or (1 if big else 3)
        if args.train_subset:
            data = data.subset(train=args.train_subset, seed=0)
        deep = args.deep if args.deep is not None else ([] if big else [256, 256])
    main_sizes = [data.num_features, *args.hidden, data.num_classes]
    nets = [main_sizes] + ([[data.num_features, *deep, data.num_classes]] if deep else [])
    runs = []
    for sizes in nets:
        methods = args.methods if sizes is main_sizes else [m for m in ("aeqprop_centered", "eqprop", "backprop") if m in args.methods]
        for name in methods:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                run = train(name, data, sizes, args, seed)
                runs.append(run)
                print(f"{run['net']} {name} seed {seed}: test {run['test_accuracy']:.4f} ({run['wall_s']:.0f} s)", flush=True)

    def summary(net: str, name: str) -> dict | None:
        rs = [r for r in runs if r["net"] == net and r["method"] == name]
        if not rs:
            return None
        accs = [r["test_accuracy"] for r in rs]
        return {
            "net": net, "method": name, "seeds": len(rs),
            "test_accuracy": statistics.mean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "train_accuracy": statistics.mean(r["train_accuracy"] for r in rs),
            "sweeps_per_step": statistics.mean(r["sweeps_per_step"] for r in rs),
            "relaxations_per_step": statistics.mean(r["relaxations_per_step"] for r in rs),
            "wall_s": statistics.mean(r["wall_s"] for r in rs),
            "curve": [statistics.mean(c) for c in zip(*[r["curve"] for r in rs])],
        }

    table = [s for net in nets for name in METHODS if (s := summary("-".join(map(str, net)), name))]
    headers = ["net", "method", "seeds", "test_accuracy", "std", "train_accuracy", "sweeps_per_step",
               "relaxations_per_step", "wall_s"]
    print(f"\n{args.dataset}: {args.epochs} epochs, batch {args.batch}, beta {args.beta}, lr-scale {args.lr_scale}\n")
    print(markdown_table([[s[h] for h in headers] for s in table], headers))

    curves = {}
    for s in table:
        curves.setdefault(s["net"], {})[s["method"]] = s["curve"]
    plot_curves(curves, args.dataset, plot_path(args, f"aeqprop_{args.dataset}"))

    figures: dict = {"dataset": args.dataset, "epochs": args.epochs, "seeds": args.seeds, "batch_size": args.batch}
    main_label = "-".join(map(str, main_sizes))
    for s in table:
        prefix = s["method"] if s["net"] == main_label else f"deep_{s['method']}"
        figures[f"{prefix}_test_accuracy"] = s["test_accuracy"]
        figures[f"{prefix}_test_accuracy_std"] = s["std"]
        figures[f"{prefix}_sweeps_per_step"] = s["sweeps_per_step"]
        figures[f"{prefix}_wall_s"] = s["wall_s"]
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
