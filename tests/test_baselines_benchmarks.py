"""Smoke tests of issue 13's benchmarks: each main() runs in-process at tiny sizes (the --quick code
path) and writes the JSON keys of its contract."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _helpers import run_benchmark_main  # noqa: E402
from benchmarks import _timing, library_overhead, queries_to_target, relaxation_speed  # noqa: E402


_run = run_benchmark_main


def test_queries_to_target_contract(tmp_path):
    raw = tmp_path / "raw.json"
    fig = _run(queries_to_target, tmp_path, "--tasks", "wine", "--methods", "backprop,pgt_local,pgt_global,cma",
               "--budget-factor", "3", "--min-budget", "200", "--raw", str(raw))
    for key in ("ratio_best_forward_only_to_cma", "ratio_global_to_cma"):
        assert fig[key] > 0 and math.isfinite(fig[key])
    assert fig["wine_backprop_queries"] >= 1
    again = queries_to_target.main(["--from-raw", str(raw), "--out", str(tmp_path / "again.json"),
                                    "--plot", str(tmp_path / "again.png")])
    assert again["ratio_global_to_cma"] == pytest.approx(fig["ratio_global_to_cma"])


def test_library_overhead_contract(tmp_path):
    fig = _run(library_overhead, tmp_path, "--pairs", "4", "--batch", "8", "--repeats", "3")
    assert fig["overhead_ratio"] > 0 and math.isfinite(fig["overhead_ratio"])
    assert fig["max_relative_difference"] < 1e-5  # the hand-written step computes the same estimate
    assert fig["physgrad_queries_per_step"] >= fig["hand_queries_per_step"] == 8


def test_relaxation_speed_reports_its_method(tmp_path):
    fig = _run(relaxation_speed, tmp_path, "--batch", "8", "--repeats", "3")
    assert fig["speedup"] > 0 and fig["flop_ratio"] > 1 and fig["max_state_difference"] < 1e-4
    assert fig["clock"] == "cpu" and fig["threads"] == 1 and fig["repeats"] == 3


def test_interleaved_timing_records_both_clocks():
    calls = []
    result = _timing.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4  # warm-up, then interleaved rounds
    assert len(result["wall_times"]["a"]) == 3 and len(result["cpu_times"]["b"]) == 3
    assert result["rounds"] == 3 and result["load_before"] == result["load_before"]
    med, mn = _timing.ratio(result, "a", "b")
    assert med > 0 and mn > 0
