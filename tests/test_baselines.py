"""CMA-ES (pycma) and nevergrad through physgrad's ask/tell contract: they reduce a loss, never
propose a setting outside a device's safe range, and their cost is exactly what the device counted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from physgrad.errors import ConfigError, MeasurementError, ShapeError
from physgrad.methods.baselines import CMAES, Candidates, Nevergrad
from physgrad.models import ReservoirNet
from physgrad.models.physical_layer import parameter_bounds
from physgrad.systems import RandomReservoir

METHODS = [
    lambda: CMAES(seed=0),
    lambda: Nevergrad("NGOpt", seed=0),
    lambda: Nevergrad("TBPSA", seed=0),
]
IDS = ["cma", "ngopt", "tbpsa"]


def _task(n=96, features=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(classes, features, generator=g)
    y = torch.arange(n) % classes
    x = centres[y] + 0.5 * torch.randn(n, features, generator=g)
    return x, y


def _net(features=4, classes=3, seed=0):
    return ReservoirNet(features, RandomReservoir(6, 16, seed=seed), classes, seed=seed)


@pytest.mark.parametrize("make", METHODS, ids=IDS)
def test_step_reduces_the_loss_and_counts_every_candidate(make):
    x, y = _task()
    net = _net()
    method = make()
    device = net.reservoir.system
    with torch.no_grad():
        before = F.cross_entropy(net(x), y).item()
    device.reset_counters()
    steps = 0
    while method.total_cost.queries < 400:
        method.step(net, F.cross_entropy, x, y)
        steps += 1
    assert method.total_cost.queries == device.queries  # cost equals the device's own count
    assert method.total_cost.samples == device.samples == device.queries * len(y)
    assert method.total_cost.queries == steps * method.last_cost.queries
    with torch.no_grad():
        after = F.cross_entropy(net(x), y).item()
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("make", METHODS, ids=IDS)
def test_never_proposes_out_of_range_settings(make):
    net = _net()
    # a start at the edge of the safe range and a large step size push candidates against the bounds
    with torch.no_grad():
        net.reservoir.params["gain"].fill_(4.0)
        net.reservoir.params["bias"].fill_(-2.0)
    method = make()
    method.sigma0 = 3.0
    theta = {n: p.detach() for n, p in net.named_parameters()}
    bounds = parameter_bounds(net)
    for _ in range(5):
        probes = method.ask(theta, bounds=bounds)
        for name, (low, high) in bounds.items():
            v = probes.params[name]
            assert (v >= low).all() and (v <= high).all(), name
        answers = torch.rand(probes.count)
        method.tell(probes, answers)
    for name, (low, high) in bounds.items():
        rec = method.recommendation()[name]
        assert (rec >= low).all() and (rec <= high).all()


def test_backward_fills_the_displacement_that_sgd_lr1_applies():
    x, y = _task()
    net = _net()
    method = CMAES(seed=3)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    opt.zero_grad()
    method.backward(net, F.cross_entropy, x, y)
    opt.step()
    rec = method.recommendation()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), rec[n], atol=1e-6, rtol=0)


def test_ask_tell_by_hand_and_shard_join():
    method = CMAES(seed=0, popsize=8)
    theta = {"w": torch.zeros(5)}
    target = torch.arange(5.0) / 5
    for _ in range(60):
        probes = method.ask(theta)
        parts = probes.shard(3)
        assert sum(p.count for p in parts) == probes.count == 8
        answers = probes.join([((p.params["w"] - target) ** 2).sum(1) for p in parts])
        est = method.tell(probes, answers)
        assert est.cost.queries == 8
    assert ((method.recommendation()["w"] - target) ** 2).sum() < 1e-2


def test_bad_answers_are_refused():
    method = Nevergrad("NGOpt", seed=0)
    probes = method.ask({"w": torch.zeros(3)})
    with pytest.raises(ShapeError):
        method.tell(probes, torch.zeros(probes.count + 1))
    bad = torch.zeros(probes.count)
    bad[0] = float("nan")
    with pytest.raises(MeasurementError):
        method.tell(probes, bad)
    with pytest.raises(ConfigError):
        probes.answer(None)  # a lab answers the losses itself
    method.tell(probes, torch.zeros(probes.count))
    with pytest.raises(ConfigError):  # stale candidates
        method.tell(probes, torch.zeros(probes.count))


def test_bad_options():
    with pytest.raises(ConfigError):
        CMAES(sigma0=0.0)
    with pytest.raises(ConfigError):
        Nevergrad("NoSuchOptimizer")
    assert isinstance(Candidates({}, {}, [], 0).count, int)


# ---------------------------------------------------------------- registry entries and the Trainer
def test_registry_lists_the_baselines_and_makes_them_with_their_options():
    from physgrad.methods.registry import make_method, method_entry, method_names

    assert {"cma", "nevergrad"} <= set(method_names())
    for name in ("cma", "nevergrad"):
        entry = method_entry(name)
        assert entry.kind == "static" and entry.default_dataset == "sphere" and entry.default_device == "reservoir"
    assert isinstance(make_method("cma", sigma0=0.2), CMAES) and make_method("cma", sigma0=0.2).sigma0 == 0.2
    ng = make_method("nevergrad")
    assert isinstance(ng, Nevergrad) and ng.optimizer == method_entry("nevergrad").options["optimizer"] == "OnePlusOne"
    assert make_method("nevergrad", optimizer="TBPSA").optimizer == "TBPSA"
    with pytest.raises(ConfigError, match="unknown nevergrad optimizer 'Magic'"):
        make_method("nevergrad", optimizer="Magic")


@pytest.mark.parametrize("name", ["cma", "nevergrad"])
def test_trainer_applies_exactly_the_librarys_step(name, tmp_path):
    """The Trainer calls the method's own step: the model lands on the library's recommendation, the
    same parameters as a hand-written step loop over the same batches, and every candidate is counted."""
    from physgrad.data.datasets import Dataset
    from physgrad.methods.registry import make_method
    from physgrad.training import Trainer, read_metrics

    x, y = _task(n=64)
    data = Dataset("toy", x, y, x[:32], y[:32], 3, (2, 2))
    model, twin = _net(), _net()
    method, manual = make_method(name, seed=3), make_method(name, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=0.5)  # must be ignored: the method owns its update
    trainer = Trainer(model, method, opt, batch_size=16, seed=5, out_dir=tmp_path / "run", progress=False)
    trainer.fit(data, 1)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(5))
    for i in range(4):
        idx = order[16 * i : 16 * (i + 1)]
        manual.step(twin, F.cross_entropy, x[idx], y[idx])
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), n
    rec = method.recommendation()
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), rec[n].to(p.dtype)), n
    assert method.total_cost.queries == manual.total_cost.queries == read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["queries"]
    assert method.generation == 4
    # the checkpoint says what it can: resuming refuses plainly instead of restarting the search silently
    again = Trainer(_net(), make_method(name, seed=3), torch.optim.SGD(_net().parameters(), lr=1.0), batch_size=16,
                    seed=5, out_dir=tmp_path / "run", progress=False)
    from physgrad.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"(cma|nevergrad-OnePlusOne): a run cannot resume, the library.s search state"):
        again.fit(data, 2)


def test_config_builds_the_exact_sgd_and_refuses_optimizer_settings():
    from physgrad.experiments import TrainConfig, build

    data, model, method, opt = build(TrainConfig(method="cma", train_samples=64, test_samples=32))
    assert isinstance(method, CMAES) and type(opt) is torch.optim.SGD
    assert opt.param_groups[0]["lr"] == 1.0 and opt.param_groups[0]["momentum"] == 0.0
    for key, value in (("lr", 0.1), ("optimizer", "adam"), ("schedule", "backoff")):
        with pytest.raises(ConfigError, match=rf"updates the parameters itself.*\['{key}'\]"):
            build(TrainConfig(method="cma", **{key: value}), data)
