"""Exact resume: SIGKILL a training process at a random step, resume, get bit-identical results.

The run trains the demo network through a faulty device (every kind of fault at 5 %, behind the
re-measuring wrapper), so the checkpoint must restore the model, optimizer, method, trainer and
every device wrapper's random state, fault memory and counters for the results to match.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

SCRIPT = r'''
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from physgrad.data import load_dataset
from physgrad.methods import PGT
from physgrad.models import ReservoirNet
from physgrad.systems import RandomReservoir
from physgrad.systems.wrappers.faults import FaultInjector
from physgrad.systems.wrappers.resilient import Resilient
from physgrad.training import Trainer

out = Path(sys.argv[1])
data = load_dataset("digits").subset(train=192, test=96, seed=0)
device = Resilient(FaultInjector.uniform(RandomReservoir(16, 32, seed=1), 0.05, seed=3), backoff=0.0, remeasure=5,
                   output_range=(-1.0, 1.0))
model = ReservoirNet(data.num_features, device, data.num_classes, seed=0)
method = PGT(num_pairs=4, delta=1e-2, scope="local", seed=0)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
trainer = Trainer(model, method, optimizer, batch_size=32, seed=0, out_dir=out, log_every=1, checkpoint_every=1,
                  max_consecutive_skips=100)
trainer.fit(data, 2)
torch.save({"model": model.state_dict(), "device": device.state_dict()}, out / "final.pt")
'''
STEPS = 2 * 6  # epochs x batches


def _run(script: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, str(script), str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _records(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("wall_time", None)
        r.pop("redone_queries", None)  # device work done again after the resume: compared separately
        r.pop("redone_device_seconds", None)
    return records


def _redone(out: Path) -> int:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["redone_queries"]


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    ref = _run(script, reference)
    _finish(ref)

    kill_at = random.Random(6).randrange(2, STEPS - 2)  # a step record (+ the epoch records before it)
    proc = _run(script, killed)
    deadline = time.monotonic() + 90
    while _lines(killed / "metrics.jsonl") < kill_at and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final.pt").exists() and (killed / "checkpoint.pt").exists()

    _finish(_run(script, killed))  # resumes from the checkpoint

    a = torch.load(reference / "final.pt", weights_only=True)
    b = torch.load(killed / "final.pt", weights_only=True)
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert a["device"]["events"] == b["device"]["events"]
    assert a["device"]["inner"]["injected"] == b["device"]["inner"]["injected"]
    assert sum(a["device"]["inner"]["injected"].values()) > 0
    assert _records(reference) == _records(killed)
    assert _redone(reference) == 0 and _redone(killed) >= 0  # the killed run reports the work it did again
    assert len(_records(reference)) == STEPS + 2
