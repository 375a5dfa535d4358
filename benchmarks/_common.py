"""Plumbing shared by every benchmark: arguments, JSON figures, Markdown tables, PNG figures."""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def parse_args(description: str, extra=None, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--quick`` (small sizes, same code path) and ``--out FILE.json``, plus ``extra(parser)``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, same code path (<= 2 minutes on 2 cores)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as one flat JSON object")
    parser.add_argument("--plot", type=Path, default=None, help="where to write the PNG (default: docs/results/)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json(path: str | os.PathLike | None, figures: dict) -> None:
    """Write ``figures`` (flat: names to numbers/strings/bools) atomically; no-op for ``None``."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: _jsonable(v) for k, v in figures.items()}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(flat, f, indent=2, sort_keys=True)
    os.replace(f.name, path)


def fmt(v) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


def markdown_table(rows: Iterable[Sequence], headers: Sequence[str]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    plt.close(fig)
    return path


def plot_path(args: argparse.Namespace, name: str) -> Path:
    """The PNG path: ``--plot`` if given, else docs/results/NAME(.quick).png."""
    if args.plot is not None:
        return args.plot
    return RESULTS / (f"{name}.quick.png" if args.quick else f"{name}.png")
