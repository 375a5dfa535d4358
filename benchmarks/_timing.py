"""Timings that re-measure (STANDARDS.md, "Timings"; issue 13 §2).

The variants being compared run interleaved in one process (A, B, A, B, ... in every round), for
at least 20 rounds after a warm-up; each variant reports its median and minimum, and each ratio is
the median of the per-round ratios (a burst of load hits both variants of a round alike) next to
the ratio of the minima. The machine's 1-minute load average is recorded before and after, with the
torch thread count and the CPU count, so a reader can tell a quiet run from a busy one.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Mapping

import torch

MIN_ROUNDS = 20


def load_average() -> float:
    """The 1-minute load average (``nan`` where the OS does not report one)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # pragma: no cover - not on Linux
        return float("nan")


def interleaved(fns: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict:
    """Run every ``fn`` once per round, in turn, for ``rounds`` rounds; return the raw seconds and a summary.

    Returns ``{"times": {name: [s, ...]}, "median": {name: s}, "min": {name: s}, "load_before": x,
    "load_after": x, "threads": n, "cpus": n, "rounds": rounds}``.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    before = load_average()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {
        "times": times,
        "median": {n: statistics.median(t) for n, t in times.items()},
        "min": {n: min(t) for n, t in times.items()},
        "load_before": before,
        "load_after": load_average(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "rounds": rounds,
    }


def ratio(result: dict, slow: str, fast: str) -> tuple[float, float]:
    """``(median of per-round slow/fast, min(slow)/min(fast))``."""
    per_round = [a / b for a, b in zip(result["times"][slow], result["times"][fast])]
    return statistics.median(per_round), result["min"][slow] / result["min"][fast]
