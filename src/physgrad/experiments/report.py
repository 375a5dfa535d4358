"""Plots and a Markdown table from run folders (each with ``metrics.jsonl`` and ``config.json``).

Two PNG figures: test accuracy against epoch and against device queries (log scale), one line per
run; and ``report.md`` with one row per run: its final test accuracy, queries, device seconds and
wall time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..errors import ConfigError  # noqa: E402
from ..training.metrics import read_metrics  # noqa: E402


def load_run(run_dir: str | os.PathLike) -> tuple[str, dict, list[dict]]:
    """``(label, config, epoch records)`` of one run folder."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ConfigError(f"{run_dir} holds no metrics.jsonl: not a physgrad run folder")
    config = {}
    if (run_dir / "config.json").is_file():
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    epochs = [r for r in read_metrics(metrics) if r.get("kind") == "epoch"]
    if not epochs:
        raise ConfigError(f"{metrics} has no epoch record yet")
    method = config.get("method", epochs[-1].get("method", "?"))
    label = method if method == "backprop" else f"{method}-{config.get('scope', epochs[-1].get('scope'))}"
    return f"{label} ({run_dir.name})", config, epochs


def markdown(rows: list[tuple[str, dict, list[dict]]]) -> str:
    lines = [
        "| run | dataset | epochs | test accuracy | device queries | device seconds | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, cfg, epochs in rows:
        last = epochs[-1]
        lines.append(
            f"| {label} | {cfg.get('dataset', '?')} | {last['epoch']} | {100 * last['test_accuracy']:.2f} % | "
            f"{last['queries']:,} | {last.get('device_seconds', 0):.3g} | {last['wall_time']:.1f} |"
        )
    return "\n".join(lines)


def make_report(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Write ``accuracy.png`` and ``report.md`` into ``out_dir``; return the report's path."""
    if not run_dirs:
        raise ConfigError("report needs at least one run folder")
    rows = [load_run(d) for d in run_dirs]
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as e:
        raise ConfigError(f"cannot write the report to {out}: {e.strerror or e}") from None
    fig, (ax_epoch, ax_queries) = plt.subplots(1, 2, figsize=(11, 4))
    for label, _, epochs in rows:
        acc = [100 * r["test_accuracy"] for r in epochs]
        ax_epoch.plot([r["epoch"] for r in epochs], acc, marker=".", label=label)
        ax_queries.plot([max(r["queries"], 1) for r in epochs], acc, marker=".", label=label)
    ax_epoch.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy vs epoch")
    ax_queries.set(xlabel="device queries", ylabel="test accuracy (%)", title="accuracy vs device queries", xscale="log")
    for ax in (ax_epoch, ax_queries):
        ax.grid(alpha=0.3)
    ax_queries.legend(fontsize=8)
    fig.tight_layout()
    tmp = out / ".accuracy.tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out / "accuracy.png")
    plt.close(fig)
    report = out / "report.md"
    report.write_text("# physgrad report\n\n" + markdown(rows) + "\n\n![accuracy](accuracy.png)\n", encoding="utf-8")
    return report
