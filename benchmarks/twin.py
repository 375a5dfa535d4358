"""Learned digital twins: device queries to reach backprop − 1 pt, and the wrong-twin experiment (issue 16).

Two questions, one run:

1. **Queries to target** (digits, the PGT paper's hybrid net ``Linear(64 → 32) →
   RandomReservoir(32, 256) → Linear(256 → 10)``). Every method trains the same seeded networks
   for the same epochs; after each epoch the test accuracy and the device queries spent on
   gradients (the method's ``total_cost``: forward passes, perturbation probes *and* the twin's
   dedicated samples) are recorded. The target is backprop's final accuracy (mean over seeds) minus
   1 pt; a method's queries-to-target are the queries (mean over seeds) at the first epoch whose
   seed-mean accuracy reaches it. ``ratio_twin_to_backprop`` is the best twin-based method's
   queries-to-target divided by backprop's (backprop counts one query per step: the limit).

   Methods: ``backprop`` (oracle), ``pgt_local`` (PGT's perturbative VJP, K = 8, the validated
   setting of benchmarks.pgt_training), ``pat`` (device forward, learned-twin backward),
   ``twin_cv`` (TwinGuidedPGT: twin as control variate, K = 2, correction measured on a random
   quarter of the steps) and, with ``--methods``, ``twin_guided`` (TwinGuidedPGT: guided-ES
   directions, α = 0.5, no control variate, K = 2, every step). ``--quick`` uses a smaller twin
   (one hidden layer of 128) on 500 training images for 5 epochs. If no twin method reaches the
   target, ``ratio_twin_to_backprop`` is the lower bound "all queries spent ÷ backprop's" and
   ``ratio_twin_to_backprop_reached`` is false.

2. **Wrong twin** (device level, where the estimators differ): at a fixed measured point (the
   hybrid net's reservoir at its seed-0 initialisation, inputs = the encoder's outputs on 64 digits,
   cotangent = ∂loss/∂output of the net; for the ring and the DNPU, random in-range inputs and a
   random cotangent), each estimator's vector–Jacobian product ``(vᵀ∂y/∂x, vᵀ∂y/∂θ)`` is compared with
   the exact one (autograd through the simulator: the oracle, used only to score). Twins: *right*
   (fitted on dedicated samples of the same device) and *wrong* (the same recipe on another seed of
   the device: a different device of the same kind). The twins are frozen here. Reported: the cosine
   of the mean of ``N`` estimates to the exact VJP (unbiasedness: → 1 as N grows), the relative error
   of that mean, and the mean cosine of a single estimate. ``guided_wrong_twin_cosine`` and
   ``pat_wrong_twin_cosine`` are the reservoir's wrong-twin figures for ``twin_cv`` and ``pat``
   (mean over the fixed points).

   ``--dataset fashion-mnist`` trains the same hybrid on Fashion-MNIST (offline, via
   ``physgrad.data.load_dataset``) instead of digits: a seeded random subset of
   ``FASHION["train"]`` training / ``FASHION["test"]`` test images (the full 60k/10k does not fit the
   shared box; ``--train/--test`` change it), with every setting of the digits rows unchanged (not
   re-tuned). Only the encoder's input width changes: ``Linear(784 → 32)`` instead of
   ``Linear(64 → 32)`` (``ReservoirNet`` sizes it from the data); the device layer is the same.

   ``--network dnpu`` trains a DNPU instead of a hybrid net: the 3-D sphere task of
   benchmarks.hge_sphere (512 training / 2048 test points in [−1, 1]³, inside/outside the ball of
   half the cube's volume, coordinates mapped onto input electrodes 2, 3, 4) on the built-in
   synthetic DNPU (``DNPU.synthetic(seed=0)``, or ``--dnpu PATH``: a shared surrogate ``.npz`` as the
   device; static, noise-free; the four other electrodes are
   the trained controls, initialised uniformly in their range from the run's seed), followed by
   hge_sphere's digital read-out ``w·I + b`` (as the logits ``[0, w·I + b]``: cross-entropy on them is
   hge_sphere's BCE). Default 25 epochs = hge_sphere's 400 steps of 32. Every method's setting
   (learning rate, K, q, twin) is the digits rows', not re-tuned. The twin is fitted only to the
   DNPU's answers to the method's own queries (warm-up, refit and training measurements).

    python -m benchmarks.twin [--quick] [--out FILE.json] [--seeds N] [--epochs N] [--parts training,fidelity]
                              [--dataset digits|fashion-mnist] [--network reservoir|ring|dnpu] [--dnpu PATH]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from physgrad.data import load_dataset
from physgrad.data.datasets import Dataset
from physgrad.methods import PGT, Backprop
from physgrad.methods.base import GradientMethod
from physgrad.methods.twin import PAT, Twin, TwinGuidedPGT
from physgrad.models import ReservoirNet
from physgrad.systems import RandomReservoir
from physgrad.systems.base import PhysicalSystem
from physgrad.training import Trainer

from ._common import markdown_table, parse_args, plot_path, save_figure, write_json
from ._hybrid import hybrid_net

TWIN_METHODS = ("pat", "twin_cv", "twin_guided")
METHODS = ("backprop", "pgt_local") + TWIN_METHODS
DEFAULT_METHODS = ("backprop", "pgt_local", "pat", "twin_cv")  # twin_guided: --methods (see the fidelity table)


@dataclass(frozen=True)
class Setting:
    lr: float
    make: Callable[[int, dict], GradientMethod]  # (seed, twin options) -> method
    label: str


TWIN_OPTIONS = dict(hidden=(256, 256), capacity=10000, max_steps=300)
QUICK_TWIN = dict(hidden=(128,), capacity=4000, max_steps=150)
# Learning rates: backprop's and PGT-local's are the validated settings of benchmarks.pgt_training;
# PAT uses backprop's (its gradient is a backprop-like one); the perturbative twin methods use
# 3e-3 (between PGT-local's 1e-3 and backprop's 1e-2: their estimate is noisier than PAT's).
SETTINGS: dict[str, Setting] = {
    "backprop": Setting(1e-2, lambda s, o: Backprop(seed=s), "Adam 1e-2"),
    "pgt_local": Setting(1e-3, lambda s, o: PGT(8, 1e-2, scope="local", seed=s), "K 8, δ 1e-2, Adam 1e-3"),
    "pat": Setting(1e-2, lambda s, o: PAT(twin_options=o, warmup_queries=32, refit_queries=8, seed=s),
                   "32 warm-up + 8 per refit queries, Adam 1e-2"),
    "twin_cv": Setting(3e-3, lambda s, o: TwinGuidedPGT(2, 1e-2, correction_prob=0.25, twin_options=o,
                                                     warmup_queries=32, refit_queries=8, seed=s),
                       "control variate, K 2, q 0.25, Adam 3e-3"),
    "twin_guided": Setting(3e-3, lambda s, o: TwinGuidedPGT(2, 1e-2, alpha=0.5, control_variate=False,
                                                            twin_options=o, warmup_queries=32,
                                                         refit_queries=8, seed=s),
                           "guided ES α 0.5, K 2, Adam 3e-3"),
}
EPOCHS, BATCH = 20, 32
QUICK = dict(epochs=5, train=500, test=300)
FASHION = dict(train=2000, test=1000)  # the documented Fashion-MNIST subset (seeded, seed 0)
DATASETS = ("digits", "fashion-mnist")


def _extra(parser) -> None:
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3, quick 1)")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs per method (default {EPOCHS}, quick 3)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--parts", default="training,fidelity", help="training,fidelity (default both)")
    parser.add_argument("--estimates", type=int, default=None, help="estimates averaged per fidelity row (default 400, quick 40)")
    parser.add_argument("--devices", default=None, help="fidelity devices: reservoir,ring,dnpu (default all, quick reservoir)")
    parser.add_argument("--dnpu", default=None, metavar="PATH",
                        help="--network dnpu: a surrogate .npz in the shared format as the device (default: the built-in "
                             "synthetic DNPU)")
    parser.add_argument("--dataset", default="digits", choices=DATASETS,
                        help="training data: digits (default) or fashion-mnist (a seeded subset, see --train/--test)")
    parser.add_argument("--train", type=int, default=None,
                        help=f"training images, a seeded subset (default: digits all, fashion-mnist {FASHION['train']}; "
                             f"quick {QUICK['train']})")
    parser.add_argument("--test", type=int, default=None,
                        help=f"test images, a seeded subset (default: digits all, fashion-mnist {FASHION['test']}; "
                             f"quick {QUICK['test']})")
    parser.add_argument("--network", default="reservoir", choices=("reservoir", "ring", "dnpu"),
                        help="training: the digits hybrid with the random reservoir (default) or with the auto-oscillation "
                             "ring (ReservoirNet 64 → 16 → ring, 100 nodes, static → 10, as benchmarks.ring_reservoir) or the synthetic DNPU on hge_sphere's "
                             "sphere task (--dataset is then not used)")


# ----------------------------------------------------------------------------------------- training
SPHERE = dict(train=512, test=2048, epochs=25)  # benchmarks.hge_sphere: 512 / 2048 points, 400 steps of 32
QUICK_SPHERE = dict(train=64, test=256)


class SphereReadout(torch.nn.Module):
    """hge_sphere's digital read-out ``z = w·I + b`` (w = 0.1, b = 0 at start), as the two logits ``[0, z]``:
    cross-entropy on them equals hge_sphere's BCE on ``sigmoid(z)``, so the benchmark's Trainer applies."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.1))
        self.b = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        z = self.w * current.reshape(-1) + self.b
        return torch.stack([torch.zeros_like(z), z], dim=-1)


def sphere_dnpu(path: str | None = None):
    """The DNPU of the ``dnpu`` rows: the built-in synthetic one, or a shared surrogate ``.npz`` (``--dnpu PATH``)
    used as the device (it answers measurements; the twin never reads its weights)."""
    from physgrad.systems.devices.dnpu import DNPU

    from .hge_sphere import INPUT_ELECTRODES

    if path is None:
        return DNPU.synthetic(seed=0, input_electrodes=INPUT_ELECTRODES)
    return DNPU.load(path, input_electrodes=INPUT_ELECTRODES)


def sphere_dataset(quick: bool, path: str | None = None) -> Dataset:
    """hge_sphere's task in volts on the DNPU's input electrodes (its seeds: 100 train, 200 test)."""
    from .hge_sphere import sphere_data, to_volts

    sizes = QUICK_SPHERE if quick else SPHERE
    dnpu = sphere_dnpu(path)
    p_tr, y_tr = sphere_data(sizes["train"], seed=100)
    p_te, y_te = sphere_data(sizes["test"], seed=200)
    return Dataset("sphere", to_volts(p_tr, dnpu), y_tr.long(), to_volts(p_te, dnpu), y_te.long(), 2, (1, 3))


def _network(kind: str, data: Dataset, seed: int, dnpu_path: str | None = None) -> torch.nn.Module:
    """The hybrid net: the PGT paper's reservoir one, or the ring hybrid of benchmarks.ring_reservoir;
    or (``dnpu``) the DNPU of :func:`sphere_dnpu` with hge_sphere's read-out and seeded uniform initial controls."""
    if kind == "dnpu":
        from physgrad.models import PhysicalLayer

        dnpu = sphere_dnpu(dnpu_path)
        model = torch.nn.Sequential(PhysicalLayer(dnpu), SphereReadout())
        low, high = dnpu.parameter_bounds()["controls"]
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            model[0].params["controls"].copy_(low + (high - low) * torch.rand(low.shape, generator=g))
        return model
    if kind == "ring":
        from physgrad.systems.devices.ring import AutoOscillationRing

        return ReservoirNet(data.num_features, AutoOscillationRing(16, 100, mode="static", seed=1000 + seed),
                            data.num_classes, seed=seed)
    return hybrid_net(data.num_features, data.num_classes, seed=seed)


def train_one(data: Dataset, name: str, seed: int, epochs: int, twin_options: dict = TWIN_OPTIONS,
              network: str = "reservoir", dnpu_path: str | None = None) -> dict:
    setting = SETTINGS[name]
    model = _network(network, data, seed, dnpu_path)
    method = setting.make(seed, dict(twin_options))
    opt = torch.optim.Adam(model.parameters(), lr=setting.lr)
    trainer = Trainer(model, method, opt, batch_size=BATCH, seed=seed, progress=False)
    started = time.perf_counter()
    records = trainer.fit(data, epochs)
    twins = list(getattr(method, "twins", {}).values())
    return {
        "accuracy": [r["test_accuracy"] for r in records],
        "queries": [r["queries"] for r in records],
        "twin_queries": sum(t.sampled_queries for t in twins),
        "twin_error": float(np.mean([t.heldout_error for t in twins])) if twins else math.nan,
        "twin_fits": sum(t.fits for t in twins),
        "wall": time.perf_counter() - started,
    }


def queries_to(acc: Sequence[float], queries: Sequence[float], target: float) -> float:
    """Queries at the first epoch whose accuracy reaches ``target`` (``inf`` if none does)."""
    for a, q in zip(acc, queries):
        if a >= target - 1e-9:
            return float(q)
    return math.inf


def _training_data(args) -> Dataset:
    """digits (whole) or the seeded Fashion-MNIST subset; ``--quick``: the QUICK subset of either."""
    data = load_dataset(args.dataset)
    sizes = QUICK if args.quick else (FASHION if args.dataset != "digits" else {"train": None, "test": None})
    train_n = args.train if args.train is not None else sizes["train"]
    test_n = args.test if args.test is not None else sizes["test"]
    if train_n is not None or test_n is not None:
        data = data.subset(train=train_n, test=test_n, seed=0)
    return data


def training(args, figures: dict) -> dict[str, dict]:
    if args.dnpu is not None and args.network != "dnpu":
        raise SystemExit("--dnpu PATH is the device of --network dnpu; give both")
    if args.network == "dnpu":
        data = sphere_dataset(args.quick, args.dnpu)
        epochs = args.epochs or (QUICK["epochs"] if args.quick else SPHERE["epochs"])
    else:
        data = _training_data(args)
        epochs = args.epochs or (QUICK["epochs"] if args.quick else EPOCHS)
    seeds = args.seeds or (1 if args.quick else 3)
    names = [n for n in args.methods.split(",") if n]
    if "backprop" not in names:
        names = ["backprop"] + names
    print(f"{data.name}, {args.network} ({data.num_features} inputs): {len(data.y_train)} train / {len(data.y_test)} test, {epochs} epochs, "
          f"{seeds} seed(s)", flush=True)
    figures["network"] = args.network
    if args.network == "dnpu":
        figures["dnpu_device"] = sphere_dnpu(args.dnpu).name
    figures["dataset"] = data.name
    figures["input_features"] = data.num_features  # the encoder's input width (64 digits, 784 Fashion-MNIST)
    curves: dict[str, dict] = {}
    for name in names:
        runs = []
        for seed in range(seeds):
            run = train_one(data, name, seed, epochs, QUICK_TWIN if args.quick else TWIN_OPTIONS, args.network, args.dnpu)
            runs.append(run)
            print(f"  {name} seed {seed}: final {run['accuracy'][-1]:.4f}, {run['queries'][-1]} queries "
                  f"({run['twin_queries']} twin), {run['wall']:.1f} s", flush=True)
        curves[name] = {
            "accuracy": np.mean([r["accuracy"] for r in runs], axis=0),
            "queries": np.mean([r["queries"] for r in runs], axis=0),
            "twin_queries": float(np.mean([r["twin_queries"] for r in runs])),
            "twin_error": float(np.mean([r["twin_error"] for r in runs])),
            "twin_fits": float(np.mean([r["twin_fits"] for r in runs])),
            "final_std": float(np.std([r["accuracy"][-1] for r in runs])),
            "wall": float(np.mean([r["wall"] for r in runs])),
            "runs": runs,
        }
        print(f"  {name} per epoch (mean over seeds): accuracy "
              + " ".join(f"{a:.4f}" for a in curves[name]["accuracy"]) + " | queries "
              + " ".join(f"{q:g}" for q in curves[name]["queries"]), flush=True)
    target = float(curves["backprop"]["accuracy"][-1]) - 0.01
    q_bp = queries_to(curves["backprop"]["accuracy"], curves["backprop"]["queries"], target)
    figures.update({"epochs": epochs, "seeds": seeds, "train_samples": len(data.y_train),
                    "test_samples": len(data.y_test), "target_accuracy": target, "backprop_queries_to_target": q_bp})
    rows = []
    for name, c in curves.items():
        q = queries_to(c["accuracy"], c["queries"], target)
        ratio = q / q_bp
        figures[f"{name}_final_accuracy"] = float(c["accuracy"][-1])
        figures[f"{name}_queries_total"] = float(c["queries"][-1])
        figures[f"{name}_queries_to_target"] = q if math.isfinite(q) else None
        figures[f"{name}_ratio_to_backprop"] = ratio if math.isfinite(ratio) else None
        # the spread: each seed's own queries to the (seed-mean) target, ÷ backprop's seed-mean figure
        per_seed = [queries_to(r["accuracy"], r["queries"], target) for r in c["runs"]]
        figures[f"{name}_queries_to_target_per_seed"] = [q if math.isfinite(q) else None for q in per_seed]
        print(f"  {name}: queries to target per seed " + ", ".join(f"{q:g}" for q in per_seed)
              + " (÷ backprop: " + ", ".join(f"{q / q_bp:.2f}" for q in per_seed) + ")", flush=True)
        if name in TWIN_METHODS:
            figures[f"{name}_twin_queries"] = c["twin_queries"]
            figures[f"{name}_twin_heldout_error"] = c["twin_error"]
        rows.append((name, SETTINGS[name].label, f"{100 * c['accuracy'][-1]:.2f} ± {100 * c['final_std']:.2f}",
                     float(c["queries"][-1]), c["twin_queries"] if name in TWIN_METHODS else "—",
                     q if math.isfinite(q) else "not reached", f"{ratio:.2f}" if math.isfinite(ratio) else "—",
                     f"{c['twin_error']:.3f}" if name in TWIN_METHODS else "—", c["wall"]))
    reached = {n: figures[f"{n}_ratio_to_backprop"] for n in curves
               if n in TWIN_METHODS and figures[f"{n}_ratio_to_backprop"] is not None}
    figures["ratio_twin_to_backprop_reached"] = bool(reached)
    if reached:
        best_name = min(reached, key=reached.get)
        figures["ratio_twin_to_backprop"] = reached[best_name]
    else:  # no twin method reached the target: a lower bound, all queries it spent ÷ backprop's (flagged)
        spent = {n: float(curves[n]["queries"][-1]) / q_bp for n in curves if n in TWIN_METHODS}
        best_name = min(spent, key=spent.get) if spent else None
        figures["ratio_twin_to_backprop"] = spent[best_name] if spent else None
    figures["best_twin_method"] = best_name
    print(f"\ntarget: backprop's final {100 * (target + 0.01):.2f} % − 1 pt = {100 * target:.2f} %; backprop reaches it "
          f"after {q_bp:g} queries\n")
    print(markdown_table(rows, ["method", "setting", "final test acc % (mean ± std)", "queries (total)",
                                "of which twin data", "queries to target", "÷ backprop", "twin held-out error",
                                "wall s"]))
    return curves


# ----------------------------------------------------------------------------------------- fidelity
def _device(kind: str, seed: int) -> PhysicalSystem:
    if kind == "reservoir":
        return RandomReservoir(32, 256, seed=seed)
    if kind == "ring":
        from physgrad.systems.devices.ring import AutoOscillationRing

        return AutoOscillationRing(16, 100, mode="static", seed=1000 + seed)
    if kind == "dnpu":
        from physgrad.systems.devices.dnpu import DNPU

        return DNPU.synthetic(seed=seed)
    raise ValueError(kind)


def _point(kind: str, system: PhysicalSystem, g: torch.Generator):
    """A measured point ``(params, inputs, cotangent)`` of ``system``."""
    params = system.initial_parameters()
    if kind == "reservoir":
        data = load_dataset("digits")
        model = hybrid_net(data.num_features, data.num_classes, seed=0)
        idx = torch.randperm(len(data.y_train), generator=g)[:64]
        x, y = data.x_train[idx], data.y_train[idx]
        with torch.no_grad():
            h = model.encoder(x.flatten(1))
        h.requires_grad_(False)
        out = system.simulate(params, h)[0].detach().requires_grad_(True)
        loss = F.cross_entropy(model.readout(out), y)
        (v,) = torch.autograd.grad(loss, out)
        return params, h, v.detach(), model.encoder(data.x_train[:1024].flatten(1)).detach()
    lo, hi = system.input_range if system.input_range is not None else (-1.0, 1.0)
    lo, hi = max(lo, -1.0), min(hi, 1.0)
    pool = lo + (hi - lo) * torch.rand(1024, *system.input_shape, generator=g)
    x = pool[:64]
    v = torch.randn(64, *system.output_shape, generator=g)
    return params, x, v, pool


def exact_vjp(system: PhysicalSystem, params, x, v) -> torch.Tensor:
    p = {n: t.clone().requires_grad_(True) for n, t in params.items()}
    xx = x.clone().requires_grad_(True)
    out = system.simulate(p, xx)[0]
    grads = torch.autograd.grad((out * v).sum(), [xx, *p.values()])
    return torch.cat([t.reshape(-1) for t in grads]).double()


def fitted_twin(system: PhysicalSystem, params, pool: torch.Tensor, queries: int, seed: int, options: dict = TWIN_OPTIONS) -> Twin:
    """A twin fitted on ``queries`` dedicated measurements of ``system`` (inputs drawn from ``pool``)."""
    twin = Twin(system, seed=seed, **options)
    g = torch.Generator().manual_seed(seed)
    for _ in range(queries // 16):
        batch = pool[torch.randperm(len(pool), generator=g)[:64]]
        twin.sample(system, 16, params, batch)
    twin.fit()
    return twin


def _vjp_vector(method, system, params, x, v) -> torch.Tensor:
    out = system.measure(params, x)[0]
    gx, grads = method.vjp(system, params, x, out, v, need_input_grad=True)
    return torch.cat([gx.reshape(-1)] + [grads[n].reshape(-1) for n in params]).double()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=0))


def fidelity(args, figures: dict) -> list[tuple]:
    devices = (args.devices or ("reservoir" if args.quick else "reservoir,ring,dnpu")).split(",")
    n_est = args.estimates or (40 if args.quick else 1000)
    points = 1 if args.quick else 3
    twin_queries = 64 if args.quick else 256
    rows, table = [], []
    for kind in devices:
        system = _device(kind, 0)
        other = _device(kind, 1)
        g = torch.Generator().manual_seed(0)
        params, x0, v0, pool = _point(kind, system, g)
        options = QUICK_TWIN if args.quick else TWIN_OPTIONS
        right = fitted_twin(system, params, pool, twin_queries, seed=1, options=options)
        wrong = fitted_twin(other, params, pool, twin_queries, seed=2, options=options)
        fresh = system.measure(params, pool[:256])[0]
        err_right = right.error_on(params, pool[:256], fresh)
        err_wrong = wrong.error_on(params, pool[:256], fresh)
        figures[f"{kind}_right_twin_error"] = err_right
        figures[f"{kind}_wrong_twin_error"] = err_wrong
        estimators = {
            "pgt_local": lambda twin, s: PGT(4, 1e-2, scope="local", distribution="gaussian", seed=s),
            "pat": lambda twin, s: PAT(twin=twin, learn=False, seed=s),
            "twin_cv": lambda twin, s: TwinGuidedPGT(4, 1e-2, twin=twin, learn=False, seed=s),
            "twin_guided": lambda twin, s: TwinGuidedPGT(4, 1e-2, alpha=0.5, control_variate=False, twin=twin,
                                                         learn=False, seed=s),
        }
        acc: dict[tuple[str, str], list] = {}
        for p in range(points):
            if p == 0:
                x, v = x0, v0
            else:
                _, x, v, _ = _point(kind, system, g)
            exact = exact_vjp(system, params, x, v)
            for twin_name, twin in (("right", right), ("wrong", wrong)):
                for name, make in estimators.items():
                    if name == "pgt_local" and twin_name == "wrong":
                        continue
                    method = make(twin, 100 * p + 7)
                    n = 1 if name == "pat" else n_est  # PAT with a frozen twin is deterministic
                    before = system.queries
                    ests = torch.stack([_vjp_vector(method, system, params, x, v) for _ in range(n)])
                    per = (system.queries - before) / n
                    mean = ests.mean(0)
                    single = float(np.mean([_cos(e, exact) for e in ests]))
                    acc.setdefault((name, twin_name), []).append(
                        (_cos(mean, exact), float((mean - exact).norm() / exact.norm()), single, per, n))
        for (name, twin_name), vals in acc.items():
            cos_mean = float(np.mean([t[0] for t in vals]))
            rel = float(np.mean([t[1] for t in vals]))
            single = float(np.mean([t[2] for t in vals]))
            label = name if name == "pgt_local" else f"{name} ({twin_name} twin)"
            key = f"{kind}_{name}" if name == "pgt_local" else f"{kind}_{name}_{twin_name}_twin"
            figures[f"{key}_cosine_of_mean"] = cos_mean
            figures[f"{key}_relative_error_of_mean"] = rel
            figures[f"{key}_single_cosine"] = single
            table.append((kind, label, vals[0][4], vals[0][3], single, cos_mean, rel))
            rows.append((kind, name, twin_name, single, cos_mean, rel))
        print(f"  {kind}: twin error on fresh data: right {err_right:.3f}, wrong {err_wrong:.3f}", flush=True)
    figures["guided_wrong_twin_cosine"] = figures.get("reservoir_twin_cv_wrong_twin_cosine_of_mean")
    figures["guided_es_wrong_twin_cosine"] = figures.get("reservoir_twin_guided_wrong_twin_cosine_of_mean")
    figures["pat_wrong_twin_cosine"] = figures.get("reservoir_pat_wrong_twin_cosine_of_mean")
    figures["fidelity_estimates"] = n_est
    figures["fidelity_points"] = points
    print()
    print(markdown_table(table, ["device", "estimator", "estimates averaged", "queries per estimate",
                                 "cosine (single estimate)", "cosine of the mean", "rel. error of the mean"]))
    return rows


# ----------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], _extra, argv)
    torch.manual_seed(0)
    parts = args.parts.split(",")
    figures: dict = {"quick": bool(args.quick)}
    curves = training(args, figures) if "training" in parts else {}
    rows = fidelity(args, figures) if "fidelity" in parts else []

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (name, c) in enumerate(curves.items()):
        axes[0].semilogx(c["queries"], 100 * c["accuracy"], "o-", ms=3, color=f"C{i}", label=name)
    if curves:
        axes[0].axhline(100 * figures["target_accuracy"], color="k", ls=":", lw=1, label="backprop − 1 pt")
        axes[0].set_xlabel("device queries (gradients + twin data)")
        axes[0].set_ylabel("test accuracy % (mean over seeds)")
        net = figures.get("network", "reservoir")
        axes[0].set_title(f"{figures.get('dataset', 'digits')}, " + ("synthetic DNPU" if net == "dnpu" else f"{net} hybrid net"))
        axes[0].legend(fontsize=8)
        axes[0].grid(alpha=0.3)
    if not rows:
        axes[1].axis("off")  # the fidelity part was not run
    if rows:
        labels = [f"{d}\n{n}\n{t}" for d, n, t, *_ in rows]
        vals = [r[4] for r in rows]
        colors = ["C3" if t == "wrong" and n == "pat" else ("C2" if t == "wrong" else "C0") for _, n, t, *_ in rows]
        axes[1].bar(range(len(rows)), vals, color=colors)
        axes[1].set_xticks(range(len(rows)))
        axes[1].set_xticklabels(labels, fontsize=6)
        axes[1].set_ylabel("cosine of the mean estimate to the exact VJP")
        axes[1].set_ylim(min(0.0, min(vals)), 1.02)
        axes[1].set_title("device VJP: right vs wrong twin (red: PAT, wrong twin)")
        axes[1].grid(alpha=0.3, axis="y")
    print(f"\nplot: {save_figure(fig, plot_path(args, 'twin'))}")
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
