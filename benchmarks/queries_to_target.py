"""Device queries to reach backprop − 1 pt, with defaults only: physgrad vs CMA-ES and nevergrad (issue 13).

Per task of the validation suite's *held-out* set (``physgrad.data.suite.HELD_OUT``; the defaults
were chosen on the disjoint ``TUNING`` set, ``--tune``) and per seed, the hybrid network
``Linear(F → 8) → RandomReservoir(8, 32) → Linear(32 → C)`` is trained by

* ``backprop`` (the oracle; Adam at the default rate) — its final test accuracy minus 1 pt is the target;
* ``pgt_local``, ``pgt_global``, ``spsa`` (global, Rademacher directions) — physgrad's defaults
  (``physgrad.methods.defaults``: optimizer, rate, K, δ and, in the global scope, the loss back-off
  ``LossBackoff`` fed with each step's loss), nothing tuned per task;
* ``cma`` (pycma's CMA-ES) and ``ng_oneplusone`` (nevergrad's (1+1)-ES, ``OnePlusOne``; ``ng_ngopt``,
  ``ng_tbpsa``, ``ng_de`` on request) — the libraries' defaults, one initial step size ``sigma0 = 0.1`` for all (≈ the scale of a freshly
  initialised layer's weights; the libraries need one).

All at batch 32, the same data order and initialisation per seed. A *query* is one device forward
pass at one setting over one batch (``Cost.queries``, what the device counted). Test accuracy is read
at log-spaced query counts (every ≈ 7 %; these evaluations are the benchmark's, not the method's, and
are not counted); a run stops when it reaches the target or its budget. Reported per task: the median
over seeds of queries to target (a run that never reaches it counts as its budget, marked ``>``), and
the ratios to CMA-ES and to backprop. ``ratio_best_forward_only_to_cma``: per task the best of
``pgt_local``/``pgt_global``/``spsa`` ÷ ``cma``, median over tasks; ``ratio_global_to_cma`` likewise
for ``pgt_global``.

HGE is not in this table: it needs a time-domain device (sinusoidal parameter modulation read by a
lock-in), and the suite's reservoir is a static device; HGE's cost is device-seconds, compared at
equal device time in docs/results/hge.md.

    python -m benchmarks.queries_to_target [--quick] [--out F.json]
    python -m benchmarks.queries_to_target --tune          # the defaults' validation sweep (TUNING tasks)
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from physgrad.data import suite
from physgrad.data.datasets import Dataset
from physgrad.methods import PGT, Backprop
from physgrad.methods.baselines import CMAES, BlackBoxMethod, Nevergrad
from physgrad.methods.defaults import DEFAULTS, default_optimizer, default_schedule
from physgrad.models import ReservoirNet
from physgrad.models.physical_layer import clamp_to_safe_range_
from physgrad.systems import RandomReservoir

from ._common import markdown_table, parse_args, plot_path, save_figure, write_json
from ._hybrid import validation_split

RESERVOIR_INPUTS = 8
RESERVOIR_WIDTH = 32
BATCH = DEFAULTS["batch_size"]
SIGMA0 = 0.1
FORWARD_ONLY = ("pgt_local", "pgt_global", "spsa")
NEVERGRAD = {"ng_oneplusone": "OnePlusOne", "ng_ngopt": "NGOpt", "ng_tbpsa": "TBPSA", "ng_de": "TwoPointsDE"}
BASELINES = ("cma",) + tuple(NEVERGRAD)
# cma first after the cheap local scope: on a busy machine the comparisons that matter finish first.
# nevergrad's NGOpt picks a meta-model optimiser here whose cost per query grows with its archive
# (seconds per query after a few thousand): on request only (--methods); OnePlusOne is the default.
METHODS = ("backprop", "pgt_local", "cma", "pgt_global", "spsa", "ng_oneplusone")
BACKPROP_EPOCHS = 60


def make_net(data: Dataset, seed: int) -> ReservoirNet:
    res = RandomReservoir(RESERVOIR_INPUTS, RESERVOIR_WIDTH, seed=seed)
    return ReservoirNet(data.num_features, res, data.num_classes, seed=seed)


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class Setting:
    """How a method is built: for gradient methods an optimizer too; overrides of the defaults."""

    name: str
    overrides: dict = field(default_factory=dict)

    def build(self, model, seed: int, budget: int):
        o = self.overrides
        d = num_params(model)
        if self.name == "backprop":
            lr = o.get("lr", DEFAULTS["backprop"]["lr"])
            return Backprop(seed=seed), (default_optimizer(model, "backprop", lr=lr), None)
        if self.name in FORWARD_ONLY:
            scope = "local" if self.name == "pgt_local" else "global"
            cfg = {**DEFAULTS[scope], **o}
            k = int(cfg["num_pairs"])
            lr = o.get("lr")
            if scope == "global" and lr is None:
                lr = cfg["lr_constant"] * k / (d + k)
            make = PGT.spsa if self.name == "spsa" else PGT
            method = make(k, cfg["delta"], scope=scope, seed=seed)
            opt = default_optimizer(model, scope, num_pairs=k, optimizer=cfg["optimizer"], lr=lr,
                                    momentum=cfg["momentum"] if cfg["optimizer"] == "sgd" else None)
            sched = default_schedule(opt, scope, cfg["schedule"])
            if sched is not None:  # --tune points may set the back-off's window/patience/factor
                for key in ("window", "patience", "factor", "threshold", "z"):
                    if key in o:
                        value = o[key]
                        setattr(sched, key, value if value is None else int(value) if key in ("window", "patience") else float(value))
            return method, (opt, sched)
        if self.name == "cma":
            return CMAES(sigma0=o.get("sigma0", SIGMA0), seed=seed), None
        if self.name.startswith("ng_"):
            which = NEVERGRAD[self.name]
            return Nevergrad(which, budget=budget, sigma0=o.get("sigma0", SIGMA0), seed=seed), None
        raise ValueError(f"unknown method {self.name!r}")


def checkpoints(budget: int, first: int = 4, factor: float = 1.07) -> list[int]:
    out, q = [], float(first)
    while q < budget:
        out.append(int(q))
        q *= factor
    return out + [budget]


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def train(
    data: Dataset, setting: Setting, seed: int, budget: int, target: float | None = None,
    max_epochs: int | None = None,
) -> dict:
    """Train until ``target`` test accuracy (first checkpoint at or above it) or ``budget`` queries.

    Returns the curve ``[(queries, accuracy)]``, the queries at which the target was reached (None if
    not), and wall seconds.
    """
    torch.manual_seed(seed)
    model = make_net(data, seed)
    method, built = setting.build(model, seed, budget)
    opt, sched = built if built is not None else (None, None)
    g = torch.Generator().manual_seed(1000 + seed)
    marks = checkpoints(budget)
    curve, reached, start, epoch = [], None, time.perf_counter(), 0
    n = len(data.y_train)
    done = False
    while not done:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            x, y = data.x_train[idx], data.y_train[idx]
            if isinstance(method, BlackBoxMethod):
                method.step(model, F.cross_entropy, x, y)
            else:
                opt.zero_grad(set_to_none=True)
                loss = method.backward(model, F.cross_entropy, x, y)
                opt.step()
                clamp_to_safe_range_(model)
                if sched is not None:
                    sched.step(float(loss))
            q = method.total_cost.queries
            if marks and q >= marks[0]:
                while marks and q >= marks[0]:
                    marks.pop(0)
                acc = accuracy(model, data.x_test, data.y_test)
                curve.append((q, acc))
                if target is not None and acc >= target and reached is None:
                    reached = q
                    done = True
                    break
            if q >= budget:
                done = True
                break
        epoch += 1
        if max_epochs is not None and epoch >= max_epochs:
            done = True
    if not curve or curve[-1][0] != method.total_cost.queries:
        curve.append((method.total_cost.queries, accuracy(model, data.x_test, data.y_test)))
    return {"curve": curve, "reached": reached, "queries": method.total_cost.queries,
            "final_accuracy": curve[-1][1], "seconds": time.perf_counter() - start}


def backprop_reference(data: Dataset, seed: int, epochs: int) -> dict:
    """Backprop for ``epochs`` epochs; its target is the final accuracy − 1 pt, its queries the first checkpoint there."""
    steps = epochs * math.ceil(len(data.y_train) / BATCH)
    run = train(data, Setting("backprop"), seed, budget=steps)
    final = float(np.mean([a for _, a in run["curve"][-3:]]))  # the last three reads: less checkpoint noise
    target = final - 0.01
    run["target"] = target
    run["reached"] = next(q for q, a in run["curve"] if a >= target)
    return run


def queries_table(
    tasks: Sequence[Dataset], methods: Sequence[str], seeds: Sequence[int], budget_for: Callable[[str, int], int],
    epochs: int, overrides: dict[str, dict] | None = None, log=print, raw_path=None,
) -> dict:
    """``{task: {method: [queries-to-target or None per seed]}}`` plus budgets, targets and curves."""
    overrides = overrides or {}
    out = {}
    for data in tasks:
        per = {m: [] for m in methods}
        curves = {m: [] for m in methods}
        budgets, targets = {}, []
        for seed in seeds:
            ref = backprop_reference(data, seed, epochs)
            targets.append(ref["target"])
            per["backprop"].append(ref["reached"]) if "backprop" in per else None
            if "backprop" in curves:
                curves["backprop"].append(ref["curve"])
            for m in methods:
                if m == "backprop":
                    continue
                budget = budget_for(m, ref["reached"])
                budgets[m] = budget
                run = train(data, Setting(m, overrides.get(m, {})), seed, budget, target=ref["target"])
                per[m].append(run["reached"])
                curves[m].append(run["curve"])
                log(f"  {data.name} seed {seed} {m}: target {ref['target']:.3f} "
                    f"reached at {run['reached']} (budget {budget}, final {run['final_accuracy']:.3f}, {run['seconds']:.1f}s)")
            if raw_path is not None:  # after every seed, so a run cut short still leaves what it finished
                _write_raw(raw_path, {**out, data.name: {"queries": per, "budgets": budgets, "targets": targets,
                                                         "curves": curves}})
        out[data.name] = {"queries": per, "budgets": budgets, "targets": targets, "curves": curves}
        if raw_path is not None:  # after every task, so a run cut short still leaves what it finished
            _write_raw(raw_path, out)
    return out


def _write_raw(path, table: dict) -> None:
    import json
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(table, f)
    os.replace(f.name, path)


def _read_raw(paths: str) -> dict:
    import json

    table: dict = {}
    for p in paths.split(","):
        for name, t in json.load(open(p)).items():
            if name not in table:
                table[name] = t
                continue
            for m, vals in t["queries"].items():  # the same task from another process: more seeds
                table[name]["queries"].setdefault(m, []).extend(vals)
                table[name]["curves"].setdefault(m, []).extend(t["curves"].get(m, []))
            table[name]["targets"].extend(t["targets"])
            for m, b in t["budgets"].items():
                table[name]["budgets"][m] = max(b, table[name]["budgets"].get(m, 0))
    return table


def median_queries(values: list, budget: int) -> tuple[float, str]:
    """Median over seeds, a miss counted as its budget, and its mark: ``">"`` when the median itself is
    a miss, ``"≥"`` when a miss enters it (a lower bound), ``""`` when every seed reached the target."""
    vals = sorted(budget if v is None else v for v in values)
    med = float(statistics.median(vals))
    misses = sum(v is None for v in values)
    if misses * 2 > len(values) or (misses and med >= budget):
        return med, ">"
    return med, "≥" if misses else ""


def summarise(table: dict) -> tuple[list, dict]:
    """Rows of the Markdown table and the flat figures (see the module docstring)."""
    rows, fig = [], {}
    best_ratios, global_ratios = [], []
    for name, t in table.items():
        meds = {}
        for m, vals in t["queries"].items():
            if not vals:
                continue
            reached = [v for v in vals if v is not None]
            budget = t["budgets"].get(m, max(reached) if reached else 1)
            meds[m] = median_queries(vals, budget) + (f"{len(reached)}/{len(vals)}",)
        if "cma" not in meds or "pgt_global" not in meds:
            continue
        cma, cma_mark, _ = meds["cma"]
        bp = meds["backprop"][0]
        for m, (q, mark, seeds) in meds.items():
            rows.append((name, m, seeds, f"{mark}{q:.0f}", q / cma, q / bp))
            fig[f"{name}_{m}_queries"] = q
            fig[f"{name}_{m}_reached"] = mark == ""
        best = min(meds[m][0] for m in FORWARD_ONLY if m in meds)
        best_ratios.append(best / cma)
        global_ratios.append(meds["pgt_global"][0] / cma)
        fig[f"{name}_ratio_best_forward_only_to_cma"] = best / cma
        fig[f"{name}_ratio_global_to_cma"] = meds["pgt_global"][0] / cma
        fig[f"{name}_cma_censored"] = cma_mark != ""
    fig["ratio_best_forward_only_to_cma"] = float(statistics.median(best_ratios))
    fig["ratio_global_to_cma"] = float(statistics.median(global_ratios))
    fig["tasks_summarised"] = len(best_ratios)
    return rows, fig


def plot(table: dict, path) -> None:
    import matplotlib.pyplot as plt

    names = list(table)
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        t = table[name]
        for m, runs in t["curves"].items():
            if not runs:
                continue
            q, a = zip(*runs[0])
            ax.plot(q, a, label=m, lw=1.2)
        ax.axhline(statistics.median(t["targets"]), color="k", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("device queries")
        ax.set_ylabel("test accuracy")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("accuracy vs device queries (seed 0); dotted: backprop − 1 pt", fontsize=10)
    save_figure(fig, path)


def budget_cap(method: str) -> int:
    """Every run stops at 40 000 queries; nevergrad's sequential ask/tell costs milliseconds of Python per query: 5 000."""
    return NEVERGRAD_CAP if method.startswith("ng_") else BUDGET_CAP


NEVERGRAD_CAP = 5000
BUDGET_CAP = 40000


def _extra(parser) -> None:
    parser.add_argument("--seeds", type=int, default=None, help="seeds per task (default 3, quick 1)")
    parser.add_argument("--tasks", default=None, help="comma-separated suite tasks (default: the held-out set)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--budget-factor", type=float, default=None,
                        help="each method's budget = this × backprop's queries-to-target (default 400, quick 100)")
    parser.add_argument("--min-budget", type=int, default=None, help="budget floor (default 20000, quick 4000)")
    parser.add_argument("--seed-list", default=None, help="comma-separated seeds (instead of --seeds)")
    parser.add_argument("--raw", default=None, help="also write every run's queries and curves to this JSON file")
    parser.add_argument("--from-raw", default=None,
                        help="comma-separated --raw files of earlier runs: summarise them instead of training")
    parser.add_argument("--tune", action="store_true", help="the defaults' validation sweep on the TUNING tasks")
    parser.add_argument("--points", default=None,
                        help="--tune: grid points instead of TUNE_GRID, e.g. 'pgt_global:num_pairs=8,lr_constant=1;"
                             "pgt_local:num_pairs=2,lr=0.03'; the global scope's schedule: schedule=constant|backoff and "
                             "LossBackoff's window, patience, z (z=none: PyTorch's plateau rule)")


TUNE_GRID = {
    "pgt_local": [dict(num_pairs=k, lr=lr) for k in (2, 4, 8, 16) for lr in (1e-2, 3e-2, 1e-1)],
    "pgt_global": [dict(num_pairs=k, lr_constant=c) for k in (4, 8, 32) for c in (0.1, 0.3, 0.6, 1.0)],
}


def tune(args) -> dict:
    """Queries-to-target on the validation split of each TUNING task for each grid point (seed 0 and 1)."""
    seeds = list(range(args.seeds or 2))
    names = args.tasks.split(",") if args.tasks else list(suite.TUNING)
    tasks = [validation_split(suite.task(n), 0.25, seed=0) for n in names]
    grid_of = TUNE_GRID
    if args.points:
        grid_of = {}
        for spec in args.points.split(";"):
            m, _, kv = spec.partition(":")
            point = {}
            for item in filter(None, kv.split(",")):
                k, _, v = item.partition("=")
                if v.lower() == "none":  # e.g. z=none: LossBackoff's plateau rule (PyTorch's ReduceLROnPlateau)
                    point[k] = None
                else:
                    point[k] = v if k in ("optimizer", "schedule") else (int(v) if k in ("num_pairs", "window", "patience") else float(v))
            grid_of.setdefault(m, []).append(point)
    results = {}
    refs = {(d.name, s): backprop_reference(d, s, BACKPROP_EPOCHS) for d in tasks for s in seeds}
    for m, grid in grid_of.items():
        if m not in args.methods.split(","):
            continue
        for point in grid:
            key = m + " " + " ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in point.items())
            ratios = []
            for data in tasks:
                vals, finals, peaks = [], [], []
                for seed in seeds:
                    ref = refs[(data.name, seed)]
                    budget = max(args.min_budget or 20000, int((args.budget_factor or 200) * ref["reached"]))
                    run = train(data, Setting(m, point), seed, budget, target=ref["target"])
                    vals.append((budget if run["reached"] is None else run["reached"]) / ref["reached"])
                    # a collapse shows as a final accuracy (at the target, or at the budget) far below the peak
                    finals.append(run["final_accuracy"])
                    peaks.append(max(a for _, a in run["curve"]))
                ratios.append(statistics.median(vals))
                print(f"  {key} {data.name}: queries / backprop's = {ratios[-1]:.1f} "
                      f"(final accuracy {statistics.median(finals):.3f}, peak {statistics.median(peaks):.3f}, "
                      f"backprop − 1 pt {statistics.median(refs[(data.name, s)]['target'] for s in seeds):.3f})", flush=True)
                results[f"{key} {data.name} final_accuracy"] = statistics.median(finals)
            results[key] = statistics.median(ratios)
            print(f"{key}: median over tasks {results[key]:.1f}", flush=True)
    rows = sorted(((k, v) for k, v in results.items() if not k.endswith("final_accuracy")), key=lambda kv: kv[1])
    print(markdown_table(rows, ["setting", "median over tuning tasks of queries ÷ backprop's (to backprop − 1 pt)"]))
    write_json(args.out, {f"tune {k}": v for k, v in results.items()})
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], _extra, argv)
    if not args.threads:
        torch.set_num_threads(1)
        # one BLAS thread for pycma's eigendecompositions: on a shared 2-core box a threaded
        # OpenBLAS eigh of a 700 × 700 covariance ran 25× slower than single-threaded
        threadpool_limits(1)
    if args.tune:
        return tune(args)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    if args.seed_list:
        seeds = [int(s) for s in args.seed_list.split(",")]
    names = args.tasks.split(",") if args.tasks else (["wine", "digits59"] if args.quick else list(suite.HELD_OUT))
    methods = ["backprop"] + [m for m in args.methods.split(",") if m != "backprop"]
    for m in ("cma", "pgt_global"):
        if m not in methods:
            methods.append(m)
    factor = args.budget_factor or (60 if args.quick else 400)
    floor = args.min_budget or (3000 if args.quick else 20000)
    epochs = 20 if args.quick else BACKPROP_EPOCHS
    start = time.perf_counter()
    if args.from_raw:
        table = _read_raw(args.from_raw)
        names = list(table)
        seeds = list(range(len(next(iter(table.values()))["targets"])))
    else:
        tasks = [suite.task(n) for n in names]
        table = queries_table(tasks, methods, seeds, lambda m, ref: min(budget_cap(m), max(floor, int(factor * ref))), epochs,
                              raw_path=args.raw)
    rows, fig = summarise(table)
    print("\nqueries to reach backprop − 1 pt (median over seeds; '>': the median is a miss, i.e. the budget; "
          f"'≥': a seed's miss enters the median), batch {BATCH}\n")
    print(markdown_table(rows, ["task", "method", "seeds reached", "queries", "÷ CMA-ES", "÷ backprop"]))
    print(f"\nratio_best_forward_only_to_cma = {fig['ratio_best_forward_only_to_cma']:.3g}, "
          f"ratio_global_to_cma = {fig['ratio_global_to_cma']:.3g}")
    path = plot_path(args, "queries_to_target")
    plot(table, path)
    print(f"plot: {path}")
    fig.update(seeds=len(seeds), tasks=",".join(names), batch_size=BATCH, budget_factor=factor, budget_floor=floor,
               backprop_epochs=epochs, seconds=time.perf_counter() - start)
    write_json(args.out, fig)
    return fig


if __name__ == "__main__":
    main()
