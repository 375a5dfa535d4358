import pytest
import torch
import torch.nn.functional as F

from physgrad import PGT, Backprop, RandomReservoir, ReservoirNet
from physgrad.data import load_dataset
from physgrad.errors import CheckpointError, MeasurementError
from physgrad.training import Trainer, read_metrics


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").subset(train=400, test=200, seed=0)


def make(method, out_dir=None, **kw):
    model = ReservoirNet(64, RandomReservoir(16, 64, seed=1), 10, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return Trainer(model, method, opt, batch_size=32, seed=0, out_dir=out_dir, **kw)


@pytest.mark.parametrize("method", [Backprop(), PGT(8, 1e-2, scope="local")], ids=["backprop", "pgt-local"])
def test_training_lowers_the_loss_and_beats_chance(digits, method):
    trainer = make(method)
    before, _ = trainer.evaluate(digits.x_test, digits.y_test)
    records = trainer.fit(digits, 4)
    assert records[-1]["test_loss"] < 0.6 * before
    assert records[-1]["test_accuracy"] > 0.6  # chance is 0.1
    assert records[-1]["queries"] == method.total_cost.queries > 0


def test_device_parameters_stay_in_their_safe_range(digits):
    trainer = make(Backprop())
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=100.0)
    trainer.fit(digits, 1)
    gain = trainer.model.reservoir.params["gain"]
    assert 0.0 <= float(gain.detach()) <= 4.0 and float(trainer.model.reservoir.params["bias"].detach().abs().max()) <= 2.0


def test_metrics_file_last_line_has_accuracy_and_queries(digits, tmp_path):
    make(PGT(4, 1e-2, scope="local"), tmp_path, log_every=5).fit(digits, 2)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert any(r["kind"] == "step" for r in records)
    last = records[-1]
    assert last["kind"] == "epoch" and 0 <= last["test_accuracy"] <= 1 and last["queries"] > 0


def test_resume_continues_exactly(digits, tmp_path):
    straight = make(PGT(4, 1e-2, scope="global"), tmp_path / "a", checkpoint_every=3)
    straight.fit(digits, 2)
    first = make(PGT(4, 1e-2, scope="global"), tmp_path / "b", checkpoint_every=3)
    first.fit(digits, 1)
    resumed = make(PGT(4, 1e-2, scope="global"), tmp_path / "b", checkpoint_every=3)
    resumed.fit(digits, 2)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "a" / "metrics.jsonl")) == strip(read_metrics(tmp_path / "b" / "metrics.jsonl"))


def test_a_corrupt_checkpoint_is_reported(digits, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        make(Backprop(), tmp_path).fit(digits, 1)


def test_failed_measurements_skip_steps_and_never_poison_parameters(digits):
    trainer = make(PGT(4, 1e-2, scope="local"), max_consecutive_skips=3)
    dev = trainer.model.reservoir.system
    real, calls = dev.response, {"n": 0}

    def flaky(params, inputs):
        calls["n"] += 1
        out = real(params, inputs)
        return out * float("nan") if calls["n"] % 4 == 0 else out

    dev.response = flaky
    trainer.fit(digits, 1)
    assert trainer.skipped > 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    dev.response = lambda params, inputs: real(params, inputs) * float("nan")
    with pytest.raises(MeasurementError):
        trainer.fit(digits, 2)
