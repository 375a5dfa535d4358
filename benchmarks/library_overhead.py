"""The library's own overhead: a physgrad PGT step ÷ a hand-written vmapped PGT step (issue 13 §2).

Both take one global-scope PGT step of the same hybrid ReservoirNet (digits, ``Linear(64 → 32) →
RandomReservoir(32, 256) → Linear(256 → 10)``), the same K, batch and δ, ternary directions:

* ``physgrad`` — ``PGT(K, δ).backward(model, F.cross_entropy, x, y)`` then ``optimizer.step()`` and
  the safe-range clamp (what the Trainer does);
* ``hand`` — what a user would write with torch alone: draw ``P`` ∈ {−1, 0, 1}^{K×D}, centre the
  stencil inside the device's bounds (precomputed once), evaluate the 2K losses by one
  ``torch.func.vmap`` over ``functional_call`` (the same single device call), form
  ``ĝ = Σ_k (L⁺_k − L⁻_k)/(2δ) P_k / (K E[P²])``, write ``p.grad``, ``optimizer.step()``, clamp.

The hand-written step skips what the library adds: the loss at θ (one more query), the NaN barrier
and finiteness checks, bounds rebuilt per call, cost bookkeeping. Both touch the same device, whose
own per-call checks (range guard, finiteness of the answers) are paid by both. Interleaved in one
process, ≥ 20 rounds (benchmarks/_timing.py); ``overhead_ratio`` is the median of the per-round
ratios physgrad ÷ hand (``overhead_ratio_min``: the ratio of the minima). Issue 13 asks for ≤ 1.2.

    python -m benchmarks.library_overhead [--quick] [--out F.json] [--pairs K] [--batch B]
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from physgrad.data import load_dataset
from physgrad.methods import PGT
from physgrad.models.physical_layer import clamp_to_safe_range_, parameter_bounds

from ._common import markdown_table, parse_args, plot_path, save_figure, write_json
from ._hybrid import hybrid_net
from ._timing import MIN_ROUNDS, interleaved, ratio

NUM_PAIRS = 32
BATCH = 32
DELTA = 1e-2
LR = 1e-3


def _extra(parser) -> None:
    parser.add_argument("--pairs", type=int, default=NUM_PAIRS, help="K, pairs per step (default 32)")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch size (default 32)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 50, quick 20)")


class HandPGT:
    """A hand-written global-scope PGT step with ``torch.func.vmap`` (the reference for the overhead)."""

    def __init__(self, model: torch.nn.Module, pairs: int, delta: float, seed: int) -> None:
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for n, p in model.named_parameters() if p.requires_grad]
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        bounds = parameter_bounds(model)
        low = [bounds[n][0].reshape(-1) if n in bounds else torch.full((p.numel(),), -float("inf")) for n, p in zip(self.names, self.params)]
        high = [bounds[n][1].reshape(-1) if n in bounds else torch.full((p.numel(),), float("inf")) for n, p in zip(self.names, self.params)]
        self.low, self.high = torch.cat(low), torch.cat(high)
        self.k, self.delta = pairs, delta
        self.g = torch.Generator().manual_seed(seed)
        self.scale = 1.0 / (pairs * (2.0 / 3.0))  # E[P²] = 2/3 for ternary directions

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        theta = torch.cat([p.detach().reshape(-1) for p in self.params])
        d = theta.numel()
        p = torch.randint(-1, 2, (self.k, d), generator=self.g).float()
        half = self.delta * p.abs()
        centre = torch.maximum(torch.minimum(theta, self.high - half), self.low + half)
        settings = torch.cat([centre + self.delta * p, centre - self.delta * p])

        def one(flat):
            params = {n: t.reshape(s) for n, t, s in zip(self.names, flat.split(self.sizes), self.shapes)}
            return F.cross_entropy(functional_call(self.model, params, (x,)), y)

        with torch.no_grad():
            losses = vmap(one, randomness="same")(settings)
            s = (losses[: self.k] - losses[self.k :]) / (2 * self.delta)
            grad = self.scale * (s @ p)
        for param, g in zip(self.params, grad.split(self.sizes)):
            param.grad = g.reshape(param.shape)
        return losses.mean()


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], _extra, argv)
    if not args.threads:
        torch.set_num_threads(1)
    repeats = args.repeats or (MIN_ROUNDS if args.quick else 50)
    data = load_dataset("digits")
    x, y = data.x_train[: args.batch], data.y_train[: args.batch]

    lib_model, hand_model = hybrid_net(x.shape[1], seed=0), hybrid_net(x.shape[1], seed=0)
    method = PGT(args.pairs, DELTA, scope="global", seed=1)
    hand = HandPGT(hand_model, args.pairs, DELTA, seed=1)
    lib_opt = torch.optim.SGD(lib_model.parameters(), lr=LR)
    hand_opt = torch.optim.SGD(hand_model.parameters(), lr=LR)

    def physgrad_step():
        lib_opt.zero_grad(set_to_none=True)
        method.backward(lib_model, F.cross_entropy, x, y)
        lib_opt.step()
        clamp_to_safe_range_(lib_model)

    def hand_step():
        hand_opt.zero_grad(set_to_none=True)
        hand.backward(x, y)
        hand_opt.step()
        clamp_to_safe_range_(hand_model)

    # the same estimator: identical directions give identical gradients on the same parameters
    probe_model = hybrid_net(x.shape[1], seed=0)
    check_lib, check_hand = PGT(args.pairs, DELTA, scope="global", seed=7), HandPGT(probe_model, args.pairs, DELTA, seed=7)
    probe_model.zero_grad()
    check_lib.backward(probe_model, F.cross_entropy, x, y)
    g_lib = torch.cat([p.grad.reshape(-1) for p in probe_model.parameters()])
    check_hand.backward(x, y)
    g_hand = torch.cat([p.grad.reshape(-1) for p in probe_model.parameters()])
    agreement = float((g_lib - g_hand).abs().max() / g_hand.abs().max().clamp_min(1e-30))

    timing = interleaved({"physgrad": physgrad_step, "hand": hand_step}, repeats)
    overhead, overhead_min = ratio(timing, "physgrad", "hand")
    queries = 2 * args.pairs
    per_query_us = 1e6 * (timing["median"]["physgrad"] - timing["median"]["hand"]) / queries
    rows = [
        ("physgrad PGT step", 1e3 * timing["median"]["physgrad"], 1e3 * timing["min"]["physgrad"], method.last_cost.queries),
        ("hand-written vmapped step", 1e3 * timing["median"]["hand"], 1e3 * timing["min"]["hand"], queries),
    ]
    print(f"global-scope PGT step, K = {args.pairs}, batch {args.batch}, δ = {DELTA}, {repeats} interleaved rounds, "
          f"{timing['clock']} time, torch threads {timing['threads']} of {timing['cpus']} CPUs, load average {timing['load_before']:.2f} before / "
          f"{timing['load_after']:.2f} after\n")
    print(markdown_table(rows, ["variant", "ms per step (median)", "ms (min)", "device queries"]))
    print(f"\noverhead_ratio (median of per-round ratios) = {overhead:.3f}; ratio of minima = {overhead_min:.3f}; "
          f"≈ {per_query_us:.1f} µs per probe query; estimates agree to {agreement:.1e} (max rel. diff)")

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.boxplot([[1e3 * t for t in timing["times"]["physgrad"]], [1e3 * t for t in timing["times"]["hand"]]])
    ax.set_xticks([1, 2], ["physgrad", "hand-written"])
    ax.set_ylabel("ms per PGT step")
    ax.set_title(f"K = {args.pairs}, batch {args.batch}: overhead {overhead:.2f}×", fontsize=9)
    print(f"plot: {save_figure(fig, plot_path(args, 'library_overhead'))}")

    figures = {
        "overhead_ratio": overhead,
        "overhead_ratio_min": overhead_min,
        "physgrad_ms": 1e3 * timing["median"]["physgrad"],
        "hand_ms": 1e3 * timing["median"]["hand"],
        "physgrad_min_ms": 1e3 * timing["min"]["physgrad"],
        "hand_min_ms": 1e3 * timing["min"]["hand"],
        "overhead_us_per_query": per_query_us,
        "physgrad_queries_per_step": method.last_cost.queries,
        "hand_queries_per_step": queries,
        "max_relative_difference": agreement,
        "num_pairs": args.pairs,
        "batch_size": args.batch,
        "repeats": repeats,
        "threads": timing["threads"],
        "clock": timing["clock"],
        "load_average_before": timing["load_before"],
        "load_average_after": timing["load_after"],
    }
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
