"""Smoke test of the protocol fuzzer (benchmarks/protocol_fuzz.py) at a small size: same code path."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root, not in src/
    sys.path.insert(0, str(ROOT))

from benchmarks import protocol_fuzz  # noqa: E402


def test_protocol_fuzz_contract(tmp_path):
    out = tmp_path / "figures.json"
    figures = protocol_fuzz.main(["--messages", "400", "--threads", "1", "--out", str(out), "--plot", str(tmp_path / "p.png")])
    assert json.loads(out.read_text()) == figures
    assert figures["messages"] == 400 and figures["unanswered"] == 0
    assert figures["server_alive"] is True and figures["invalid_commands_passed"] == 0
    assert 0 < figures["accepted"] < 400 and figures["device_commands"] > 0  # some reached the device, most were refused
    assert (tmp_path / "p.png").stat().st_size > 0
