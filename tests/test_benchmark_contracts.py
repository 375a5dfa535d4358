"""Every acceptance-contract benchmark of issues 3–5 runs its --quick path and writes its keys.

(Issue 2's benchmarks are covered in test_benchmarks_smoke.py, issue 6's in
test_reliability_benchmarks.py.) Each runs as a user would, ``python -m benchmarks.NAME --quick
--out F.json``, in a subprocess; the figures must be numbers in their natural ranges.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
GATES = ("and", "or", "nand", "nor", "xor", "xnor")

CONTRACTS = {
    "ring_reservoir": ["ring_narma10_nrmse", "esn_narma10_nrmse", "ring_memory_capacity", "esn_memory_capacity"],
    "reservoir_transformer": ["backprop_test_accuracy", "pgt_global_test_accuracy", "pgt_local_test_accuracy"],
    "hge_fidelity": ["median_cosine", "median_relative_error", "downstream_relative_error"],
    "hge_gates": ["success_rate", *(f"success_{g}" for g in GATES)],
    "hge_equal_time": ["error_ratio_best_static_to_hge", "error_ratio_best_static_to_hge_with_calibration"],
    "hge_spacing": ["multi_over_single_df10_T0.1", "multi_over_single_df40_T0.1"],
    "hge_sphere": ["hge_test_accuracy", "backprop_test_accuracy"],
    "aeqprop": ["aeqprop_centered_test_accuracy", "aeqprop_optimistic_test_accuracy", "eqprop_test_accuracy",
                "backprop_test_accuracy"],
    "relaxation_speed": ["speedup", "max_state_difference"],
}


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_quick_benchmark_writes_its_contract(name, tmp_path):
    out = tmp_path / "figures.json"
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out", str(out), "--plot", str(tmp_path / "plot.png")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|" in done.stdout  # the Markdown table
    figures = json.loads(out.read_text())
    for key in CONTRACTS[name]:
        value = figures[key]
        assert isinstance(value, (int, float)) and value == value, f"{key} = {value!r}"
        if "accuracy" in key or key.startswith("success") or key == "median_cosine":
            assert 0.0 <= value <= 1.0, f"{key} = {value}"
    if name == "hge_fidelity":
        assert figures["median_cosine"] > 0.9  # HGE is a real gradient even in the quick run
        assert figures["downstream_relative_error"] < 0.15  # the digital layer after the device (issue 11 §1)
    if name == "hge_gates":
        assert figures["protocol"] == "fixed" and figures["attempts"] == 1 and figures["inputs"] == "3,4"
    if name == "hge_equal_time":
        assert figures["error_ratio_best_static_to_hge"] > 0
    if name == "relaxation_speed":
        assert figures["speedup"] > 1.0 and figures["max_state_difference"] < 1e-4
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_gate_protocols_and_methods_from_the_command_line(tmp_path):
    """``--protocol search --method backprop`` runs the search protocol; ``fixed`` refuses restarts."""
    out = tmp_path / "s.json"
    cmd = [sys.executable, "-m", "benchmarks.hge_gates", "--quick", "--protocol", "search", "--method", "backprop",
           "--gates", "and", "--out", str(out), "--plot", str(tmp_path / "p.png")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["protocol"] == "search" and figures["method"] == "backprop" and figures["inputs"] == "any"
    assert 0 <= figures["success_rate"] <= 1 and "success_and" in figures
    bad = subprocess.run([sys.executable, "-m", "benchmarks.hge_gates", "--protocol", "fixed", "--attempts", "3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "one training run per seed" in bad.stderr


def test_gate_search_wiring_orders_and_bad_input():
    """hge_gates: ``any`` tries every electrode pair once per search (seeded), a fixed pair repeats, bad values explain."""
    from benchmarks.hge_gates import ELECTRODE_PAIRS, input_pairs

    orders = [input_pairs("any", 21, seed) for seed in range(3)]
    for order in orders:
        assert sorted(order) == sorted(ELECTRODE_PAIRS)  # each of the 21 pairs exactly once
    assert orders[0] != orders[1] and input_pairs("any", 21, 0) == orders[0]  # seeded, not fixed
    assert input_pairs("any", 3, 1) == orders[1][:3]
    assert input_pairs("4,3", 5, 0) == [(3, 4)] * 5
    for bad in ("3,3", "3", "a,b", "3,7", "1,2,3"):
        with pytest.raises(SystemExit, match="two distinct electrodes"):
            input_pairs(bad, 2, 0)
    longer = input_pairs("any", 30, 2)
    assert longer[:21] == orders[2] and len(set(longer[21:])) == 9  # every pair once before any repeats


def test_a_gate_search_stops_rewires_and_counts_every_device_second():
    """A search stops at the first attempt that separates; attempts that cannot separate (one tiny
    step) use the whole budget, each on its own wiring;
    device time is summed over all wirings and the range guard never had to clip."""
    from benchmarks.hge_gates import GATES, GateBench

    xnor = torch.tensor(GATES["xnor"], dtype=torch.float32)
    lucky = GateBench(None, "backprop").search(xnor, 0, [(3, 4), (1, 2)], steps=1, lr=1e-9)
    assert lucky["attempts"] == 1 and lucky["found_by_first_attempt"] and lucky["success"]  # this start is an XNOR
    bench = GateBench(None, "backprop")
    result = bench.search(xnor, 1, [(3, 4), (1, 2)], steps=1, lr=1e-9)
    assert result["attempts"] == 2 and not result["found_by_first_attempt"]
    assert set(bench.devices) == {(3, 4), (1, 2)} and result["pair"] in bench.devices
    per_device = [d.device_seconds for d in bench.devices.values()]
    assert all(t > 0 for t in per_device) and bench.device_seconds == pytest.approx(sum(per_device))
    assert result["noise"] > 0 and bench.clipped == 0
    assert len(result["curves"]) == 2 and all(len(c) == 1 for c in result["curves"])


def test_sphere_calibration_moves_on_where_the_device_does_not_respond():
    """The sphere benchmark's HGE calibration: first at the first data point of the first batch; a
    refused point (MeasurementError) moves it to the next training points in order, counting the
    refusals; after ``tries`` refusals the run stops with an error naming them."""
    from benchmarks.hge_sphere import calibrate_where_the_device_responds
    from physgrad.errors import MeasurementError
    from physgrad.methods import HGE

    class Picky(HGE):
        def __init__(self, dead: set[int]):
            super().__init__(0.1, scope="local")
            self.dead, self.tried = dead, []

        def calibrate(self, system, params=None, inputs=None, freqs=None):
            k = int(inputs[0, 0])  # the point's index is its first coordinate here
            self.tried.append(k)
            if k in self.dead:
                raise MeasurementError("hge: transfer calibration failed: no channel responds")

    x = torch.arange(6, dtype=torch.float32).unsqueeze(1).expand(6, 3).contiguous()
    responsive = Picky(set())
    assert calibrate_where_the_device_responds(responsive, None, torch.zeros(4), x, first=4) == 0
    assert responsive.tried == [4]  # the point HGE's first gradient would calibrate at
    picky = Picky({4, 0, 1})
    assert calibrate_where_the_device_responds(picky, None, torch.zeros(4), x, first=4) == 3
    assert picky.tried == [4, 0, 1, 2]
    hopeless = Picky(set(range(6)))
    with pytest.raises(MeasurementError, match="refused at 3 training points"):
        calibrate_where_the_device_responds(hopeless, None, torch.zeros(4), x, first=5, tries=3)
    assert hopeless.tried == [5, 0, 1]
