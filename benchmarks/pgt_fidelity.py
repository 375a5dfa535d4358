"""Gradient fidelity of the forward-only estimators on the hybrid net (issue 2, benchmark 1).

On the PGT paper's dense network with a reservoir layer (``Linear(64 → 32) → RandomReservoir(32,
256) → Linear(256 → 10)`` on a fixed batch of 64 digits, ``D = 4907`` trainable parameters), each
estimator's gradient is compared with the exact one (the backpropagation oracle through the
reservoir's differentiable simulator):

* cosine similarity and relative error ``‖ĝ − g‖ / ‖g‖`` vs the number of pairs ``K = 1 … 256``,
  over ``R`` independent estimates per ``K``, for PGT (integer r = 1) and SPSA (Rademacher), in the
  global and the local scope; central finite differences (deterministic, one point at its own
  cost of ``2D + 1`` or ``2(n_in + n_θ) + 1`` queries);
* the fitted slope of ``log(relative error)`` vs ``log K`` (theory: −1/2), and for the global scope
  the closed form ``E‖ĝ − g‖² / ‖g‖² = (D + κ − 2) / K`` with ``κ = E[P⁴] / E[P²]²`` (1.5 for the
  ternary PGT matrix, 1 for SPSA; derivation in docs/methods/pgt.md);
* the mean of many (1000 in the full run) PGT-global estimates at ``K = 256`` vs the exact gradient:
  unbiasedness means its cosine tends to 1 (floor 0.99).

    python -m benchmarks.pgt_fidelity [--quick] [--out FILE.json] [--threads N]
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from physgrad.data import load_dataset
from physgrad.methods import PGT, Backprop, FiniteDifference

from ._common import markdown_table, parse_args, plot_path, save_figure, write_json
from ._hybrid import flat_gradient, hybrid_net, num_parameters

DELTA = 1e-2  # the training benchmark's delta (docs/methods/pgt.md, "choosing the settings")
BATCH = 64


def _extra(parser) -> None:
    parser.add_argument("--repeats", type=int, default=None, help="estimates per K (default 30, quick 4)")
    parser.add_argument("--mean-estimates", type=int, default=None, help="estimates averaged (default 1000, quick 40)")
    parser.add_argument("--mean-pairs", type=int, default=None, help="K of each averaged estimate (default 256, quick 64)")
    parser.add_argument("--max-k", type=int, default=None, help="largest K (default 256, quick 64)")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=0))


def relative_error(estimate: torch.Tensor, exact: torch.Tensor) -> float:
    return float((estimate.double() - exact.double()).norm() / exact.double().norm())


def fitted_slope(ks: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope of ``log(error)`` against ``log(K)``."""
    return float(np.polyfit(np.log(ks), np.log(errors), 1)[0])


def estimated_mask(model: torch.nn.Module) -> torch.Tensor:
    """True for the coordinates the local scope *estimates* (encoder and device; the read-out is exact)."""
    return torch.cat(
        [torch.full((p.numel(),), not name.startswith("readout"), dtype=torch.bool) for name, p in model.named_parameters()]
    )


def kurtosis_ratio(distribution: str) -> float:
    """``κ = E[P⁴] / E[P²]²`` of one perturbation entry (ternary integer r = 1, Rademacher, Gaussian)."""
    return {"integer": 1.5, "rademacher": 1.0, "gaussian": 3.0}[distribution]


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], _extra, argv)
    repeats = args.repeats or (4 if args.quick else 30)
    n_mean = args.mean_estimates or (40 if args.quick else 1000)
    k_mean = args.mean_pairs or (64 if args.quick else 256)
    max_k = args.max_k or (64 if args.quick else 256)
    ks = [2**i for i in range(int(math.log2(max_k)) + 1)]
    if 32 not in ks:
        raise SystemExit("--max-k must be at least 32 (the K = 32 figures are part of the contract)")

    data = load_dataset("digits")
    x, y = data.x_train[:BATCH], data.y_train[:BATCH]
    model = hybrid_net(x.shape[1], seed=0)
    dim = num_parameters(model)
    exact = flat_gradient(model, Backprop(), x, y)
    mask = estimated_mask(model)

    # ---------------------------------------------------------------- random estimators vs K
    families = {
        "pgt_global": lambda k, s: PGT(k, DELTA, scope="global", seed=s),
        "pgt_local": lambda k, s: PGT(k, DELTA, scope="local", seed=s),
        "spsa_global": lambda k, s: PGT.spsa(k, DELTA, scope="global", seed=s),
        "spsa_local": lambda k, s: PGT.spsa(k, DELTA, scope="local", seed=s),
    }
    curves: dict[str, dict[str, list[float]]] = {}
    rows = []
    for name, make in families.items():
        curve = {"k": [], "cos": [], "cos_std": [], "rel": [], "rel_rms": [], "cos_est": [], "queries": []}
        for k in ks:
            cos, rel, cos_est, queries = [], [], [], 0
            for rep in range(repeats):
                method = make(k, 1000 * k + rep)
                g = flat_gradient(model, method, x, y)
                cos.append(cosine(g, exact))
                rel.append(relative_error(g, exact))
                cos_est.append(cosine(g[mask], exact[mask]))
                queries = method.last_cost.queries
            curve["k"].append(k)
            curve["cos"].append(float(np.mean(cos)))
            curve["cos_std"].append(float(np.std(cos)))
            curve["rel"].append(float(np.mean(rel)))
            curve["rel_rms"].append(float(np.sqrt(np.mean(np.square(rel)))))
            curve["cos_est"].append(float(np.mean(cos_est)))
            curve["queries"].append(queries)
            rows.append((name, k, queries, curve["cos"][-1], curve["cos_std"][-1], curve["cos_est"][-1], curve["rel"][-1]))
        curve["slope"] = fitted_slope(curve["k"], curve["rel_rms"])
        curves[name] = curve

    # ---------------------------------------------------------------- finite differences (deterministic)
    fd = {}
    for scope in ("global", "local"):
        method = FiniteDifference(scope=scope, delta=DELTA)
        g = flat_gradient(model, method, x, y)
        fd[scope] = {"cos": cosine(g, exact), "rel": relative_error(g, exact), "cos_est": cosine(g[mask], exact[mask]),
                     "queries": method.last_cost.queries}
        rows.append((f"fd_{scope}", "—", fd[scope]["queries"], fd[scope]["cos"], 0.0, fd[scope]["cos_est"], fd[scope]["rel"]))

    # ---------------------------------------------------------------- the mean of many PGT-global estimates
    total = torch.zeros_like(exact, dtype=torch.float64)
    running_n, running_cos = [], []
    checkpoints = {int(round(v)) for v in np.geomspace(1, n_mean, 25)}
    method = PGT(k_mean, DELTA, scope="global", seed=12345)
    for i in range(1, n_mean + 1):
        total += flat_gradient(model, method, x, y).double()
        if i in checkpoints:
            running_n.append(i)
            running_cos.append(cosine(total / i, exact))
    mean_estimate = total / n_mean
    cos_mean = cosine(mean_estimate, exact)
    rel_mean = relative_error(mean_estimate, exact)
    kappa = kurtosis_ratio("integer")
    cos_mean_theory = 1.0 / math.sqrt(1.0 + (dim + kappa - 2) / (n_mean * k_mean))

    # ---------------------------------------------------------------- report
    headers = ["estimator", "K", "queries/gradient", "cosine (mean)", "cosine (std)", "cosine, estimated part", "rel. error (mean)"]
    print(f"hybrid ReservoirNet, D = {dim} parameters, batch {BATCH}, delta = {DELTA}, {repeats} estimates per K\n")
    print(markdown_table(rows, headers))
    print()
    slope_rows = [(n, c["slope"], -0.5) for n, c in curves.items()]
    print(markdown_table(slope_rows, ["estimator", "fitted slope of log rel. error vs log K", "theory"]))
    print()
    print(markdown_table(
        [(n_mean, k_mean, n_mean * k_mean, 2 * n_mean * k_mean, cos_mean, cos_mean_theory, rel_mean)],
        ["estimates averaged", "K each", "pairs in total", "queries in total", "cosine of mean vs exact", "theory", "rel. error"],
    ))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {"pgt_global": "C0", "pgt_local": "C1", "spsa_global": "C2", "spsa_local": "C3"}
    for name, c in curves.items():
        axes[0].errorbar(c["k"], c["cos"], yerr=c["cos_std"], marker="o", ms=3, capsize=2, color=colors[name], label=name)
        axes[1].loglog(c["k"], c["rel_rms"], "o-", ms=3, color=colors[name], label=f"{name} (slope {c['slope']:.2f})")
    for scope, style in (("global", ":"), ("local", "--")):
        axes[0].axhline(fd[scope]["cos"], color="k", ls=style, lw=1, label=f"fd_{scope} ({fd[scope]['queries']} queries)")
    k_arr = np.array(ks, dtype=float)
    for dist, color in (("integer", "C0"), ("rademacher", "C2")):
        axes[1].loglog(k_arr, np.sqrt((dim + kurtosis_ratio(dist) - 2) / k_arr), color=color, lw=0.8, ls=":",
                       label=f"theory, global {'PGT' if dist == 'integer' else 'SPSA'}")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("pairs per estimate K")
    axes[0].set_ylabel("cosine(estimate, exact)")
    axes[0].set_title("single estimates")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("pairs per estimate K")
    axes[1].set_ylabel("rms relative error ‖ĝ − g‖/‖g‖")
    axes[1].set_title("error falls like 1/√K")
    axes[1].legend(fontsize=7)
    pairs = np.array(running_n, dtype=float) * k_mean
    axes[2].semilogx(pairs, running_cos, "o-", ms=3, label="mean of n PGT-global estimates")
    axes[2].semilogx(pairs, 1.0 / np.sqrt(1.0 + (dim + kappa - 2) / pairs), "k:", lw=1, label="theory 1/√(1 + (D−½)/nK)")
    axes[2].axhline(0.99, color="r", lw=0.8, ls="--", label="floor 0.99")
    axes[2].set_xlabel(f"pairs in total (n × K, K = {k_mean})")
    axes[2].set_ylabel("cosine(mean, exact)")
    axes[2].set_title("unbiased: the mean converges")
    axes[2].legend(fontsize=7)
    print(f"\nplot: {save_figure(fig, plot_path(args, 'pgt_fidelity'))}")

    k32 = ks.index(32)
    figures = {
        "cosine_mean_estimate": cos_mean,
        "cosine_mean_estimate_theory": cos_mean_theory,
        "relative_error_mean_estimate": rel_mean,
        "mean_estimates": n_mean,
        "mean_estimate_pairs": k_mean,
        "cosine_single_k32_global": curves["pgt_global"]["cos"][k32],
        "cosine_single_k32_local": curves["pgt_local"]["cos"][k32],
        "cosine_single_k32_local_estimated_part": curves["pgt_local"]["cos_est"][k32],
        "cosine_single_k32_spsa_global": curves["spsa_global"]["cos"][k32],
        "cosine_single_k32_spsa_local": curves["spsa_local"]["cos"][k32],
        "cosine_fd_global": fd["global"]["cos"],
        "cosine_fd_local": fd["local"]["cos"],
        "queries_fd_global": fd["global"]["queries"],
        "queries_fd_local": fd["local"]["queries"],
        "parameters": dim,
        "delta": DELTA,
        "repeats": repeats,
    }
    for name, c in curves.items():
        figures[f"slope_{name}"] = c["slope"]
        figures[f"cosine_k{ks[-1]}_{name}"] = c["cos"][-1]
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
