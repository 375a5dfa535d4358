"""The Ray device farm (physgrad.carriers.ray_farm) and Ray sweeps (physgrad.experiments.sweep).

A local Ray on 127.0.0.1 with 2 CPUs and no dashboard is started once for the module and shut
down after it. Devices are tiny; the slow ones sleep (no CPU) so that a kill lands mid-measurement.
"""

import json
import os
import signal
import sys
import threading
import time
import warnings

import pytest
import torch
import torch.nn.functional as F

ray = pytest.importorskip("ray")  # installed by the test extra: a skip here is a failure of the set-up

from physgrad.carriers import InProcess  # noqa: E402
from physgrad.carriers.ray_farm import RAY_SYSTEM_CONFIG, DeviceFarm, build_device, part_seed, resolve_factory  # noqa: E402
from physgrad.cost import Cost  # noqa: E402
from physgrad.errors import ConfigError, MeasurementError  # noqa: E402
from physgrad.methods.registry import make_method, method_entry, method_names  # noqa: E402
from physgrad.models.reservoir_net import ReservoirNet  # noqa: E402
from physgrad.systems.devices.reservoir import RandomReservoir  # noqa: E402
from physgrad.systems.noise import MeasurementNoise  # noqa: E402
from physgrad.systems.wrappers.latency import Latency, latency_reservoir  # noqa: E402

RESERVOIR = "physgrad.systems.devices.reservoir:RandomReservoir"
DEVICE = {"input_size": 6, "size": 12, "seed": 3}


class Flaky(RandomReservoir):
    """A reservoir that fails every measurement when ``fail`` (a device that keeps failing)."""

    def __init__(self, *args, fail: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail = fail

    def measure(self, params, inputs):
        if self.fail:
            raise MeasurementError("flaky device: no answer")
        return super().measure(params, inputs)


class WhoAnswers(RandomReservoir):
    """Answers with its own index everywhere: shows which device measured each probe."""

    def __init__(self, *args, index: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.index = index

    def measure(self, params, inputs):
        out = super().measure(params, inputs)
        return torch.full_like(out, float(self.index))


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test devices travel by value
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", object_store_memory=100 * 2**20,
             # a shared machine: the OS, not Ray's memory monitor, polices memory
             _system_config={**RAY_SYSTEM_CONFIG, "memory_monitor_refresh_ms": 0})
    yield
    ray.shutdown()


def tiny_net(device=None, seed=0):
    device = device if device is not None else RandomReservoir(**DEVICE)
    model = ReservoirNet(5, device, 3, seed=seed)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    return model, x, y


def grads_of(model):
    return [p.grad.clone() for p in model.parameters()]


# ------------------------------------------------------------------ building devices
def test_factory_accepts_callable_and_module_class_and_names_bad_ones():
    assert resolve_factory(RandomReservoir) is RandomReservoir
    assert isinstance(build_device(RESERVOIR, DEVICE), RandomReservoir)
    with pytest.raises(ConfigError, match="module:Class"):
        resolve_factory("RandomReservoir")
    with pytest.raises(ConfigError, match="cannot import"):
        resolve_factory("no_such_module_xyz:Device")
    with pytest.raises(ConfigError, match="has no"):
        resolve_factory("physgrad.systems.devices.reservoir:NoSuchDevice")
    with pytest.raises(ConfigError, match="num_devices"):
        DeviceFarm(RESERVOIR, 0)
    with pytest.raises(ConfigError, match="noise_seed needs a fixed grain"):
        DeviceFarm(RESERVOIR, 1, noise_seed=1)


def test_devices_with_different_identities_are_refused_unless_heterogeneous():
    with pytest.raises(ConfigError, match="different identities"):
        DeviceFarm(RESERVOIR, 2, device_kwargs=DEVICE, per_device=lambda i: {"name": f"chip{i}"})


# ------------------------------------------------------------------ the same answer at any size
def _estimate_and_training(farm):
    """One PGT-local estimate and a short training run through ``farm`` (None: in process)."""
    from physgrad.data.datasets import load_dataset
    from physgrad.training.trainer import Trainer

    model, x, y = tiny_net()
    method = make_method("pgt", num_pairs=6, delta=1e-2, scope="local", seed=5)
    if farm is not None:
        method.carrier = farm
    model.zero_grad()
    method.backward(model, F.cross_entropy, x, y)
    estimate = grads_of(model)
    estimate_cost = method.last_cost

    data = load_dataset("digits").subset(96, 32, seed=0)
    model = ReservoirNet(data.num_features, RandomReservoir(**DEVICE), data.num_classes, seed=0)
    method = make_method("pgt", num_pairs=6, delta=1e-2, scope="local", seed=5)
    if farm is not None:
        method.carrier = farm
    trainer = Trainer(model, method, torch.optim.Adam(model.parameters(), lr=3e-3), batch_size=32, seed=0,
                      progress=False)
    trainer.fit(data, 1)
    final = [p.detach().clone() for p in model.parameters()]
    return estimate, estimate_cost, final, method.total_cost


def test_estimate_and_training_bit_identical_for_4_2_1_devices_and_in_process():
    reference = _estimate_and_training(None)
    with DeviceFarm(RESERVOIR, 4, device_kwargs=DEVICE) as farm:
        for n in (4, 2, 1):  # the same farm, devices retired between sizes (fewer actors to start)
            while len(farm.live) > n:
                with pytest.warns(RuntimeWarning, match="retired"):
                    farm.retire(farm.live[-1])
            est, est_cost, final, total = _estimate_and_training(farm)
            assert all(torch.equal(a, b) for a, b in zip(est, reference[0])), f"estimate differs at N={n}"
            assert all(torch.equal(a, b) for a, b in zip(final, reference[2])), f"training differs at N={n}"
            assert est_cost == reference[1] and total == reference[3], f"cost differs at N={n}"
        assert farm.retired == [3, 2, 1]
        with pytest.raises(ConfigError, match="devices 0..3"):
            farm.retire(7)


def test_noisy_devices_bit_identical_at_any_size_with_grain_and_noise_seed():
    noisy = dict(DEVICE, noise=MeasurementNoise(additive=0.05))
    outs = []
    with DeviceFarm(RESERVOIR, 2, device_kwargs=noisy, grain=4, noise_seed=11) as farm:
        for n in (2, 1):
            if n == 1:
                with pytest.warns(RuntimeWarning):
                    farm.retire(1)
            farm.load_state_dict({"calls": 0, "cost": Cost().as_dict()})  # the same per-part seeds again
            model, x, y = tiny_net(RandomReservoir(**noisy))
            method = make_method("pgt", num_pairs=4, delta=1e-2, scope="local", seed=2)
            method.carrier = farm
            for _ in range(2):
                model.zero_grad()
                method.backward(model, F.cross_entropy, x, y)
            outs.append(grads_of(model))
            assert farm.state_dict()["calls"] == farm.calls == 4
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    assert not all(torch.equal(a, b) for a, b in zip(outs[0], _noisy_in_process(noisy)))  # the noise is real
    assert part_seed(11, 1, 0) != part_seed(11, 1, 1) != part_seed(11, 2, 1)


def _noisy_in_process(noisy):
    model, x, y = tiny_net(RandomReservoir(**noisy))
    method = make_method("pgt", num_pairs=4, delta=1e-2, scope="local", seed=2)
    for _ in range(2):
        model.zero_grad()
        method.backward(model, F.cross_entropy, x, y)
    return grads_of(model)


# ------------------------------------------------------------------ every static method, both scopes
@pytest.fixture(scope="module")
def farm2():
    with DeviceFarm(RESERVOIR, 2, device_kwargs=DEVICE) as farm:
        yield farm


def _static_estimators() -> list[tuple[str, str]]:
    """The static gradient estimators with the scopes each takes (the black-box searches, which own their
    update and have no scope, go through the farm in the registry-wide test below)."""
    return [(n, s) for n in method_names() if method_entry(n).kind == "static"
            and not getattr(make_method(n), "owns_update", False)
            for s in ("local", "global") if s == "local" or "scope" in method_entry(n).options]


@pytest.mark.parametrize("name, scope", _static_estimators())
def test_every_static_method_through_the_farm_equals_in_process(farm2, name, scope):
    # the options each method takes (the twin methods have no scope option: they are local only)
    options = {k: v for k, v in {"scope": scope, "delta": 1e-2, "num_pairs": 4}.items() if k in method_entry(name).options}
    results = []
    for carrier in (None, farm2):
        model, x, y = tiny_net()
        method = make_method(name, **options)
        if carrier is not None:
            method.carrier = carrier
        model.zero_grad()
        loss = method.backward(model, F.cross_entropy, x, y)
        results.append((loss, grads_of(model), method.last_cost))
    (l0, g0, c0), (l1, g1, c1) = results
    assert torch.equal(l0, l1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert c0 == c1 and c1.queries > 0  # the stand-in device was credited with exactly what the farm counted


HOPFIELD = dict(sizes=[6, 8, 4], gains=[0.7, 0.7], hidden_range=(-5, 5), output_range=(-5, 5), tolerance=1e-13,
                max_sweeps=5000, seed=3)


def hopfield_device():
    """The energy device of ``EnergyModel(HopfieldNetwork(**HOPFIELD)).double()`` (built in the actor)."""
    from physgrad.models import EnergyModel
    from physgrad.systems import HopfieldNetwork

    return EnergyModel(HopfieldNetwork(**HOPFIELD)).double().device


def test_energy_methods_through_the_farm_equal_in_process():
    from physgrad.models import EnergyModel
    from physgrad.systems import HopfieldNetwork

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(5, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (5,), generator=g)
    with DeviceFarm(hopfield_device, 2) as farm:
        for name in [n for n in method_names() if method_entry(n).kind == "energy"]:
            results = []
            for carrier in (None, farm):
                model = EnergyModel(HopfieldNetwork(**HOPFIELD)).double()
                method = make_method(name)
                if carrier is not None:
                    method.carrier = carrier
                for _ in range(2):
                    model.zero_grad()
                    loss = method.backward(model, model.loss, x, y)
                results.append((loss, grads_of(model), method.last_cost))
            (l0, g0, c0), (l1, g1, c1) = results
            # EqProp's probes split along samples (each sample's phases stay on one device): each part relaxes
            # to the device's tolerance on its own, so the farm's answer equals in-process to that tolerance
            # (not bit for bit), and each device counts its own relaxations (more queries, the same samples).
            # Aeqprop's probes are never split (its parameters relax against the whole batch): bit-identical.
            if name == "aeqprop":
                assert torch.equal(l0, l1) and all(torch.equal(a, b) for a, b in zip(g0, g1)) and c0 == c1, name
            else:
                assert torch.allclose(l0, l1, rtol=1e-9, atol=0), name
                assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(g0, g1)), name
                assert c1.samples == c0.samples and c1.queries >= c0.queries > 0, name


def test_a_pair_is_always_measured_on_one_device():
    from physgrad.methods.perturbation.engine import PerturbationProbes

    dev = RandomReservoir(**DEVICE)
    method = make_method("pgt", num_pairs=7, delta=1e-2, scope="local")
    x = torch.randn(3, 6)
    probes = method.ask(dev.initial_parameters(), x, bounds=dev.parameter_bounds(), system=dev)
    assert isinstance(probes, PerturbationProbes)
    with DeviceFarm(WhoAnswers, 3, device_kwargs=DEVICE, per_device=lambda i: {"index": i, "name": f"chip{i}"},
                    heterogeneous=True) as farm:
        assert farm.identities == ["chip0", "chip1", "chip2"]  # distinct devices: distinct identities
        answers = farm(dev, probes)
    k = probes.pairs
    who = answers[:, 0, 0]
    assert torch.equal(who[:k], who[k:])  # the + and − probe of each direction: the same device
    assert set(who.tolist()) == {0.0, 1.0, 2.0}  # and the directions were spread over the three
    assert torch.equal(who[:k], torch.sort(who[:k]).values)  # contiguous, in order


# ------------------------------------------------------------------ HGE (waveform probes, calibration) through the farm
def hge_device(name=None):
    """A noiseless time-domain DNPU with DAC ramps (built in each actor); ``name``: its identity."""
    from physgrad.systems import time_domain_dnpu

    dev = time_domain_dnpu(None, fs=2000.0, bandwidth_hz=400.0, delay_s=5e-4, white_psd=0.0, dac_ramp_s=1e-3, seed=1)
    if name is not None:
        dev.identity = name
    return dev


def hge_net(dev):
    """digital layer -> DNPU -> digital layer (every path a channel's modulation can travel)."""
    from torch import nn

    from physgrad.models import PhysicalLayer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), PhysicalLayer(dev), nn.Linear(1, 1))
    with torch.no_grad():
        model[0].weight.mul_(0.3)
        model[0].bias.mul_(0.3)
        model[-1].weight.fill_(0.05)
        model[-1].bias.fill_(0.1)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)) * 0.5
    return model, x, torch.randn(4, 1, generator=torch.Generator().manual_seed(2))


def _hge_steps(scope, carrier, steps=2):
    """Two SGD steps of HGE on ``hge_net``: [(loss, grads, last_cost)], final parameters, the method."""
    from physgrad.methods import HGE

    model, x, y = hge_net(hge_device())
    method = HGE(0.1, scope=scope)
    if carrier is not None:
        method.carrier = carrier
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss = method.backward(model, torch.nn.MSELoss(), x, y)
        out.append((loss, grads_of(model), method.last_cost))
        opt.step()
    return out, [p.detach().clone() for p in model.parameters()], method


@pytest.fixture(scope="module")
def hge_farm():
    with DeviceFarm(hge_device, 4) as farm:
        yield farm


@pytest.mark.parametrize("scope", ["global", "local"])
def test_hge_through_the_farm_equals_in_process_values_and_counted_cost(hge_farm, scope):
    """Bit-identical losses, gradients and parameters at N = 1, 2, 4; the cost is what the devices counted.

    The calibration, the DAC ramps and every window are counted on the farm's devices and credited to
    the model's stand-in. Global scope: one network, one waveform (never split): the cost equals the
    in-process cost in every field. Local scope: the gradient's windows are split along the data points
    over the devices, each part one device call (a query of its own windows): samples and device seconds
    equal the in-process cost, queries are one per device call — exactly the in-process cost of the same
    split (``InProcess(max_parts=N)``).
    """
    plain, plain_final, _ = _hge_steps(scope, None)
    for n in (1, 2, 4):
        hge_farm.active = n
        got, final, method = _hge_steps(scope, hge_farm)
        split, _, _ = _hge_steps(scope, InProcess(max_parts=n))
        assert all(torch.equal(a, b) for a, b in zip(final, plain_final)), f"training differs at N={n}"
        for step, ((l0, g0, c0), (l1, g1, c1), (_, _, c2)) in enumerate(zip(plain, got, split)):
            assert torch.equal(l0, l1), (n, step)
            assert all(torch.equal(a, b) for a, b in zip(g0, g1)), (n, step)
            assert c1 == c2, (n, step, c1, c2)
            if scope == "global" or n == 1:
                assert c1 == c0, (n, step, c1, c0)
            else:  # step 0: [calibration, gradient in N-1 parts]; then the gradient in N parts
                assert c1.queries == c0.queries + (n - 2 if step == 0 else n - 1), (n, step, c1, c0)
                assert c1.samples == c0.samples, (n, step, c1, c0)
                # device seconds: a sum over the parts instead of one product; float rounding only
                assert c1.device_seconds == pytest.approx(c0.device_seconds, rel=1e-14, abs=0), (n, step, c1, c0)
        # the calibration (6 s of device time) was measured once, on the farm, and counted there
        assert method.calibration_cost.queries == 1 and method.calibration_cost.device_seconds > 6
        assert got[0][2].device_seconds > method.calibration_cost.device_seconds > got[1][2].device_seconds
    hge_farm.active = None


@pytest.mark.parametrize("scope", ["global", "local"])
def test_hge_estimate_cost_is_the_sum_of_what_the_farms_devices_counted(scope):
    """ask -> farm -> tell by hand on fresh devices: ``Estimate.cost`` equals the devices' own counters."""
    from physgrad.methods import HGE

    with DeviceFarm(hge_device, 2) as farm:
        stand_in = hge_device()
        model, x, y = hge_net(stand_in)
        method = HGE(0.1, scope=scope)
        estimates = []
        for rnd in range(2):  # with the calibration in front, then without
            if scope == "local":
                layer = model[2]
                inputs = torch.tanh(model[0](x)).detach()
                probes = method.ask(layer.device_parameters(), inputs, system=stand_in, input_grad=True)
                cot = torch.ones(4, 1)
            else:
                probes = method.ask_model(model, torch.nn.MSELoss(), x, y)
                cot = torch.ones(4, 1)
            assert type(probes).__name__ == ("CalibratedProbes" if rnd == 0 else
                                            "WaveformProbes" if scope == "local" else "ModelProbes")
            before = stand_in.cost
            est = method.tell(probes, farm(stand_in, probes), cot)
            estimates.append(est)
            assert est.cost == farm.last_cost, (rnd, est.cost, farm.last_cost)
            assert est.cost.queries == probes.count
            if rnd == 0:  # fresh devices: their counters are exactly this call's
                counted = farm.device_costs()
                assert est.cost == counted[0] + counted[1] and stand_in.cost == est.cost
                assert counted[0] == probes.calibration.cost  # device 0 played the calibration (DAC ramp included)
                assert counted[1].queries == 1 and counted[1].device_seconds > 0
            else:  # the stand-in's counters are cumulative: their difference is exact in queries and samples
                spent = stand_in.cost - before
                assert (spent.queries, spent.samples) == (est.cost.queries, est.cost.samples)
                assert spent.device_seconds == pytest.approx(est.cost.device_seconds, rel=1e-14, abs=0)
        assert farm.cost == estimates[0].cost + estimates[1].cost
        assert list(method.calibrations) == [stand_in.identity]


def test_hge_calibration_is_kept_per_device_identity_and_a_resumed_run_does_not_recalibrate():
    from physgrad.methods import HGE

    # distinct chips: the probes asked for chip1 (its calibration, keyed 'chip1') are measured on chip1 only
    with DeviceFarm(hge_device, 2, per_device=lambda i: {"name": f"chip{i}"}, heterogeneous=True) as farm:
        model, x, y = hge_net(hge_device("chip1"))
        method = HGE(0.1, scope="local")
        method.carrier = farm
        for _ in range(2):
            method.backward(model, torch.nn.MSELoss(), x, y)
        dev0, dev1 = farm.device_costs()
        assert dev1.queries == 1 + 1 + 1  # calibrated once, then one gradient per step: all on chip1
        # chip0 only took the forward measurements (static: they name no device, any chip may answer them)
        assert dev0.queries == 2 and dev0.device_seconds == pytest.approx(2 * 4 * model[2].system.seconds_per_query)
        assert list(method.calibrations) == ["chip1"]
        # resumed: the state carries chip1's calibration; nothing is recalibrated
        resumed = HGE(0.1, scope="local")
        resumed.load_state_dict(method.state_dict())
        resumed.carrier = farm
        before = farm.cost
        resumed.backward(model, torch.nn.MSELoss(), x, y)
        assert (farm.cost - before).queries == 2 and resumed.calibration_cost == method.calibration_cost
        assert farm.device_costs()[1].queries == 4  # the forward pass and one gradient; no calibration
        # probes asked for a device the farm does not have are refused, naming it
        stray = HGE(0.1, scope="local")
        stray.carrier = farm
        other, x2, y2 = hge_net(hge_device("chip9"))
        with pytest.raises(ConfigError, match="'chip9'.*no live device"):
            stray.backward(other, torch.nn.MSELoss(), x2, y2)


# ------------------------------------------------------------------ every method of the registry
NOISELESS = {"dnpu-time": {"white_psd": 0.0}}  # registry devices whose default has measurement noise: switched off
RELAXATION_TOLERANCE = {"eqprop"}  # probes split along samples, each part relaxed to the device's tolerance


@pytest.fixture(scope="module")
def config_farms():
    """One farm of 2 per (default device, default dataset), shared by the methods that use it."""
    from physgrad.experiments.sweep import farm_for_config

    farms = {}

    def get(cfg):
        key = (cfg.entry.default_device, cfg.entry.default_dataset)
        if key not in farms:
            farms[key] = farm_for_config(cfg, 2)
        return farms[key]

    yield get
    for farm in farms.values():
        farm.close()


@pytest.mark.parametrize("name", method_names())
def test_every_registry_method_trains_one_step_through_a_farm_of_2_like_in_process(config_farms, name):
    """Each method on its registry device and dataset: one step in process, one through a farm of 2.

    Bit-identical (loss, gradients, parameters, cost) for every method deterministic given its seed, on
    noiseless devices; EqProp within its relaxation tolerance (each part relaxes on its own); the
    backpropagation oracle (Simulation probes: autograd history) is refused with a clear error.
    """
    from physgrad.experiments.config import TrainConfig, build, loss_function

    entry = method_entry(name)
    cfg = TrainConfig(method=name, train_samples=16, test_samples=8, batch_size=8, epochs=1, reservoir_size=16,
                      reservoir_inputs=8, device_args=dict(NOISELESS.get(entry.default_device, {})))
    farm = config_farms(cfg)
    results = []
    for carrier in (None, farm):
        data, model, method, opt = build(cfg)
        if carrier is not None:
            method.carrier = carrier
        x, y = data.x_train[:8], data.y_train[:8]
        opt.zero_grad()
        if entry.kind == "oracle" and carrier is not None:
            before = farm.cost
            with pytest.raises(ConfigError, match="answered in process only"):
                method.backward(model, loss_function(model), x, y)
            # refused before the simulator was asked (local scope: the forward pass was measured, and counted)
            assert (farm.cost - before).queries == (1 if cfg.scope == "local" else 0)
            return
        carried = None if carrier is None else farm.cost
        loss = method.backward(model, loss_function(model), x, y)
        if carrier is not None:  # every query of the step went through the farm: none bypassed the carrier
            assert farm.cost - carried == method.last_cost, (name, farm.cost - carried, method.last_cost)
        grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        opt.step()
        results.append((loss, grads, method.last_cost, [p.detach().clone() for p in model.parameters()]))
    (l0, g0, c0, p0), (l1, g1, c1, p1) = results
    assert c0.queries > 0 and c1.queries > 0
    if name in RELAXATION_TOLERANCE:
        # each part's states relax to the device's tolerance τ on their own: the loss agrees to τ and the
        # gradient (a difference of energy derivatives divided by the nudging β) to 2τ/β
        from physgrad.models.physical_layer import systems_of

        tau, beta = systems_of(model)[0].tolerance, method.beta
        assert torch.allclose(l0, l1, rtol=0, atol=tau)
        assert all(torch.allclose(a, b, rtol=0, atol=2 * tau / beta) for a, b in zip(g0, g1) if a is not None)
        assert c1.samples == c0.samples and c1.queries >= c0.queries
    else:
        assert torch.equal(l0, l1)
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(g0, g1))
        assert all(torch.equal(a, b) for a, b in zip(p0, p1))
        assert c1 == c0, (c1, c0)


# ------------------------------------------------------------------ faults
def test_killed_actor_step_completes_and_every_query_is_counted():
    latency = 0.4
    kwargs = {"input_size": 6, "size": 12, "seed": 3, "seconds_per_setting": latency}
    reference_model, x, y = tiny_net(latency_reservoir(**dict(kwargs, seconds_per_setting=0.0)))
    reference = make_method("pgt", num_pairs=4, delta=1e-2, scope="local", seed=1)
    reference.backward(reference_model, F.cross_entropy, x, y)

    model, x, y = tiny_net(latency_reservoir(**dict(kwargs, seconds_per_setting=0.0)))
    method = make_method("pgt", num_pairs=4, delta=1e-2, scope="local", seed=1)
    with DeviceFarm(latency_reservoir, 2, device_kwargs=kwargs) as farm:
        method.carrier = farm
        done, failure = threading.Event(), []

        def step():
            try:
                method.backward(model, F.cross_entropy, x, y)
            except BaseException as e:  # pragma: no cover - reported below
                failure.append(e)
            done.set()

        thread = threading.Thread(target=step)
        thread.start()
        deadline = time.monotonic() + 60
        while farm.in_flight() < 2:  # both halves of the gradient are being measured
            assert time.monotonic() < deadline and not done.is_set(), "the gradient never reached both devices"
            time.sleep(0.02)
        os.kill(farm.pids[0], signal.SIGKILL)  # device 0's process dies mid-measurement
        thread.join(120)
        assert done.is_set() and not failure, failure
        assert farm.lost_cost.queries == 4  # device 0's share (2 pairs), charged as dispatched
        assert farm.live == [0, 1] and farm.retired == []  # Ray restarted it; it measured its share again
    # the step completed with the same answer, and counted the killed share too
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), reference_model.parameters()))
    assert method.last_cost.queries == reference.last_cost.queries + 4 == 1 + 8 + 4
    assert method.last_cost == farm.cost
    assert method.last_cost.samples == reference.last_cost.samples + 4 * 16


def test_device_that_keeps_failing_is_retired_and_training_goes_on():
    model, x, y = tiny_net()
    reference = make_method("pgt", num_pairs=4, delta=1e-2, scope="local", seed=1)
    with DeviceFarm(Flaky, 2, device_kwargs=DEVICE, per_device=lambda i: {"fail": i == 1},
                    max_failures=2) as farm:
        method = make_method("pgt", num_pairs=4, delta=1e-2, scope="local", seed=1)
        method.carrier = farm
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                m0, _, _ = tiny_net()
                model.zero_grad()
                m0.zero_grad()
                method.backward(model, F.cross_entropy, x, y)
                reference.backward(m0, F.cross_entropy, x, y)
                assert all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), m0.parameters()))
                assert method.last_cost == reference.last_cost  # the failing device counted nothing
        assert farm.live == [0] and farm.retired == [1]
        assert farm.redispatched == 2
        assert any("device 1 retired" in str(w.message) for w in caught)


def _kill_and_wait(actor, timeout_s=60.0):
    """Kill an actor for good and wait until Ray reports it dead (``ray.kill`` only requests the kill:
    on a loaded machine a call sent right after it may still be served)."""
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.info.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            continue
        time.sleep(0.05)
    raise AssertionError(f"actor still answering {timeout_s} s after ray.kill")


def test_actor_dead_for_good_is_retired_and_its_share_measured_elsewhere():
    dev = RandomReservoir(**DEVICE)
    method = make_method("pgt", num_pairs=4, delta=1e-2, scope="local")
    x = torch.randn(3, 6)
    probes = method.ask(dev.initial_parameters(), x, bounds=dev.parameter_bounds(), system=dev)
    expected = InProcess()(RandomReservoir(**DEVICE), probes)
    with DeviceFarm(RESERVOIR, 2, device_kwargs=DEVICE, max_restarts=0, max_task_retries=0) as farm:
        _kill_and_wait(farm.actors[1])
        with pytest.warns(RuntimeWarning, match="device 1 retired"):
            answers = farm(dev, probes)
        assert torch.equal(answers, expected)
        assert farm.live == [0]
        assert farm.cost == Cost(8, 24, 0.0)
        _kill_and_wait(farm.actors[0])
        with pytest.warns(RuntimeWarning), pytest.raises(MeasurementError, match="failed on every device"):
            farm(dev, probes)
        with pytest.raises(MeasurementError, match="every device has been retired"):
            farm(dev, probes)


def test_a_hung_device_is_retired_after_the_timeout_and_its_part_measured_elsewhere():
    dev = RandomReservoir(**DEVICE)
    method = make_method("pgt", num_pairs=2, delta=1e-2, scope="local")
    probes = method.ask(dev.initial_parameters(), torch.randn(3, 6), bounds=dev.parameter_bounds(), system=dev)
    expected = InProcess()(RandomReservoir(**DEVICE), probes)
    kwargs = dict(DEVICE, seconds_per_setting=0.0)
    with DeviceFarm(latency_reservoir, 2, device_kwargs=kwargs, timeout=5.0,
                    per_device=lambda i: {"seconds_per_setting": 600.0 if i == 1 else 0.0}) as farm:
        with pytest.warns(RuntimeWarning, match="no answer within 5 s"):
            answers = farm(dev, probes)
        assert torch.equal(answers, expected)
        assert farm.live == [0]
        assert farm.lost_cost == Cost(2, 6, 0.0)  # the hung device's part, charged as dispatched
        assert farm.cost == Cost(6, 18, 0.0)
    with pytest.raises(ConfigError, match="timeout"):
        DeviceFarm(RESERVOIR, 1, timeout=0)


def test_failed_part_everywhere_raises_measurement_error_and_counts():
    dev = RandomReservoir(**DEVICE)
    method = make_method("pgt", num_pairs=2, delta=1e-2, scope="local")
    probes = method.ask(dev.initial_parameters(), torch.randn(2, 6), bounds=dev.parameter_bounds(), system=dev)
    with DeviceFarm(Flaky, 1, device_kwargs=dict(DEVICE, fail=True), max_failures=5) as farm:
        with pytest.raises(MeasurementError, match="flaky device"):
            farm(dev, probes)
        assert farm.live == [0] and farm.cost == Cost()


# ------------------------------------------------------------------ the latency wrapper
def test_latency_wrapper_waits_per_setting_and_answers_like_the_device():
    inner = RandomReservoir(**DEVICE)
    dev = Latency(RandomReservoir(**DEVICE), 0.01)
    params = {n: v.unsqueeze(0).expand(3, *v.shape) for n, v in inner.initial_parameters().items()}
    x = torch.randn(2, 6)
    t = time.perf_counter()
    out = dev.measure(params, x)
    assert time.perf_counter() - t >= 0.03
    assert torch.equal(out, inner.measure(params, x))
    assert dev.cost == inner.cost == Cost(3, 6, 0.0)
    assert dev.identity == inner.identity
    with pytest.raises(ValueError):
        Latency(inner, -1)


# ------------------------------------------------------------------ sweeps
def test_sweep_runs_each_config_and_seed_into_its_own_folder_and_resumes(tmp_path):
    from physgrad.experiments.sweep import plan, sweep

    cfg = {"method": "pgt", "scope": "local", "epochs": 1, "train_samples": 64, "test_samples": 32,
           "num_pairs": 2, "reservoir_size": 16, "reservoir_inputs": 8, "batch_size": 32}
    path = tmp_path / "small.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "runs"
    first = sweep([path], out, seeds=[0, 1], cpus_per_run=1)
    assert sorted(first) == ["small-seed0", "small-seed1"]
    for name, record in first.items():
        assert (out / name / "checkpoint.pt").exists() and (out / name / "metrics.jsonl").exists()
        assert record["epoch"] == 1 and record["queries"] > 0
    assert first["small-seed0"]["test_accuracy"] != first["small-seed1"]["test_accuracy"] or \
        first["small-seed0"]["loss"] != first["small-seed1"]["loss"]
    stamp = (out / "small-seed0" / "checkpoint.pt").stat().st_mtime_ns
    again = sweep([path], out, seeds=[0, 1])  # resumed: finished runs are not trained again
    assert again == first
    assert (out / "small-seed0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="share a folder"):
        plan([path, path])


# ------------------------------------------------------------------ the command line hooks
def test_cli_train_on_a_farm_equals_in_process_and_run_ray_sweeps(tmp_path, capsys):
    from physgrad.cli import main

    small = ["--epochs", "1", "--train-samples", "64", "--test-samples", "32", "--num-pairs", "2",
             "--reservoir-size", "16", "--reservoir-inputs", "8", "--batch-size", "32"]
    assert main(["train", *small, "--out", str(tmp_path / "local")]) == 0
    assert main(["train", *small, "--devices", "2", "--out", str(tmp_path / "farm")]) == 0
    local, farm = ([json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()][-1]
                   for d in ("local", "farm"))
    for key in ("loss", "test_accuracy", "queries", "samples"):
        assert local[key] == farm[key], key
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"epochs": 1, "train_samples": 64, "test_samples": 32, "num_pairs": 2,
                               "reservoir_size": 16, "reservoir_inputs": 8}))
    assert main(["run", str(cfg), "--ray", "--seeds", "3", "--out", str(tmp_path / "sweep")]) == 0
    assert (tmp_path / "sweep" / "c-seed3" / "checkpoint.pt").exists()
    assert "c-seed3: test accuracy" in capsys.readouterr().out


# ------------------------------------------------------------------ the benchmark's code path
def test_scaling_benchmark_runs_and_writes_its_contract(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:  # the benchmarks package lives at the repository root, not in src/
        sys.path.insert(0, root)
    from benchmarks import ray_scaling

    out = tmp_path / "f.json"
    figures = ray_scaling.main(["--quick", "--sizes", "1", "2", "--rounds", "1", "--steps", "1", "--pairs", "4",
                                "--latency", "0.02", "--hge-sizes", "1", "2", "--hge-time-scale", "0.05",
                                "--out", str(out), "--plot", str(tmp_path / "p.png")])
    written = json.loads(out.read_text())
    for key in ("efficiency_2", "overhead_1", "identical_parameters", "killed_actor_step_completed",
                "throughput_1", "cpu_time_ratio_2", "hge_efficiency_2", "hge_overhead_1", "hge_throughput_1"):
        assert key in written
    assert figures["identical_parameters"] is True and figures["cpu_identical_parameters"] is True
    assert figures["hge_identical_parameters"] is True and figures["hge_same_device_seconds"] is True
    assert figures["hge_same_windows"] is True
    assert (tmp_path / "p.png").exists()


def test_coordination_benchmark_runs_and_writes_its_figures(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import ray_coordination

    out = tmp_path / "c.json"
    figures = ray_coordination.main(["--sizes", "1", "2", "--rounds", "1", "--pairs", "4", "--out", str(out),
                                     "--plot", str(tmp_path / "c.png")])
    written = json.loads(out.read_text())
    for key in ("c1_ms", "c0_ms", "call_1_ms", "call_2_ms", "round_trip_2_ms", "ledger_2_ms", "in_process_ms"):
        assert key in written
    assert figures["call_2_ms"] > 0 and figures["round_trip_1_ms"] > 0 and (tmp_path / "c.png").exists()
