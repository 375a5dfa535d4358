"""Training the hybrid reservoir net: backprop vs PGT-global vs PGT-local (issue 2, benchmark 2).

The PGT paper's dense network with a reservoir layer (``Linear(features → 32) →
RandomReservoir(32, 256) → Linear(256 → 10)``, reservoir width 256) is trained on digits or
Fashion-MNIST by three methods, three seeds each (the seed sets the network, the
reservoir's hidden couplings, the data order and the perturbations):

* ``backprop`` — the oracle, exact gradients through the reservoir's differentiable simulator;
* ``pgt_global`` — the paper: every parameter perturbed, whole-network losses;
* ``pgt_local`` — autograd through the digital layers, PGT's estimated vector–Jacobian product
  through the reservoir.

Optimizers: Adam for backprop and PGT-local; SGD with momentum for PGT-global, whose estimate
has isotropic noise ``~‖g‖·√(D/K)``: SGD keeps each coordinate's step proportional to its
(noisy) gradient, while Adam's per-coordinate normalisation gives the noise-dominated coordinates
steps as large as the informative ones (the validation sweep confirms it).

Reported per method (mean ± std over seeds): test accuracy after the last epoch (no early stopping
on the test set), device queries spent on gradients, wall time. The settings below were chosen by
the validation sweep ``--sweep`` (20 % of the *training* data held out; the test set is never
looked at) and by the theory in docs/methods/pgt.md; the sweep's table is in docs/results/pgt.md.

    python -m benchmarks.pgt_training [--dataset digits|fashion-mnist] [--quick] [--out FILE.json]
    python -m benchmarks.pgt_training --dataset digits --sweep      # the validation sweep
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, replace
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from physgrad.data import load_dataset
from physgrad.data.datasets import Dataset
from physgrad.methods import PGT, Backprop
from physgrad.methods.base import GradientMethod
from physgrad.training import Trainer

from ._common import markdown_table, parse_args, plot_path, save_figure, write_json
from ._hybrid import hybrid_net, num_parameters, validation_split

METHODS = ("backprop", "pgt_global", "pgt_local")


@dataclass(frozen=True)
class Setting:
    """How one method is trained: optimizer and learning rate, epochs, batch, pairs per gradient, delta."""

    lr: float
    epochs: int
    batch_size: int = 32
    optimizer: str = "adam"  # "adam" or "sgd" (heavy-ball momentum 0.9)
    num_pairs: int = 0
    delta: float = 1e-2

    def method(self, name: str, seed: int) -> GradientMethod:
        if name == "backprop":
            return Backprop(seed=seed)
        scope = name.split("_", 1)[1]
        return PGT(self.num_pairs, self.delta, scope=scope, seed=seed)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9)
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")

    def describe(self) -> str:
        parts = [f"{self.optimizer} lr {self.lr:g}", f"{self.epochs} ep", f"batch {self.batch_size}"]
        if self.num_pairs:
            parts[:0] = [f"K {self.num_pairs}", f"δ {self.delta:g}"]
        return ", ".join(parts)


# Chosen on the validation split (``--sweep``) and by theory, see docs/results/pgt.md.
SETTINGS: dict[str, dict[str, Setting]] = {
    "digits": {
        # 40 epochs: a second validation round (docs/results/pgt.md) showed both still improving after 20.
        "backprop": Setting(lr=1e-2, epochs=40),
        "pgt_local": Setting(lr=1e-3, epochs=40, num_pairs=8),
        "pgt_global": Setting(lr=3e-3, epochs=20, optimizer="sgd", num_pairs=128),
    },
    "fashion-mnist": {
        # 20 epochs: a second validation round at 20 epochs (docs/results/pgt.md) beat every 10-epoch point.
        "backprop": Setting(lr=3e-4, epochs=20, batch_size=64),
        "pgt_local": Setting(lr=3e-4, epochs=20, batch_size=64, num_pairs=16),
        # Not swept (too costly here): the digits choice (SGD) with the learning rate scaled by the
        # zeroth-order rule lr ∝ K / D (3e-3 · (64/128) · (4907/27947) ≈ 3e-4), and a budget of
        # three epochs at K = 64 — docs/results/pgt.md.
        "pgt_global": Setting(lr=3e-4, epochs=3, batch_size=64, optimizer="sgd", num_pairs=64),
    },
}
# Fashion-MNIST trains on a seeded 20 000-image subset of the 60 000 (the full 10 000 test images)
# so that 3 methods × 3 seeds fit a shared 2-core box; the sweep uses the same subset.
TRAIN_SUBSET = {"digits": None, "fashion-mnist": 20000}

# --quick: the same code path at small sizes (<= 2 minutes on 2 cores).
QUICK = {
    "backprop": dict(epochs=3),
    "pgt_local": dict(epochs=3),
    "pgt_global": dict(epochs=2, num_pairs=32),
}
QUICK_SUBSET = {"digits": (600, 300), "fashion-mnist": (1000, 500)}


def grid(**values: list) -> list[dict]:
    """Every combination of the given settings, as override dicts."""
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]


# --sweep: the points tried on the validation split (seed 0); other settings as in SETTINGS.
SWEEP: dict[str, dict[str, list[dict]]] = {
    "digits": {
        "backprop": grid(lr=[1e-3, 3e-3, 1e-2]),
        "pgt_local": grid(num_pairs=[4, 8, 16], lr=[1e-3, 3e-3]),
        "pgt_global": grid(optimizer=["adam"], lr=[1e-3, 3e-3]) + grid(optimizer=["sgd"], lr=[3e-3, 1e-2, 3e-2]),
    },
    "fashion-mnist": {
        "backprop": grid(lr=[3e-4, 1e-3, 3e-3]),
        "pgt_local": grid(num_pairs=[8, 16], lr=[3e-4, 1e-3]),
        "pgt_global": [],
    },
}


def _extra(parser) -> None:
    parser.add_argument("--dataset", default="digits", choices=sorted(SETTINGS), help="dataset (default digits)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3, quick 1)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=None, help="override every method's epochs")
    parser.add_argument("--train-subset", type=int, default=None, help="train on a seeded subset of this size")
    parser.add_argument("--test-subset", type=int, default=None, help="evaluate on a seeded subset of this size")
    parser.add_argument("--sweep", action="store_true", help="run the hyper-parameter sweep on a validation split")


def train_one(data: Dataset, name: str, setting: Setting, seed: int) -> dict:
    """Train one method from scratch with one seed; the final epoch's figures and the curve."""
    model = hybrid_net(data.num_features, data.num_classes, seed=seed)
    method = setting.method(name, seed)
    optimizer = setting.make_optimizer(model.parameters())
    trainer = Trainer(model, method, optimizer, batch_size=setting.batch_size, seed=seed, progress=False)
    started = time.perf_counter()
    records = trainer.fit(data, setting.epochs)
    wall = time.perf_counter() - started
    last = records[-1]
    return {
        "method": name,
        "seed": seed,
        "test_accuracy": last["test_accuracy"],
        "train_accuracy": last["train_accuracy"],
        "queries": last["queries"],
        "wall_time": wall,
        "train_wall_time": last["wall_time"],
        "skipped_steps": last["skipped_steps"],
        "parameters": num_parameters(model),
        "curve_accuracy": [r["test_accuracy"] for r in records],
        "curve_queries": [r["queries"] for r in records],
    }


def _settings(args) -> dict[str, Setting]:
    chosen = {}
    for name in args.methods.split(","):
        if name not in METHODS:
            raise SystemExit(f"unknown method {name!r}; choose from {METHODS}")
        setting = SETTINGS[args.dataset][name]
        if args.quick:
            setting = replace(setting, **QUICK[name])
        if args.epochs:
            setting = replace(setting, epochs=args.epochs)
        chosen[name] = setting
    return chosen


def _data(args) -> Dataset:
    data = load_dataset(args.dataset)
    train, test = TRAIN_SUBSET[args.dataset], None
    if args.quick:
        train, test = QUICK_SUBSET[args.dataset]
    train = args.train_subset or train
    test = args.test_subset or test
    if train is not None or test is not None:
        data = data.subset(train=train, test=test, seed=0)
    return data


def sweep(args) -> dict:
    """Every grid point of :data:`SWEEP` on a validation split of the training data, seed 0."""
    data = validation_split(_data(args))
    rows, figures = [], {"dataset": args.dataset}
    for name, base in _settings(args).items():
        for point in SWEEP[args.dataset][name]:
            setting = replace(base, **point)
            run = train_one(data, name, setting, seed=0)
            rows.append((name, setting.describe(), run["test_accuracy"], run["queries"], run["wall_time"]))
            curve = " ".join(f"{a:.4f}" for a in run["curve_accuracy"])
            print(f"  {name}: {setting.describe()}: validation accuracy {run['test_accuracy']:.4f} "
                  f"(per epoch: {curve})", flush=True)
            key = "_".join([name] + [f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in point.items()])
            figures[f"{key}_validation_accuracy"] = run["test_accuracy"]
    print(f"\nvalidation sweep on {args.dataset}: {len(data.y_train)} train / {len(data.y_test)} validation samples\n")
    print(markdown_table(rows, ["method", "setting", "validation accuracy", "queries", "wall s"]))
    write_json(args.out, figures)
    return figures


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], _extra, argv)
    if args.sweep:
        return sweep(args)
    seeds = args.seeds or (1 if args.quick else 3)
    settings = _settings(args)
    data = _data(args)
    print(f"{args.dataset}: {len(data.y_train)} train / {len(data.y_test)} test samples, {seeds} seed(s), "
          f"torch threads {torch.get_num_threads()}", flush=True)

    runs: dict[str, list[dict]] = {}
    for name, setting in settings.items():
        runs[name] = []
        for seed in range(seeds):
            run = train_one(data, name, setting, seed)
            runs[name].append(run)
            print(f"  {name} seed {seed}: test accuracy {run['test_accuracy']:.4f}, {run['queries']} queries, "
                  f"{run['wall_time']:.1f} s", flush=True)

    figures: dict = {"dataset": args.dataset, "seeds": seeds, "train_samples": len(data.y_train),
                     "test_samples": len(data.y_test), "quick": bool(args.quick)}
    rows = []
    for name, rs in runs.items():
        acc = np.array([r["test_accuracy"] for r in rs])
        queries = float(np.mean([r["queries"] for r in rs]))
        wall = float(np.mean([r["wall_time"] for r in rs]))
        figures[f"{name}_test_accuracy"] = float(acc.mean())
        figures[f"{name}_test_accuracy_std"] = float(acc.std())
        figures[f"{name}_test_accuracy_min"] = float(acc.min())
        figures[f"{name}_queries"] = queries
        figures[f"{name}_wall_time"] = wall
        figures[f"{name}_parameters"] = rs[0]["parameters"]
        figures[f"{name}_skipped_steps"] = int(sum(r["skipped_steps"] for r in rs))
        rows.append((name, settings[name].describe(), f"{100 * acc.mean():.2f} ± {100 * acc.std():.2f}",
                     queries, wall, float(np.mean([r["train_accuracy"] for r in rs]))))
    if "backprop" in runs:
        for name in ("pgt_global", "pgt_local"):
            if name in runs:
                gap = figures["backprop_test_accuracy"] - figures[f"{name}_test_accuracy"]
                figures[f"{name}_gap_to_backprop"] = gap
                rows.append((f"{name} − backprop", "", f"{-100 * gap:+.2f} pt", "", "", ""))

    print()
    print(markdown_table(rows, ["method", "settings", "test accuracy % (mean ± std)", "queries (mean)", "wall s (mean)",
                                "train accuracy (mean)"]))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, rs) in enumerate(runs.items()):
        acc = np.mean([r["curve_accuracy"] for r in rs], axis=0)
        queries = np.mean([r["curve_queries"] for r in rs], axis=0)
        epochs = np.arange(1, len(acc) + 1)
        axes[0].plot(epochs, 100 * acc, "o-", ms=3, color=f"C{i}", label=name)
        axes[1].semilogx(queries, 100 * acc, "o-", ms=3, color=f"C{i}", label=name)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("device queries spent on gradients")
    for ax in axes:
        ax.set_ylabel("test accuracy % (mean over seeds)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{args.dataset}: ReservoirNet with RandomReservoir(32, 256), {seeds} seed(s)")
    print(f"\nplot: {save_figure(fig, plot_path(args, f'pgt_training_{args.dataset}'))}")
    assert all(math.isfinite(v) for v in figures.values() if isinstance(v, float))
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
