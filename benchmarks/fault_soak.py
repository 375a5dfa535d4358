"""Fault soak: train the core demo on a device that fails in every way at 5 % (issue 6).

The demo network (``Linear(64 → 32) → RandomReservoir(32 → 256) → Linear(256 → 10)`` on the
embedded digits, PGT local scope with 8 pairs, δ = 1e-2, Adam 3e-3, batch 32, the demo's epochs;
:mod:`physgrad.experiments.demo`) is trained twice with the same seeds:

* **fault-free** — the plain device;
* **faulty** — the device behind ``FaultInjector.uniform(rate=0.05)`` (NaN, inf, outlier, stuck
  per probe; timeout, disconnect, drift per call: 5 % each) and the fault-tolerance wrapper
  ``Resilient`` (retries with backoff, re-measurement of suspicious probes). Its
  ``output_range`` is the instrument's full scale, [-2, 2]: the reservoir's tanh signal spans
  [-1, 1] and, as with any ADC, the range has headroom (here 2×) so that a drifting baseline
  is not mistaken for a glitch.

In both runs a :class:`~physgrad.systems.wrappers.base.CommandAudit` sits directly on the device (below
the faults) and counts every command outside the declared safe range, before the device's own
guard could clip it; the device's guard is set to ``refuse``. Evaluation (test accuracy) is
measured on the same faulty device stack, as deployed.

Three seeds (one with ``--quick``); the seed sets the network, the data order, the perturbations
and the faults. Reported: mean test accuracy of both runs and the drop (floor: within 1 point),
out-of-range commands (must be 0), NaN parameters (must be 0), lost (skipped) steps, faults
injected by kind, retries, re-measured probes and the extra device queries they cost.

    python -m benchmarks.fault_soak [--quick] [--out FILE.json] [--rate 0.05]
"""

from __future__ import annotations

import logging
import time

import matplotlib.pyplot as plt
import torch

from physgrad.data import load_dataset
from physgrad.experiments.demo import DEMO_RUNS
from physgrad.methods import make_method
from physgrad.models import ReservoirNet
from physgrad.systems import RandomReservoir
from physgrad.systems.wrappers.faults import FAULTS, FaultInjector
from physgrad.systems.wrappers.resilient import Resilient
from physgrad.systems.wrappers.base import CommandAudit
from physgrad.training import Trainer

from ._common import markdown_table, parse_args, plot_path, save_figure, write_json

OUTPUT_RANGE = (-2.0, 2.0)  # the read-out's full scale: the tanh signal's [-1, 1] with 2x headroom
CONFIG = next(c for c in DEMO_RUNS if c.method == "pgt" and c.scope == "local")


def train(data, epochs: int, rate: float | None, seed: int = 0) -> dict:
    """One run of the demo; ``rate=None``: fault-free."""
    cfg = CONFIG
    device = RandomReservoir(cfg.reservoir_inputs, cfg.reservoir_size, seed=cfg.device_seed, guard="refuse")
    audit = CommandAudit(device)
    stack, faults, resilient = audit, None, None
    if rate is not None:
        faults = FaultInjector.uniform(audit, rate, seed=seed + 100)
        resilient = stack = Resilient(faults, backoff=0.0, output_range=OUTPUT_RANGE)
    model = ReservoirNet(data.num_features, stack, data.num_classes, seed=seed)
    method = make_method(cfg.method, cfg.scope, num_pairs=cfg.num_pairs, delta=cfg.delta, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    trainer = Trainer(model, method, optimizer, batch_size=cfg.batch_size, seed=seed, max_consecutive_skips=100)
    started = time.perf_counter()
    records = trainer.fit(data, epochs)
    return {
        "records": records,
        "test_accuracy": records[-1]["test_accuracy"],
        "out_of_range_commands": audit.violations,
        "device_commands": audit.commands,
        "nan_parameters": sum(int((~torch.isfinite(p)).sum()) for p in model.parameters()),
        "lost_steps": trainer.skipped,
        "steps": trainer.step,
        "device_queries": device.queries,
        "gradient_queries": records[-1]["queries"],
        "injected": dict(faults.injected) if faults else {},
        "events": resilient.summary() if resilient else {},
        "seconds": time.perf_counter() - started,
    }


def _total(runs: list[dict], key: str) -> int:
    return sum(r[key] for r in runs)


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> dict:
    logging.getLogger("physgrad").setLevel(logging.ERROR)  # thousands of expected, counted events
    args = parse_args(__doc__.splitlines()[0], extra=lambda p: p.add_argument("--rate", type=float, default=0.05), argv=argv)
    torch.set_num_threads(args.threads or 1)  # several threads on a shared 2-core box only contend
    data = load_dataset("digits")
    epochs, seeds = CONFIG.epochs, (0, 1, 2)
    if args.quick:
        data, epochs, seeds = data.subset(train=512, test=256, seed=0), 3, (0,)
    clean = [train(data, epochs, None, seed) for seed in seeds]
    faulty = [train(data, epochs, args.rate, seed) for seed in seeds]
    acc_clean, sd_clean = _mean_std([r["test_accuracy"] for r in clean])
    acc_faulty, sd_faulty = _mean_std([r["test_accuracy"] for r in faulty])
    injected = {k: sum(r["injected"][k] for r in faulty) for k in FAULTS}
    events = {k: sum(r["events"][k] for r in faulty) for k in faulty[0]["events"]}
    figures = {
        "fault_free_test_accuracy": acc_clean,
        "faulty_test_accuracy": acc_faulty,
        "fault_free_test_accuracy_std": sd_clean,
        "faulty_test_accuracy_std": sd_faulty,
        "accuracy_drop_points": 100 * (acc_clean - acc_faulty),
        "out_of_range_commands": _total(clean, "out_of_range_commands") + _total(faulty, "out_of_range_commands"),
        "nan_parameters": _total(clean, "nan_parameters") + _total(faulty, "nan_parameters"),
        "lost_steps": _total(faulty, "lost_steps"),
        "steps": _total(faulty, "steps"),
        "seeds": len(seeds),
        "fault_rate": args.rate,
        "epochs": epochs,
        "device_commands_faulty": _total(faulty, "device_commands"),
        "device_queries_fault_free": _total(clean, "device_queries"),
        "device_queries_faulty": _total(faulty, "device_queries"),
        "extra_queries_pct": 100 * (_total(faulty, "device_queries") / _total(clean, "device_queries") - 1),
        **{f"injected_{k}": v for k, v in injected.items()},
        **{f"resilient_{k}": v for k, v in events.items()},
        "seconds_fault_free": sum(r["seconds"] for r in clean),
        "seconds_faulty": sum(r["seconds"] for r in faulty),
    }
    rows = []
    for seed, c, f in zip(seeds, clean, faulty):
        rows.append([seed, c["test_accuracy"], f["test_accuracy"], 100 * (c["test_accuracy"] - f["test_accuracy"]),
                     f["out_of_range_commands"] + c["out_of_range_commands"], f["nan_parameters"] + c["nan_parameters"],
                     f"{f['lost_steps']} / {f['steps']}", f"{100 * (f['device_queries'] / c['device_queries'] - 1):.1f} %"])
    rows.append(["mean", acc_clean, acc_faulty, figures["accuracy_drop_points"], figures["out_of_range_commands"],
                 figures["nan_parameters"], f"{figures['lost_steps']} / {figures['steps']}", f"{figures['extra_queries_pct']:.1f} %"])
    print(markdown_table(rows, ["seed", "fault-free test acc.", f"{args.rate:.0%}-faults test acc.", "drop (points)",
                                "out-of-range commands", "NaN parameters", "lost steps", "extra queries"]))
    print()
    print(markdown_table([[k, v] for k, v in injected.items()], ["fault injected", "count"]))
    print()
    print(markdown_table(list(events.items()), ["fault-tolerance event", "count"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs, style in (("fault-free", clean, "o-"), (f"{args.rate:.0%} of each fault", faulty, "s--")):
        for i, run in enumerate(runs):
            ax1.plot([r["epoch"] for r in run["records"]], [100 * r["test_accuracy"] for r in run["records"]], style,
                     color="C0" if runs is clean else "C1", alpha=0.8, label=name if i == 0 else None)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title(f"demo (PGT local) on digits, {len(seeds)} seed(s)")
    ax1.legend()
    ax2.bar(list(FAULTS), list(injected.values()))
    ax2.set_ylabel("faults injected")
    ax2.set_title(f"lost steps {figures['lost_steps']} of {figures['steps']}, out-of-range commands {figures['out_of_range_commands']}",
                  fontsize=9)
    ax2.tick_params(axis="x", rotation=30)
    save_figure(fig, plot_path(args, "fault_soak"))
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
