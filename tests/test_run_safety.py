"""Runs are never lost or mislabelled: digests, config hashes, counters, signals, re-done work, hangs."""

import json
import os
import random
import signal
import time

import pytest
import torch

from physgrad import PGT, RandomReservoir, ReservoirNet
from physgrad.data import load_dataset
from physgrad.errors import CheckpointError, ConfigError, MeasurementError
from physgrad.experiments.config import TrainConfig, run
from physgrad.systems.wrappers.base import SystemWrapper
from physgrad.training import Trainer, load_checkpoint, read_metrics, save_checkpoint
from physgrad.training.trainer import DeviceGaveUpError, DeviceHangError, RunInterrupted


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").subset(train=192, test=64, seed=0)


class Hook(SystemWrapper):
    """Calls ``action(n)`` before the n-th measurement (1-based)."""

    def __init__(self, inner, action):
        super().__init__(inner)
        self.action, self.calls = action, 0

    def measure(self, params, inputs):
        self.calls += 1
        self.action(self.calls)
        return self.inner.measure(params, inputs)


def make(out_dir=None, action=lambda n: None, **kw):
    model = ReservoirNet(64, Hook(RandomReservoir(16, 32, seed=1), action), 10, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return Trainer(model, PGT(4, 1e-2, scope="local", seed=0), opt, batch_size=32, seed=0, out_dir=out_dir, **kw)


def test_no_bit_flip_loads_silently(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"x": torch.arange(300.0), "step": 7, "meta": {"a": [1, 2]}})
    raw = bytearray(path.read_bytes())
    rng = random.Random(0)
    for _ in range(300):
        flipped = bytearray(raw)
        bit = rng.randrange(len(raw) * 8)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match="corrupt|not a physgrad"):
            load_checkpoint(path)
    path.write_bytes(bytes(raw))
    assert load_checkpoint(path)["step"] == 7


def test_a_resume_under_another_config_is_refused_and_relabels_nothing(digits, tmp_path):
    small = dict(train_samples=96, test_samples=32, epochs=1, num_pairs=2)
    run(TrainConfig.from_dict({**small, "lr": 0.003}), tmp_path, progress=False)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(CheckpointError, match=r"lr: 0\.003 -> 0\.5.*--no-resume"):
        run(TrainConfig.from_dict({**small, "lr": 0.5}), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=r"method: 'pgt' -> 'spsa'"):
        run(TrainConfig.from_dict({**small, "lr": 0.003, "method": "spsa"}), tmp_path, progress=False)
    assert (tmp_path / "config.json").read_text() == before
    records = run(TrainConfig.from_dict({**small, "lr": 0.003, "epochs": 2}), tmp_path, progress=False)  # more epochs: fine
    assert len(records) == 2
    with pytest.raises(ConfigError, match="already trained 2 epochs.*--epochs 2 or more"):
        run(TrainConfig.from_dict({**small, "lr": 0.003, "epochs": 1}), tmp_path, progress=False)
    assert len(run(TrainConfig.from_dict({**small, "lr": 0.5}), tmp_path, progress=False, resume=False)) == 1


@pytest.mark.parametrize("field,value", [("metrics_offset", 300_000_000), ("epoch", 99), ("step", -5),
                                         ("skipped", 10**6), ("wall_time", float("nan")), ("order", torch.zeros(192, dtype=torch.int64))])
def test_tampered_counters_are_refused_before_anything_changes(digits, tmp_path, field, value):
    make(tmp_path, checkpoint_every=2).fit(digits, 1)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    if field == "order":
        state["step"] = 2
    state[field] = value
    save_checkpoint(tmp_path / "checkpoint.pt", {k: v for k, v in state.items() if k != "format"})
    size = (tmp_path / "metrics.jsonl").stat().st_size
    with pytest.raises(CheckpointError, match="--no-resume"):
        make(tmp_path).fit(digits, 2)
    assert (tmp_path / "metrics.jsonl").stat().st_size == size


def test_orphan_temporary_files_are_removed_and_failed_runs_leave_no_empty_metrics(digits, tmp_path):
    orphan = tmp_path / ".checkpoint.pt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")

    def crash(n):
        raise RuntimeError("driver crashed")

    with pytest.raises(RuntimeError, match="driver crashed"):
        make(tmp_path, crash).fit(digits, 1)
    assert not orphan.exists() and not (tmp_path / "metrics.jsonl").exists()


def test_sigint_finishes_the_step_saves_and_says_how_to_resume(digits, tmp_path, capsys):
    def interrupt(n):
        if n == 5:
            os.kill(os.getpid(), signal.SIGINT)

    trainer = make(tmp_path, interrupt)
    with pytest.raises(RunInterrupted, match=r"SIGINT after step \d+.*checkpoint saved.*Resume with: "):
        trainer.fit(digits, 1)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == trainer.step >= 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    records = make(tmp_path).fit(digits, 1)
    assert records[-1]["step"] == 6


def test_device_work_redone_after_a_resume_is_counted(digits, tmp_path):
    def crash_in_step_4(n):
        if n == 2 * 3 + 1:  # PGT-local: 2 device calls per step (forward, probes)
            raise RuntimeError("power cut")

    straight = make(tmp_path / "a", checkpoint_every=2)
    straight.fit(digits, 1)
    first = make(tmp_path / "b", crash_in_step_4, checkpoint_every=2)
    with pytest.raises(RuntimeError, match="power cut"):
        first.fit(digits, 1)
    assert first.step == 3  # checkpoint at step 2, step 3 done, then the crash
    resumed = make(tmp_path / "b", checkpoint_every=2)
    last = resumed.fit(digits, 1)[-1]
    reference = read_metrics(tmp_path / "a" / "metrics.jsonl")[-1]
    per_step = reference["queries"] / reference["step"]
    assert last["queries"] == reference["queries"] and reference["redone_queries"] == 0
    assert last["redone_queries"] == pytest.approx(per_step)  # step 3 was measured twice


def test_a_hung_device_call_stops_the_run_and_endless_failures_give_up(digits, tmp_path):
    def hang(n):
        if n == 2:
            time.sleep(2.0)

    with pytest.raises(DeviceHangError, match="watchdog_s=0.3"):
        make(tmp_path / "hang", hang, watchdog_s=0.3).fit(digits, 1)

    def fail(n):
        time.sleep(0.03)
        raise MeasurementError("no signal")

    with pytest.raises(DeviceGaveUpError, match="give_up_s"):
        make(None, fail, give_up_s=0.05, max_consecutive_skips=1000).fit(digits, 1)


def test_resilient_flags_drift_with_reanchored_probes():
    from physgrad.systems.wrappers.faults import FaultInjector
    from physgrad.systems.wrappers.resilient import DriftError, Resilient
    from physgrad.systems.noise import MeasurementNoise

    def device(drift):
        inner = RandomReservoir(8, 16, seed=0, noise=MeasurementNoise(additive=0.001))
        return Resilient(FaultInjector(inner, drift=drift, drift_scale=0.05, seed=2), drift_every=5, backoff=0.0)

    params = {"gain": torch.ones(4, 1), "bias": torch.zeros(4, 16)}
    x = torch.rand(3, 8, generator=torch.Generator().manual_seed(0))
    calm, drifting = device(0.0), device(0.2)
    for _ in range(100):
        calm.measure(params, x)
        drifting.measure(params, x)
    assert calm.events["drift"] == 0 and calm.events["drift_checks"] == 19
    assert drifting.events["drift"] >= 3  # the injected random-walk steps (σ 0.05) are flagged
    faulty = FaultInjector(RandomReservoir(8, 16, seed=0), drift_scale=0.05, seed=2)
    strict = Resilient(faulty, drift_every=1, on_drift="raise", backoff=0.0)
    strict.measure(params, x)
    faulty.rates["drift"] = 1.0
    with pytest.raises(DriftError):
        strict.measure(params, x)
