"""Smoke tests of the PGT benchmarks: each ``main()`` runs in-process at tiny sizes (same code path
as ``--quick``) and must write the JSON figures its contract names, with values in range."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root, not in src/
    sys.path.insert(0, str(ROOT))

from _helpers import run_benchmark_main  # noqa: E402
from benchmarks import pgt_fidelity, pgt_training, probe_vectorization  # noqa: E402


_run = run_benchmark_main


def test_probe_vectorization_agrees_and_reports_speedup(tmp_path):
    fig = _run(probe_vectorization, tmp_path, "--pairs", "8", "--batch", "16", "--repeats", "2")
    assert fig["speedup"] > 0 and math.isfinite(fig["speedup"])
    assert fig["speedup"] == pytest.approx(min(fig["speedup_global"], fig["speedup_local"]))
    # Same seed, same directions: the looped and the vectorised path compute the same estimate.
    assert fig["max_relative_difference_global"] < 1e-4
    assert fig["max_relative_difference_local"] < 1e-4


def test_pgt_fidelity_contract_and_theory(tmp_path):
    fig = _run(pgt_fidelity, tmp_path, "--repeats", "2", "--max-k", "32", "--mean-estimates", "8",
               "--mean-pairs", "32")
    for key in ("cosine_mean_estimate", "cosine_single_k32_global", "cosine_single_k32_local"):
        assert -1.0 <= fig[key] <= 1.0
    # Averaging 8 estimates beats a single one; the local scope beats the global one at equal K.
    assert fig["cosine_mean_estimate"] > fig["cosine_single_k32_global"]
    assert fig["cosine_single_k32_local"] > fig["cosine_single_k32_global"]
    # Central differences are (nearly) exact; the global error falls like K^(-1/2).
    assert fig["cosine_fd_global"] > 0.999 and fig["cosine_fd_local"] > 0.999
    assert fig["queries_fd_global"] == 2 * fig["parameters"] + 1
    assert -0.8 < fig["slope_pgt_global"] < -0.25


def test_pgt_training_contract_and_costs(tmp_path):
    fig = _run(pgt_training, tmp_path, "--train-subset", "480", "--test-subset", "200", "--epochs", "4")
    keys = ("backprop", "pgt_global", "pgt_local")
    for name in keys:
        assert 0.0 <= fig[f"{name}_test_accuracy"] <= 1.0
    steps = 4 * math.ceil(480 / pgt_training.SETTINGS["digits"]["backprop"].batch_size)
    # Cost accounting: backprop 1 query per step; PGT 2K probes + 1 forward per step.
    assert fig["backprop_queries"] == steps
    k_local = pgt_training.SETTINGS["digits"]["pgt_local"].num_pairs
    k_global = pgt_training.QUICK["pgt_global"]["num_pairs"]
    assert fig["pgt_local_queries"] == steps * (2 * k_local + 1)
    assert fig["pgt_global_queries"] == steps * (2 * k_global + 1)
    # Four epochs on 480 digits: every method clearly beats chance (10 %).
    assert fig["backprop_test_accuracy"] > 0.5
    assert fig["pgt_local_test_accuracy"] > 0.5
    assert fig["pgt_global_test_accuracy"] > 0.2
