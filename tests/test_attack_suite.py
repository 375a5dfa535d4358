"""Smoke test of the attack suite at its quick size: the acceptance keys, and every floor held."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import attack_suite  # noqa: E402

KEYS = ("out_of_range_commands", "silent_bitflip_loads", "unnamed_errors", "mislabelled_resumes", "flood_memory_ratio",
        "new_client_wait_s", "attacks")


def test_quick_attack_suite_contract(tmp_path):
    out = tmp_path / "attacks.json"
    attack_suite.main(["--quick", "--out", str(out)])
    figures = json.loads(out.read_text())
    for key in KEYS:
        assert key in figures, key
    assert figures["out_of_range_commands"] == 0 and figures["silent_bitflip_loads"] == 0
    assert figures["unnamed_errors"] == 0, figures["unnamed_error_cases"]
    assert figures["mislabelled_resumes"] == 0
    assert figures["flood_memory_ratio"] < 2 and figures["new_client_wait_s"] < 1
    assert figures["attacks"] > 500 and all(v > 0 for v in figures["attacks_by_class"].values())
