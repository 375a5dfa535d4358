"""Vectorised vs looped probe evaluation (issue 2, benchmark 3).

One PGT gradient of the hybrid ReservoirNet (K = 32 antithetic pairs, i.e. 64 probes, batch 64)
through the *same code path* twice: ``PGT(vectorize=True)`` sends all probes of a gradient to the
device in one batched call (``torch.func.vmap`` over the whole network in the global scope, one
``measure`` of ``[2K, B, n_in]`` inputs in the local scope); ``PGT(vectorize=False)`` evaluates the
probes one by one in a Python loop. Both draw identical directions (same seed), so they compute
the same estimate — the benchmark checks that — and the ratio of their wall times is the speedup.

Timings are the minimum over interleaved rounds (the two variants alternate, so load from other
processes on a shared machine hits both alike). Figures: ``speedup`` (the smaller of the two
scopes' ratios — the floor is 3×), ``speedup_global``, ``speedup_local`` and the times.

    python -m benchmarks.probe_vectorization [--quick] [--out FILE.json] [--threads N]
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import torch

from physgrad.data import load_dataset
from physgrad.methods import PGT

from ._common import markdown_table, parse_args, plot_path, save_figure, write_json
from ._hybrid import flat_gradient, hybrid_net, interleaved_times

NUM_PAIRS = 32
BATCH = 64
DELTA = 1e-2


def _extra(parser) -> None:
    parser.add_argument("--pairs", type=int, default=NUM_PAIRS, help="K, pairs per gradient (default 32)")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch size (default 64)")
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds (default 30, quick 8)")


def measure_scope(scope: str, x: torch.Tensor, y: torch.Tensor, pairs: int, repeats: int) -> dict:
    """Time ``PGT(vectorize=True)`` vs ``PGT(vectorize=False)`` in one scope; check they agree."""
    model = hybrid_net(x.shape[1], seed=0)
    vec = PGT(pairs, DELTA, scope=scope, vectorize=True, seed=1)
    loop = PGT(pairs, DELTA, scope=scope, vectorize=False, seed=1)
    g_vec, g_loop = flat_gradient(model, vec, x, y), flat_gradient(model, loop, x, y)
    max_diff = float((g_vec - g_loop).abs().max() / g_vec.abs().max().clamp_min(1e-30))
    times = interleaved_times(
        {"vectorized": lambda: flat_gradient(model, vec, x, y), "looped": lambda: flat_gradient(model, loop, x, y)}, repeats
    )
    (t_vec, med_vec), (t_loop, med_loop) = times["vectorized"], times["looped"]
    return {
        "scope": scope,
        "probes": 2 * pairs,
        "queries_per_gradient": vec.last_cost.queries,
        "vectorized_s": t_vec,
        "looped_s": t_loop,
        "vectorized_median_s": med_vec,
        "looped_median_s": med_loop,
        "speedup": t_loop / t_vec,
        "speedup_median": med_loop / med_vec,
        "max_relative_difference": max_diff,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], _extra, argv)
    repeats = args.repeats or (8 if args.quick else 30)
    data = load_dataset("digits")
    x, y = data.x_train[: args.batch], data.y_train[: args.batch]
    results = [measure_scope(scope, x, y, args.pairs, repeats) for scope in ("global", "local")]
    by = {r["scope"]: r for r in results}

    rows = [
        (r["scope"], r["probes"], r["queries_per_gradient"], 1e3 * r["looped_s"], 1e3 * r["vectorized_s"], r["speedup"],
         r["speedup_median"], r["max_relative_difference"])
        for r in results
    ]
    headers = ["scope", "probes", "queries/gradient", "looped ms (min)", "vectorised ms (min)", "speedup (min)",
               "speedup (median)", "max rel. diff of estimates"]
    print(f"PGT, K = {args.pairs} pairs, batch {args.batch}, torch threads {torch.get_num_threads()}, {repeats} rounds\n")
    print(markdown_table(rows, headers))

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    xs = range(len(results))
    ax.bar([i - 0.2 for i in xs], [1e3 * r["looped_s"] for r in results], 0.4, label="looped (vectorize=False)")
    ax.bar([i + 0.2 for i in xs], [1e3 * r["vectorized_s"] for r in results], 0.4, label="vectorised (vectorize=True)")
    for i, r in enumerate(results):
        ax.text(i, 1e3 * r["looped_s"], f"{r['speedup']:.1f}×", ha="center", va="bottom")
    ax.set_xticks(list(xs), [f"PGT-{r['scope']}" for r in results])
    ax.set_ylabel("ms per gradient (min over rounds)")
    ax.set_title(f"one gradient, K = {args.pairs}, batch {args.batch}")
    ax.legend(fontsize=8)
    print(f"\nplot: {save_figure(fig, plot_path(args, 'probe_vectorization'))}")

    figures = {
        "speedup": min(by["global"]["speedup"], by["local"]["speedup"]),
        "num_pairs": args.pairs,
        "batch_size": args.batch,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
    }
    for r in results:
        for key in ("speedup", "speedup_median", "vectorized_s", "looped_s", "max_relative_difference"):
            figures[f"{key}_{r['scope']}"] = r[key]
    assert all(math.isfinite(v) for v in figures.values() if isinstance(v, float))
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
