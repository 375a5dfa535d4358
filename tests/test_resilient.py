"""Fault tolerance: retries with backoff, re-measurement of suspicious probes, training survives."""

import pytest
import torch

from physgrad.data import load_dataset
from physgrad.errors import MeasurementError
from physgrad.methods import PGT
from physgrad.models import ReservoirNet
from physgrad.systems import RandomReservoir
from physgrad.systems.wrappers.faults import DeviceTimeoutError, FaultInjector
from physgrad.systems.wrappers.resilient import Resilient
from physgrad.systems.wrappers.base import CommandAudit
from physgrad.training import Trainer


def _probes(k, seed, spread=0.01):
    g = torch.Generator().manual_seed(seed)
    bias = (torch.rand(16, generator=g) - 0.5) + spread * torch.randn(k, 16, generator=g)
    return {"gain": torch.ones(k, 1), "bias": bias}, torch.rand(4, 8, generator=g)


def test_every_answer_is_the_truth_despite_output_faults():
    device = RandomReservoir(8, 16, seed=0)
    faulty = FaultInjector(device, nan=0.05, inf=0.05, outlier=0.05, stuck=0.05, timeout=0.05, disconnect=0.05, seed=1)
    resilient = Resilient(faulty, backoff=0.0, remeasure=5, output_range=(-1.0, 1.0))
    for i in range(60):
        params, x = _probes(32, i)
        out = resilient.measure(params, x)
        assert torch.allclose(out, device.response(params, x.expand(32, *x.shape)), atol=1e-6), i
    ev = resilient.summary()
    assert ev["retries"] == faulty.injected["timeout"] + faulty.injected["disconnect"] > 0
    assert ev["nonfinite"] >= 1 and ev["outliers"] >= 1 and ev["stuck"] >= 1 and ev["unresolved"] == 0
    assert device.queries == 60 * 32 + ev["remeasured_probes"] + ev["anchor_probes"]  # re-measurements are paid for


def test_outliers_are_caught_by_the_cross_probe_check_without_an_output_range():
    device = RandomReservoir(8, 16, seed=0)
    faulty = FaultInjector(device, outlier=0.1, outlier_scale=0.5, seed=2)  # spikes inside [-1, 1] often
    resilient = Resilient(faulty, backoff=0.0, remeasure=5)
    for i in range(20):
        params, x = _probes(16, i)
        assert torch.allclose(resilient.measure(params, x), device.response(params, x.expand(16, *x.shape)), atol=1e-6)
    assert resilient.events["outliers"] >= faulty.injected["outlier"] > 0


def test_a_genuine_deviation_is_confirmed_not_rejected():
    device = RandomReservoir(8, 16, seed=0)
    resilient = Resilient(device, output_range=(-0.5, 0.5))  # a too-narrow range: real answers reproduce
    params, x = _probes(8, 0)
    params["bias"][3] += 1.0  # one probe far from the others: a genuine outlier
    out = resilient.measure(params, x)
    assert torch.equal(out, device.response(params, x.expand(8, *x.shape)))
    assert resilient.events["confirmed"] >= 1 and resilient.events["unresolved"] == 0


def test_retries_back_off_and_then_give_up():
    waits = []
    resilient = Resilient(FaultInjector(RandomReservoir(8, 16), timeout=1.0), retries=3, backoff=0.1, max_backoff=0.25,
                          sleep=waits.append)
    with pytest.raises(DeviceTimeoutError, match="injected timeout"):
        resilient.measure(*_probes(4, 0))
    assert waits == [0.1, 0.2, 0.25]
    assert resilient.events["timeouts"] == 4 and resilient.events["failed_calls"] == 1


def test_persistent_garbage_is_refused_not_returned():
    resilient = Resilient(FaultInjector(RandomReservoir(8, 16), nan=1.0, seed=0), remeasure=2)
    with pytest.raises(MeasurementError, match="still suspicious after 2 re-measurement"):
        resilient.measure(*_probes(4, 0))
    assert resilient.events["unresolved"] == 4


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="retries and remeasure must be >= 0"):
        Resilient(RandomReservoir(2, 2), retries=-1)
    with pytest.raises(ValueError, match="output_range"):
        Resilient(RandomReservoir(2, 2), output_range=(1.0, -1.0))


def _train(device, scope, epochs=2):
    data = load_dataset("digits").subset(train=256, test=256, seed=0)
    model = ReservoirNet(data.num_features, device, data.num_classes, seed=0)
    method = PGT(num_pairs=8, delta=1e-2, scope=scope, seed=0)
    trainer = Trainer(model, method, torch.optim.Adam(model.parameters(), lr=1e-2 if scope == "local" else 3e-3),
                      batch_size=32, seed=0, max_consecutive_skips=50)
    records = trainer.fit(data, epochs)
    return model, records, trainer


@pytest.mark.parametrize("scope", ["local", "global"])
def test_training_survives_five_percent_of_every_fault(scope):
    audit = CommandAudit(RandomReservoir(16, 64, seed=1, guard="refuse"))
    faulty = FaultInjector.uniform(audit, 0.05, seed=3)
    device = Resilient(faulty, backoff=0.0, remeasure=5, output_range=(-1.0, 1.0))
    model, records, trainer = _train(device, scope)
    _, clean, _ = _train(RandomReservoir(16, 64, seed=1), scope)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert audit.violations == 0 and audit.commands > 0
    assert sum(faulty.injected.values()) > 30 and device.events["remeasured_probes"] > 0
    assert records[-1]["loss"] < records[0]["loss"]
    assert abs(records[-1]["loss"] - clean[-1]["loss"]) < 0.05  # the faults cost (almost) nothing
    assert abs(records[-1]["test_accuracy"] - clean[-1]["test_accuracy"]) <= 0.05
    if scope == "local":  # global PGT needs more than two epochs to leave chance level
        assert records[-1]["test_accuracy"] > 0.4  # 10 classes: chance is 0.1


def test_without_the_wrapper_corrupt_steps_are_skipped_never_applied():
    faulty = FaultInjector(RandomReservoir(16, 64, seed=1), timeout=0.05, disconnect=0.05, seed=3)
    model, records, trainer = _train(faulty, "local", epochs=1)
    assert trainer.skipped > 0 and records[-1]["skipped_steps"] == trainer.skipped
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_re_measurements_are_re_referenced_across_a_drift():
    """A baseline shift between the first call and a re-measurement must not leak into the answer."""
    device = RandomReservoir(8, 16, seed=0)
    faulty = FaultInjector(device, nan=0.1, drift=0.5, drift_scale=0.05, seed=4)
    resilient = Resilient(faulty, backoff=0.0, remeasure=5)
    for i in range(30):
        params, x = _probes(16, i)
        out = resilient.measure(params, x)
        truth = device.response(params, x.expand(16, *x.shape))
        baseline = out[0] - truth[0]  # whatever the offset was at the first call: the same for every probe
        assert torch.allclose(out - truth, baseline.expand_as(out), atol=1e-5), i
    assert faulty.injected["nan"] > 0 and faulty.injected["drift"] > 5 and resilient.events["anchor_probes"] > 0
