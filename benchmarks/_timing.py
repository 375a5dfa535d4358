"""Timings that re-measure (STANDARDS.md, "Timings"; issue 13 §2).

The variants being compared run interleaved in one process (A, B, A, B, ... in every round), for
at least 20 rounds after a warm-up; each variant reports its median and minimum, and each ratio is
the median of the per-round ratios (a burst of load hits both variants of a round alike) next to
the ratio of the minima. The machine's 1-minute load average is recorded before and after, with the
torch thread count and the CPU count, so a reader can tell a quiet run from a busy one.

Two clocks are read around every call: wall time (``time.perf_counter``) and the process's CPU time
(``time.process_time``). On a machine shared with other jobs the wall time of a long call absorbs
every time slice the scheduler gives away (a 70 ms call under a load average of 19 on 2 cores is
interrupted many times, a 1 ms call rarely), which inflates the ratio of a long call to a short one;
CPU time counts only the work done by this process, so with one torch thread it re-measures on a busy
box. The headline ratio uses CPU time when torch runs one thread and wall time otherwise
(``clock`` in the result says which); both are reported.
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
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            w1, c1 = time.perf_counter(), time.process_time()
            wall[name].append(w1 - w0)
            cpu[name].append(c1 - c0)
    clock = "cpu" if torch.get_num_threads() == 1 else "wall"
    times = cpu if clock == "cpu" else wall
    return {
        "clock": clock,
        "times": times,
        "wall_times": wall,
        "cpu_times": cpu,
        "median": {n: statistics.median(t) for n, t in times.items()},
        "min": {n: min(t) for n, t in times.items()},
        "wall_median": {n: statistics.median(t) for n, t in wall.items()},
        "wall_min": {n: min(t) for n, t in wall.items()},
        "load_before": before,
        "load_after": load_average(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "rounds": rounds,
    }


def ratio(result: dict, slow: str, fast: str, clock: str | None = None) -> tuple[float, float]:
    """``(median of per-round slow/fast, min(slow)/min(fast))`` on the headline clock (or ``"wall"``/``"cpu"``)."""
    times = result["times"] if clock is None else result[f"{clock}_times"]
    per_round = [a / max(b, 1e-9) for a, b in zip(times[slow], times[fast])]
    return statistics.median(per_round), min(times[slow]) / max(min(times[fast]), 1e-9)
