"""Transformer with a ring-reservoir feed-forward layer: backprop vs PGT-global vs PGT-local.

The PGT paper's second simulated architecture (Abbott, Elo, Bozhko 2025, arXiv 2506.04523): a
small encoder whose feed-forward sub-layer is the auto-oscillation ring (static mode, one device
sample per token), trained on digits read as 8 rows of 8 pixels. Three methods, same model,
same data order, same optimizer, 3 seeds:

* ``backprop`` — through the noiseless simulator (the oracle; impossible on hardware);
* ``pgt_global`` — the paper's PGT: every parameter of the network perturbed, ``2K + 1`` whole-
  network queries per step;
* ``pgt_local`` — PGT on the device block only (its inputs per token and its 4 knobs), autograd
  for the digital layers: ``2K + 1`` device queries per step.

Run ``python -m benchmarks.reservoir_transformer [--quick] [--out F.json]``; the figures are the
mean final test accuracies (fractions) over seeds, their spread, and the device queries and wall
time each method needed.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from benchmarks._common import markdown_table, parse_args, plot_path, save_figure, write_json
from physgrad.data.datasets import Dataset
from physgrad.data.sequences import row_sequences
from physgrad.methods import PGT, Backprop
from physgrad.methods.base import GradientMethod
from physgrad.models import ReservoirTransformer
from physgrad.systems import AutoOscillationRing, MeasurementNoise
from physgrad.training import Trainer

METHODS = ("backprop", "pgt_global", "pgt_local")


@dataclass(frozen=True)
class Settings:
    """Method settings shared by the ring benchmarks (chosen once, not per task).

    ``delta``: PGT-local perturbs device inputs and knobs whose natural scale is ~1, and the
    measurement must resolve ``2δ·|∂y|``, so ``δ = 10⁻²``; PGT-global perturbs ~10⁴ digital
    weights at once, where ``δ·|P|`` must stay small against each weight: ``δ = 10⁻³``.
    ``lr``: Adam's default-scale rate for every method (Adam normalises the estimate's scale).
    """

    pairs_local: int = 32
    pairs_global: int = 64
    delta_local: float = 1e-2
    delta_global: float = 1e-3
    lr: float = 3e-3
    batch_size: int = 32


def make_method(name: str, settings: Settings, seed: int) -> GradientMethod:
    if name == "backprop":
        return Backprop(seed=seed)
    if name == "pgt_global":
        return PGT(settings.pairs_global, settings.delta_global, scope="global", seed=seed)
    if name == "pgt_local":
        return PGT(settings.pairs_local, settings.delta_local, scope="local", seed=seed)
    raise ValueError(f"unknown method {name!r}")


def run_method(
    build: Callable[[int], nn.Module], name: str, data: Dataset, *, epochs: int, seed: int, settings: Settings
) -> dict:
    """Train one model with one method; return final accuracy, cost and the per-epoch curve."""
    model = build(seed)
    method = make_method(name, settings, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    trainer = Trainer(model, method, optimizer, batch_size=settings.batch_size, seed=seed, progress=False)
    started = time.perf_counter()
    records = trainer.fit(data, epochs)
    last = records[-1]
    return {
        "test_accuracy": last["test_accuracy"],
        "test_loss": last["test_loss"],
        "queries": last["queries"],
        "wall_time": time.perf_counter() - started,
        "curve": [(r["queries"], r["wall_time"], r["test_accuracy"]) for r in records],
    }


_SHARED: dict = {}  # what forked workers inherit (closures cannot be pickled)


def _job(job: tuple[str, int]) -> dict:
    torch.set_num_threads(1)
    name, seed = job
    c = _SHARED
    return run_method(c["build"], name, c["data"], epochs=c["epochs"], seed=seed, settings=c["settings"])


def compare(
    build, data: Dataset, *, epochs: int, seeds: list[int], settings: Settings, methods=METHODS, jobs: int = 1
) -> dict:
    """``{method: [run per seed]}`` for every method.

    ``jobs > 1`` runs the (method, seed) trainings in that many forked processes; each run is
    seeded and single-threaded, so the accuracies and costs are those of a sequential run.
    """
    todo = [(m, s) for m in methods for s in seeds]
    if jobs <= 1:
        done = [run_method(build, m, data, epochs=epochs, seed=s, settings=settings) for m, s in todo]
    else:
        import multiprocessing

        _SHARED.update(build=build, data=data, epochs=epochs, settings=settings)
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            done = pool.map(_job, todo, chunksize=1)
    runs = dict(zip(todo, done))
    return {m: [runs[(m, s)] for s in seeds] for m in methods}


def summarise(results: dict, prefix: str = "") -> tuple[dict, list[list]]:
    """Flat figures (``{prefix}{method}_test_accuracy`` …) and table rows from :func:`compare`'s output."""
    figures, rows = {}, []
    for m, runs in results.items():
        acc = [r["test_accuracy"] for r in runs]
        mean = statistics.fmean(acc)
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        queries = statistics.fmean(r["queries"] for r in runs)
        wall = statistics.fmean(r["wall_time"] for r in runs)
        figures.update({
            f"{prefix}{m}_test_accuracy": mean, f"{prefix}{m}_test_accuracy_std": std,
            f"{prefix}{m}_queries": queries, f"{prefix}{m}_wall_time_s": wall,
        })
        rows.append([m, f"{100 * mean:.2f} ± {100 * std:.2f}", int(queries), round(wall, 1), len(runs)])
    return figures, rows


def plot_curves(results: dict, path, title: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for m, runs in results.items():
        n = min(len(r["curve"]) for r in runs)
        q = [statistics.fmean(r["curve"][i][0] for r in runs) for i in range(n)]
        w = [statistics.fmean(r["curve"][i][1] for r in runs) for i in range(n)]
        a = [statistics.fmean(r["curve"][i][2] for r in runs) for i in range(n)]
        axes[0].plot(q, a, marker="o", ms=3, label=m)
        axes[1].plot(w, a, marker="o", ms=3, label=m)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("device queries (cumulative)")
    axes[1].set_xlabel("wall time of training [s]")
    for ax in axes:
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def ring_ffn(token_dim: int, seq_len: int, classes: int, *, nodes: int, ring_inputs: int, noise: float = 0.0):
    """Builder of the benchmark's model: a 1-block encoder whose FFN is a static-mode ring."""

    def build(seed: int) -> nn.Module:
        ring = AutoOscillationRing(
            ring_inputs, nodes, mode="static", seed=1000 + seed, noise=MeasurementNoise(additive=noise)
        )
        return ReservoirTransformer(token_dim, seq_len, classes, ring, d_model=32, heads=4, blocks=1, seed=seed)

    return build


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--seeds", type=int, default=3)
        p.add_argument("--epochs", type=int, default=None)
        p.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist", "mnist"])
        p.add_argument("--jobs", type=int, default=1, help="train the (method, seed) runs in this many processes")
        p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)

    args = parse_args("Reservoir transformer: backprop vs PGT-global vs PGT-local", extra, argv)
    if args.threads is None:
        torch.set_num_threads(1)  # small tensors: one thread is fastest on a shared CPU
    data = row_sequences(args.dataset)
    if args.quick:
        data = data.subset(train=400, test=200, seed=0)
    epochs = args.epochs or (2 if args.quick else 20)
    seeds = list(range(1 if args.quick else args.seeds))
    settings = Settings()
    t, d = data.image_shape
    build = ring_ffn(d, t, data.num_classes, nodes=64, ring_inputs=16)
    results = compare(build, data, epochs=epochs, seeds=seeds, settings=settings, methods=args.methods, jobs=args.jobs)
    figures, rows = summarise(results)
    if "backprop" in results and "pgt_local" in results:
        figures["pgt_local_gap_points"] = 100 * (figures["backprop_test_accuracy"] - figures["pgt_local_test_accuracy"])
    figures.update({
        "dataset": args.dataset, "epochs": epochs, "seeds": len(seeds), "train_size": len(data.y_train),
        "pgt_local_pairs": settings.pairs_local, "pgt_global_pairs": settings.pairs_global,
    })
    print(markdown_table(rows, ["method", "test accuracy [%] (mean ± sd)", "device queries", "wall time [s]", "seeds"]))
    path = plot_curves(results, plot_path(args, "transformer"), f"ring-FFN transformer, {args.dataset} rows")
    print(f"\nplot: {path}")
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
