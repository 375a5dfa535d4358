"""Vectorised vs looped probe evaluation (issue 2, benchmark 3).

One PGT gradient of the hybrid ReservoirNet (K = 32 antithetic pairs, i.e. 64 probes, batch 64)
through the *same code path* twice: ``PGT(vectorize=True)`` sends all probes of a gradient to the
device in one batched call (``torch.func.vmap`` over the whole network in the global scope, one
``measure`` of ``[2K, B, n_in]`` inputs in the local scope); ``PGT(vectorize=False)`` evaluates the
probes one by one in a Python loop. Both draw identical directions (same seed), so they compute
the same estimate — the benchmark checks that — and the ratio of their wall times is the speedup.

Timings (benchmarks/_timing.py): all four variants (global/local × vectorised/looped) run
interleaved in one process, ≥ 20 rounds after a warm-up; each reports its median and minimum, the
speedup is the median of the per-round ratios (``speedup_min``: ratio of the minima), and the 1-minute
load average before/after, torch's thread count and the CPU count are recorded. Figures:
``speedup`` (the smaller of the two scopes' median ratios), ``speedup_global``, ``speedup_local``,
their ``_min`` forms, the times and ``load_average_before/after``.

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
from ._hybrid import flat_gradient, hybrid_net
from ._timing import MIN_ROUNDS, interleaved, ratio

NUM_PAIRS = 32
BATCH = 64
DELTA = 1e-2


def _extra(parser) -> None:
    parser.add_argument("--pairs", type=int, default=NUM_PAIRS, help="K, pairs per gradient (default 32)")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch size (default 64)")
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds (default 30, quick 20; at least 20 are"
                        " needed for a published figure)")


def prepare_scope(scope: str, x: torch.Tensor, y: torch.Tensor, pairs: int) -> tuple[dict, dict]:
    """The two variants of one scope as zero-argument callables, and a check that they agree."""
    model = hybrid_net(x.shape[1], seed=0)
    vec = PGT(pairs, DELTA, scope=scope, vectorize=True, seed=1)
    loop = PGT(pairs, DELTA, scope=scope, vectorize=False, seed=1)
    g_vec, g_loop = flat_gradient(model, vec, x, y), flat_gradient(model, loop, x, y)
    max_diff = float((g_vec - g_loop).abs().max() / g_vec.abs().max().clamp_min(1e-30))
    fns = {
        f"{scope}_vectorized": lambda: flat_gradient(model, vec, x, y),
        f"{scope}_looped": lambda: flat_gradient(model, loop, x, y),
    }
    info = {"scope": scope, "probes": 2 * pairs, "queries_per_gradient": vec.last_cost.queries, "max_relative_difference": max_diff}
    return fns, info


def summarise_scope(info: dict, timing: dict) -> dict:
    scope = info["scope"]
    med, mn = ratio(timing, f"{scope}_looped", f"{scope}_vectorized")
    return {
        **info,
        "vectorized_s": timing["min"][f"{scope}_vectorized"],
        "looped_s": timing["min"][f"{scope}_looped"],
        "vectorized_median_s": timing["median"][f"{scope}_vectorized"],
        "looped_median_s": timing["median"][f"{scope}_looped"],
        "speedup": med,
        "speedup_min": mn,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], _extra, argv)
    repeats = args.repeats or (MIN_ROUNDS if args.quick else 30)
    data = load_dataset("digits")
    x, y = data.x_train[: args.batch], data.y_train[: args.batch]
    fns, infos = {}, []
    for scope in ("global", "local"):
        f, info = prepare_scope(scope, x, y, args.pairs)
        fns.update(f)
        infos.append(info)
    timing = interleaved(fns, repeats)
    results = [summarise_scope(info, timing) for info in infos]
    by = {r["scope"]: r for r in results}

    rows = [
        (r["scope"], r["probes"], r["queries_per_gradient"], 1e3 * r["looped_median_s"], 1e3 * r["looped_s"],
         1e3 * r["vectorized_median_s"], 1e3 * r["vectorized_s"], r["speedup"], r["speedup_min"], r["max_relative_difference"])
        for r in results
    ]
    headers = ["scope", "probes", "queries/gradient", "looped ms (median)", "looped ms (min)", "vectorised ms (median)",
               "vectorised ms (min)", "speedup (median of rounds)", "speedup (ratio of minima)", "max rel. diff of estimates"]
    print(f"PGT, K = {args.pairs} pairs, batch {args.batch}, torch threads {timing['threads']} of {timing['cpus']} CPUs, "
          f"{repeats} interleaved rounds, clock {timing['clock']} time, load average {timing['load_before']:.2f} before / {timing['load_after']:.2f} after\n")
    print(markdown_table(rows, headers))

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    xs = range(len(results))
    ax.bar([i - 0.2 for i in xs], [1e3 * r["looped_median_s"] for r in results], 0.4, label="looped (vectorize=False)")
    ax.bar([i + 0.2 for i in xs], [1e3 * r["vectorized_median_s"] for r in results], 0.4, label="vectorised (vectorize=True)")
    for i, r in enumerate(results):
        ax.text(i, 1e3 * r["looped_median_s"], f"{r['speedup']:.1f}×", ha="center", va="bottom")
    ax.set_xticks(list(xs), [f"PGT-{r['scope']}" for r in results])
    ax.set_ylabel(f"ms per gradient (median of {repeats} rounds)")
    ax.set_title(f"one gradient, K = {args.pairs}, batch {args.batch}")
    ax.legend(fontsize=8)
    print(f"\nplot: {save_figure(fig, plot_path(args, 'probe_vectorization'))}")

    figures = {
        "speedup": min(by["global"]["speedup"], by["local"]["speedup"]),
        "num_pairs": args.pairs,
        "batch_size": args.batch,
        "threads": timing["threads"],
        "cpus": timing["cpus"],
        "repeats": repeats,
        "clock": timing["clock"],
        "load_average_before": timing["load_before"],
        "load_average_after": timing["load_after"],
    }
    for r in results:
        for key in ("speedup", "speedup_min", "vectorized_s", "looped_s", "vectorized_median_s", "looped_median_s",
                    "max_relative_difference"):
            figures[f"{key}_{r['scope']}"] = r[key]
    assert all(math.isfinite(v) for v in figures.values() if isinstance(v, float))
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
