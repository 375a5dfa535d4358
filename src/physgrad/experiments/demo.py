"""The demo: one hybrid network, a black-box reservoir in the middle, three ways to train it.

``Linear(64 → 32) → RandomReservoir(32 → 256) → Linear(256 → 10)`` on the embedded digits data,
trained by backpropagation through the simulator (the oracle, impossible on hardware), PGT with
the local scope (exact digital gradients, estimated VJP through the device) and PGT with the
global scope (the paper: every parameter perturbed, whole-network losses; SGD with momentum, the
setting the PGT training benchmark chose on a validation split). Prints test accuracy against the
device queries each method spent.
"""

from __future__ import annotations

from pathlib import Path

from ..data.datasets import load_dataset
from .config import TrainConfig, run
from .report import make_report

# every setting explicit (the demo's documented figures predate the shipped defaults, which would change them)
DEMO_RUNS = (
    TrainConfig(method="backprop", epochs=20, optimizer="adam", lr=3e-3),
    TrainConfig(method="pgt", scope="local", num_pairs=8, delta=1e-2, epochs=20, optimizer="adam", lr=3e-3),
    # the global scope's setting chosen on a validation split by benchmarks/pgt_training.py (docs/results/pgt.md)
    TrainConfig(method="pgt", scope="global", num_pairs=128, delta=1e-2, epochs=20, optimizer="sgd", momentum=0.9, lr=3e-3,
                schedule="constant"),
)


def demo(out_dir: str | Path | None = None, quick: bool = False, progress: bool | None = None) -> str:
    """Train the three runs and return the Markdown comparison table."""
    data = load_dataset("digits")
    lines = ["| method | test accuracy | device queries | wall time (s) |", "|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    dirs = []
    for cfg in DEMO_RUNS:
        if quick:
            cfg = TrainConfig(**{**cfg.to_dict(), "epochs": 2})
        target = None if out_dir is None else Path(out_dir) / cfg.label
        last = run(cfg, target, progress=progress, data=data, resume=False)[-1]
        lines.append(f"| {cfg.label} | {100 * last['test_accuracy']:.1f} % | {last['queries']:,} | {last['wall_time']:.1f} |")
        print(lines[-1], flush=True)
        if target is not None:
            dirs.append(target)
    if dirs:
        make_report(dirs, Path(out_dir))
    return "\n".join(lines)
