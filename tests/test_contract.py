"""The contract of issue 10, for every registered method: ask (pure) → carrier → tell, and backward on top.

* the same hand-written lab loop (ask, the carrier on a device of the method's kind, tell, an
  optimizer step) trains every registered method: the loss falls;
* ask/tell and ``backward`` give the same estimate for the same seed;
* ``ask`` never touches the device;
* shard/join round trips keep ± pairs together and the order asked;
* the cost an estimate reports is what the device counted, exactly;
* one error policy: a non-finite answer is a ``MeasurementError`` in every method.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from physgrad.carriers import Carrier, InProcess, Measurement, Probes
from physgrad.cost import Cost
from physgrad.errors import ConfigError, MeasurementError
from physgrad.methods import HGE, PGT, Aeqprop, make_method as legacy_make_method
from physgrad.methods.base import NetworkLoss
from physgrad.methods.registry import KINDS, make_method, method_entry, method_names
from physgrad.models import EnergyModel, PhysicalLayer, ReservoirNet, keep_in_range, parameter_bounds
from physgrad.systems import HopfieldNetwork, RandomReservoir, time_domain_dnpu
from physgrad.systems.base import ParameterSpec, PhysicalSystem

EIGHT = ("pgt", "spsa", "es", "fd", "hge", "eqprop", "aeqprop", "backprop")


def small_options(name: str) -> dict:
    """Quick settings per method for the tiny problems below."""
    return {
        "pgt": dict(num_pairs=16, delta=1e-2, seed=3),
        "spsa": dict(num_pairs=16, delta=1e-2, seed=3),
        "es": dict(num_pairs=16, delta=1e-2, seed=3),
        "fd": dict(delta=1e-3, seed=3),
        "hge": dict(seed=3),
        "eqprop": dict(beta=0.1, seed=3),
        "aeqprop": dict(beta=0.1, epsilon=1e-3, seed=3),
        "backprop": dict(seed=3),
        "pat": dict(seed=3), "twin_cv": dict(seed=3), "twin_guided": dict(seed=3),
    }.get(name, {"seed": 3})  # later methods (the baselines, ...): their defaults


class Counting:
    """A carrier that counts what it carries and passes it on in process."""

    def __init__(self) -> None:
        self.calls, self.queries, self.inner = 0, 0, InProcess()

    def __call__(self, system, probes):
        self.calls += 1
        self.queries += probes.count
        return self.inner(system, probes)


def device_for(kind: str, seed: int = 0) -> PhysicalSystem:
    if kind in ("static", "oracle"):
        return RandomReservoir(3, 6, seed=seed)
    if kind == "energy":
        return HopfieldNetwork([6, 8, 4], gains=[1.2, 1.2], tolerance=1e-12, max_sweeps=5000, seed=seed)
    return time_domain_dnpu(None, fs=2000.0, bandwidth_hz=400.0, delay_s=5e-4, white_psd=1e-6, seed=1)


def batch_for(kind: str, device: PhysicalSystem, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if kind == "energy":
        return torch.rand(6, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (6,), generator=g)
    if kind == "waveform":
        lo, hi = (torch.as_tensor(b, dtype=torch.float32) for b in device.input_bounds())
        x = lo + (hi - lo) * (0.3 + 0.4 * torch.rand(4, *device.input_shape, generator=g))
    else:
        x = torch.rand(8, *device.input_shape, generator=g) * 2 - 1
    # a teacher: the device's own answer at other settings
    teacher = {n: lo + (hi - lo) * (0.3 + 0.4 * torch.rand(lo.shape, generator=g))
               for n, (lo, hi) in device.parameter_bounds().items()}
    with torch.no_grad():
        y = device.measure(teacher, x)[0]
    device.reset_counters()
    return x, y


def loss_of(kind: str, device, output, y):
    if kind == "energy":
        return device.nudging_cost(output, y)
    return torch.nn.functional.mse_loss(output, y)


def start_params(device: PhysicalSystem) -> dict[str, torch.nn.Parameter]:
    dtype = torch.float64 if isinstance(device, HopfieldNetwork) else torch.float32
    return {n: torch.nn.Parameter(v) for n, v in device.initial_parameters(dtype).items()}


def lab_step(method, device, kind, params, x, y, carrier):
    """The hand-written lab loop of one step: everything the device does goes through ``carrier``."""
    theta = {n: p.detach() for n, p in params.items()}
    if kind == "energy":
        probes = method.ask(theta, inputs=x, targets=y, system=device)
        answers = carrier(device, probes)
        estimate = method.tell(probes, answers)
        loss = loss_of(kind, device, method.free_output(probes, answers), y)
    else:
        out = carrier(device, Measurement({n: t.unsqueeze(0) for n, t in theta.items()}, x))[0]
        out.requires_grad_(True)
        loss = loss_of(kind, device, out, y)
        (cotangent,) = torch.autograd.grad(loss, out)
        probes = method.ask(theta, inputs=x, targets=y, bounds=device.parameter_bounds(x.dtype),
                            input_bounds=device.input_range, system=device, input_grad=False)
        answers = carrier(device, probes)
        estimate = method.tell(probes, answers, cotangent)
    for n, p in params.items():
        p.grad = estimate.grads[n].to(p.dtype).reshape(p.shape)
    return float(loss), estimate


LAB = {  # optimizer and steps per kind for the lab-loop test
    "static": (lambda ps: torch.optim.Adam(ps, lr=0.05), 40),
    "oracle": (lambda ps: torch.optim.Adam(ps, lr=0.05), 40),
    "energy": (lambda ps: torch.optim.SGD(ps, lr=0.5), 40),
    "waveform": (lambda ps: torch.optim.Adam(ps, lr=0.05), 25),
}


# ------------------------------------------------------------------------------ the registry
def test_the_registry_holds_the_eight_methods_with_kinds_options_and_defaults():
    assert set(EIGHT) <= set(method_names())
    for name in method_names():
        entry = method_entry(name)
        assert entry.kind in KINDS and entry.default_device and entry.default_dataset
        assert "seed" in entry.options
        entry.check_options(entry.defaults)
        method = make_method(name, **entry.defaults)
        assert method.kind == entry.kind or name == "hge"
        assert callable(method.carrier)
    assert method_entry("hge").kind == "waveform" and method_entry("eqprop").kind == "energy"
    assert method_entry("backprop").kind == "oracle" and method_entry("pgt").options["num_pairs"] is None  # None: the scope's shipped default
    with pytest.raises(ConfigError, match="num_pairs"):
        make_method("eqprop", num_pairs=3)
    with pytest.raises(ConfigError, match="choose one of"):
        method_entry("nope")


def test_the_first_release_make_method_still_works():
    assert legacy_make_method("pgt", "local", num_pairs=4, delta=1e-2).scope == "local"
    assert legacy_make_method("fd", "local", num_pairs=4, delta=1e-2).name == "fd"  # num_pairs ignored, as before
    assert legacy_make_method("backprop", "local", num_pairs=4, delta=1e-2, seed=1).scope == "global"
    assert legacy_make_method("spsa", "global", num_pairs=4).distribution == "rademacher"


def test_every_method_has_a_settable_carrier():
    for name in method_names():
        method = make_method(name, **small_options(name))
        counting = Counting()
        method.carrier = counting
        assert method.carrier is counting and isinstance(counting, Carrier)
        method.carrier = None
        assert isinstance(method.carrier, InProcess)
        with pytest.raises(ConfigError, match="callable"):
            method.carrier = 3


# ------------------------------------------------------------------------------ the lab loop, every method
@pytest.mark.parametrize("name", EIGHT)
def test_the_same_lab_loop_trains_every_registered_method(name):
    torch.manual_seed(0)
    kind = method_entry(name).kind
    device = device_for(kind)
    x, y = batch_for(kind, device)
    method = make_method(name, **small_options(name))
    params = start_params(device)
    make_opt, steps = LAB[kind]
    optimizer = make_opt(list(params.values()))
    carrier = Counting()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss, _ = lab_step(method, device, kind, params, x, y, carrier)
        optimizer.step()
        with torch.no_grad():  # the lab keeps its settings in range
            for n, (lo, hi) in device.parameter_bounds(next(iter(params.values())).dtype).items():
                params[n].copy_(torch.maximum(torch.minimum(params[n], hi), lo))
        losses.append(loss)
    assert losses[-1] < 0.7 * losses[0], (name, losses[0], losses[-1])
    if kind != "energy":  # an energy device's controllers also relax outside the phases (counted as time only)
        assert device.queries == carrier.queries  # every query went through the carrier


# ------------------------------------------------------------------------------ ask/tell == backward
def _model_for(kind: str, device):
    return EnergyModel(device) if kind == "energy" else PhysicalLayer(device)


@pytest.mark.parametrize("name", EIGHT)
def test_ask_tell_and_backward_give_the_same_estimate(name):
    kind = method_entry(name).kind
    options = small_options(name)
    dev_a, dev_b = device_for(kind), device_for(kind)
    x, y = batch_for(kind, dev_a)
    batch_for(kind, dev_b)  # the same draws on the twin device (and its noise generator)
    scope = {"scope": "local"} if "scope" in method_entry(name).options and name != "backprop" else {}
    a = make_method(name, **options, **scope)
    model = _model_for(kind, dev_a)
    if kind == "energy":
        model = model.double()
    a.backward(model, lambda out, t: loss_of(kind, dev_a, out, t), x, y)
    by_backward = {n: p.grad for n, p in model.named_parameters()}

    b = make_method(name, **options, **scope)
    params = start_params(dev_b)
    _, estimate = lab_step(b, dev_b, kind, params, x, y, b.carrier)
    for n, g in by_backward.items():
        key = n.split(".")[-1]
        assert torch.allclose(g.to(torch.float64), estimate.grads[key].to(torch.float64), rtol=1e-5, atol=1e-7), (name, n)
    assert a.last_cost == dev_a.cost
    # the lab loop measures the forward pass itself; backprop's backward gets it from the simulation
    extra = 1 if kind == "oracle" else 0
    assert dev_b.cost.queries == dev_a.cost.queries + extra


@pytest.mark.parametrize("name", ["pgt", "spsa", "es", "fd"])
def test_global_scope_ask_tell_by_hand_equals_backward(name):
    """The README's lab loop (one loss per setting) gives what backward gives, for the same seed."""
    def build():
        torch.manual_seed(0)
        return ReservoirNet(5, RandomReservoir(4, 6, seed=2), num_classes=3, seed=0)

    x, y = torch.rand(10, 5), torch.randint(0, 3, (10,))
    loss_fn = torch.nn.functional.cross_entropy
    model = build()
    method = make_method(name, **small_options(name), scope="global")
    method.backward(model, loss_fn, x, y)

    model_b = build()
    method_b = make_method(name, **small_options(name), scope="global")
    theta = {n: p.detach() for n, p in model_b.named_parameters()}
    probes = method_b.ask(theta, bounds=parameter_bounds(model_b))
    losses = NetworkLoss(model_b, loss_fn, x, y).measure(probes.params)   # "my rig measures"
    estimate = method_b.tell(probes, losses)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, estimate.grads[n], rtol=1e-5, atol=1e-7), n


# ------------------------------------------------------------------------------ ask is pure
TOUCH = ("measure", "simulate", "response", "measure_waveform", "relax", "set_parameters", "clamp_inputs",
         "hold_parameters", "read_output")


@pytest.mark.parametrize("name", EIGHT)
def test_ask_never_touches_the_device(name, monkeypatch):
    kind = method_entry(name).kind
    device = device_for(kind)
    x, y = batch_for(kind, device)
    before = (device.cost, device.state_dict()["generator"].clone())

    def touched(*args, **kwargs):
        raise AssertionError(f"{name}.ask touched the device")

    for what in TOUCH:
        if hasattr(device, what):
            monkeypatch.setattr(device, what, touched)
    method = make_method(name, **small_options(name))
    theta = {n: p.detach() for n, p in start_params(device).items()}
    probes = method.ask(theta, inputs=x, targets=y, bounds=device.parameter_bounds(x.dtype),
                        input_bounds=device.input_range, system=device, input_grad=False)
    assert isinstance(probes, Probes) or all(hasattr(probes, a) for a in ("answer", "count", "shard", "join"))
    assert probes.count >= 1
    assert device.cost == before[0] and torch.equal(device.state_dict()["generator"], before[1])


# ------------------------------------------------------------------------------ shard / join
@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 12), n=st.integers(1, 15), per_probe=st.booleans(), seed=st.integers(0, 1000))
def test_shard_join_keeps_pairs_together_and_the_order(k, n, per_probe, seed):
    method = PGT(num_pairs=k, delta=0.1, distribution="gaussian", seed=seed)
    theta = {"a": torch.randn(3), "b": torch.randn(2, 2)}
    x = torch.randn(2, 3)
    probes = method.ask(theta, x, input_grad=per_probe)
    parts = probes.shard(n)
    assert 1 <= len(parts) <= n and sum(p.count for p in parts) == probes.count

    def rows(p):  # a stand-in device answer: each setting's own numbers
        flat = torch.cat([v.reshape(v.shape[0], -1) for v in p.params.values()], 1)
        return flat if p.inputs is None or not per_probe else torch.cat([flat, p.inputs.reshape(p.count, -1)], 1)

    assert torch.equal(probes.join([rows(p) for p in parts]), rows(probes))
    for part in parts:  # each part holds whole ± pairs: plus row i and minus row i are θ ± δP_i
        half = part.count // 2
        plus, minus = part.params["a"][:half], part.params["a"][half:]
        assert torch.allclose(plus - minus, 2 * 0.1 * part.directions[:, :3], atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 9), n=st.integers(1, 12))
def test_measurement_shard_join_round_trip(k, n):
    device = RandomReservoir(3, 5, seed=1)
    params = {name: lo + (hi - lo) * torch.rand(k, *lo.shape) for name, (lo, hi) in device.parameter_bounds().items()}
    probes = Measurement(params, torch.rand(4, 3))
    whole = probes.answer(device)
    parts = probes.shard(n)
    assert torch.allclose(probes.join([p.answer(device) for p in parts]), whole, atol=1e-6)  # batched matmuls round
    assert device.queries == 2 * k


def test_carrier_in_parts_gives_the_same_estimate():
    device = RandomReservoir(3, 6, seed=0)
    x, y = batch_for("static", device)
    results = []
    for carrier in (InProcess(), InProcess(max_parts=3)):
        method = PGT(num_pairs=7, delta=1e-2, seed=5, carrier=carrier)
        params = start_params(device)
        results.append(lab_step(method, device, "static", params, x, y, method.carrier)[1].grads)
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])


def test_energy_probes_split_along_samples_only_while_parameters_are_held():
    from physgrad.methods import EqProp

    device = device_for("energy")
    x, y = batch_for("energy", device)
    theta = {n: p.detach() for n, p in start_params(device).items()}
    method = EqProp(beta=0.1)
    probes = method.ask(theta, x, y)
    parts = probes.shard(4)
    assert len(parts) == 4 and sum(p.inputs.shape[0] for p in parts) == x.shape[0]
    assert all(len(p.phases) == len(probes.phases) for p in parts)
    whole = method.tell(probes, probes.answer(device))
    before = device.cost
    split = method.tell(probes, probes.join([p.answer(device) for p in parts]))
    assert split.cost == device.cost - before and split.cost.queries == 4 * len(probes.phases)
    for n in whole.grads:
        assert torch.allclose(whole.grads[n], split.grads[n], rtol=1e-5, atol=1e-8), n
    assert Aeqprop(beta=0.1).ask(theta, x, y).shard(4)[0].inputs.shape[0] == x.shape[0]  # θ released: whole


# ------------------------------------------------------------------------------ cost == counted
@pytest.mark.parametrize("name", EIGHT)
def test_the_reported_cost_is_what_the_device_counted(name):
    kind = method_entry(name).kind
    device = device_for(kind)
    if kind in ("static", "oracle"):
        device.seconds_per_query = 0.25
    x, y = batch_for(kind, device)
    method = make_method(name, **small_options(name))
    theta = {n: p.detach() for n, p in start_params(device).items()}
    probes = method.ask(theta, inputs=x, targets=y, bounds=device.parameter_bounds(x.dtype),
                        input_bounds=device.input_range, system=device, input_grad=kind != "energy")
    before = device.cost
    answers = method.carrier(device, probes)
    cotangent = None
    if kind != "energy":
        cotangent = torch.ones(x.shape[0], *device.output_shape)
    estimate = method.tell(probes, answers, cotangent)
    assert estimate.cost == device.cost - before


def test_backward_cost_is_counted_for_every_scope():
    for scope in ("global", "local"):
        device = RandomReservoir(4, 6, seed=2)
        model = ReservoirNet(5, device, num_classes=3, seed=0)
        method = PGT(num_pairs=5, delta=1e-2, scope=scope)
        method.backward(model, torch.nn.functional.cross_entropy, torch.rand(7, 5), torch.randint(0, 3, (7,)))
        assert method.last_cost == device.cost == method.total_cost
        assert method.last_cost.queries == 2 * 5 + 1


# ------------------------------------------------------------------------------ one error policy
@pytest.mark.parametrize("name", EIGHT)
def test_a_non_finite_answer_is_a_measurement_error_in_every_method(name):
    kind = method_entry(name).kind
    device = device_for(kind)
    x, y = batch_for(kind, device)
    method = make_method(name, **small_options(name))
    theta = {n: p.detach() for n, p in start_params(device).items()}
    probes = method.ask(theta, inputs=x, targets=y, bounds=device.parameter_bounds(x.dtype),
                        input_bounds=device.input_range, system=device, input_grad=False)
    answers = method.carrier(device, probes)

    def poison(a):
        if isinstance(a, torch.Tensor):
            return a * float("nan")
        if isinstance(a, (list, tuple)):
            return type(a)(poison(v) for v in a)
        if isinstance(a, dict):
            return {k: (v if k in ("report", "cost") else poison(v)) for k, v in a.items()}
        return a

    cotangent = None if kind == "energy" else torch.ones(x.shape[0], *device.output_shape)
    with pytest.raises(MeasurementError, match="non-finite"):
        method.tell(probes, poison(answers), cotangent)


def test_an_answer_of_another_float_dtype_is_cast_and_a_non_float_one_refused():
    class Float64Driver(PhysicalSystem):
        def __init__(self, answer_dtype):
            super().__init__((2,), (1,), [ParameterSpec("w", (2,), -1.0, 1.0)])
            self.answer_dtype = answer_dtype

        def response(self, params, inputs):
            return (inputs * params["w"].unsqueeze(1)).sum(-1, keepdim=True).to(self.answer_dtype)

    out = Float64Driver(torch.float64).measure({"w": torch.ones(1, 2)}, torch.ones(3, 2))
    assert out.dtype == torch.float32
    model = torch.nn.Sequential(PhysicalLayer(Float64Driver(torch.float64)), torch.nn.Linear(1, 1))
    PGT(num_pairs=2, delta=1e-2, scope="local").backward(model, torch.nn.functional.mse_loss, torch.ones(3, 2), torch.zeros(3, 1))
    with pytest.raises(MeasurementError, match="torch.int64"):
        Float64Driver(torch.int64).measure({"w": torch.ones(1, 2)}, torch.ones(3, 2))


# ------------------------------------------------------------------------------ keeping parameters in range
def _drifting_setup():
    device = RandomReservoir(3, 4, seed=0)
    model = ReservoirNet(3, device, num_classes=2, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    return device, model, optimizer


def _push_out_of_range(model, optimizer):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.reservoir.params["gain"].grad = torch.full_like(model.reservoir.params["gain"], -100.0)  # gain in [0, 4]
    optimizer.step()


def test_keep_in_range_projects_after_every_step():
    device, model, optimizer = _drifting_setup()
    handle = keep_in_range(optimizer, model)
    _push_out_of_range(model, optimizer)
    assert float(model.reservoir.params["gain"]) == 4.0
    handle.remove()
    _push_out_of_range(model, optimizer)
    assert float(model.reservoir.params["gain"]) > 4.0


def test_backward_projects_device_parameters_so_model_and_device_agree():
    device, model, optimizer = _drifting_setup()
    _push_out_of_range(model, optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no clip warning: nothing reaches the guard out of range
        PGT(num_pairs=2, delta=1e-2, scope="local").backward(model, torch.nn.functional.cross_entropy,
                                                             torch.rand(4, 3), torch.randint(0, 2, (4,)))
    assert float(model.reservoir.params["gain"]) == 4.0 and device.guard.clipped == 0


def test_a_clipping_guard_warns_once_with_the_count():
    device = RandomReservoir(3, 4, seed=0)
    with pytest.warns(RuntimeWarning, match=r"clipped 1 value") as record:
        device.measure({"gain": torch.tensor([[9.0]]), "bias": torch.zeros(1, 4)}, torch.zeros(2, 3))
        device.measure({"gain": torch.tensor([[9.0]]), "bias": torch.zeros(1, 4)}, torch.zeros(2, 3))
    assert len([w for w in record if "clipped" in str(w.message)]) == 1 and device.guard.clipped == 2


# ------------------------------------------------------------------------------ identity, state, imports
def test_identity_is_stable_named_or_derived_from_the_schema():
    assert RandomReservoir(3, 4, seed=0).identity == RandomReservoir(3, 4, seed=0).identity
    assert RandomReservoir(3, 4).identity != RandomReservoir(3, 5).identity
    assert RandomReservoir(3, 4, name="rig-7").identity == "rig-7"
    from physgrad.systems.wrappers.base import CommandAudit

    inner = RandomReservoir(3, 4, name="rig-7")
    assert CommandAudit(inner).identity == "rig-7"
    code = "from physgrad.systems import RandomReservoir; print(RandomReservoir(3, 4).identity)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == RandomReservoir(3, 4).identity  # not id(): the same in another process


def test_aeqprop_step_reads_no_state_stashed_by_backward():
    device = device_for("energy")
    model = EnergyModel(device).double()
    x, y = batch_for("energy", device)
    method = Aeqprop(beta=0.1, epsilon=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method.step(model, model.loss, x, y)
    assert not any(k.startswith("_last") for k in vars(method))
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_import_physgrad_does_not_import_zmq():
    code = "import physgrad, physgrad.methods.registry, physgrad.carriers, sys; assert 'zmq' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_positional_bounds_of_the_first_release_fail_with_what_to_change():
    method = PGT(num_pairs=2)
    with pytest.raises(TypeError, match="bounds=..."):
        method.ask({"w": torch.zeros(2)}, torch.zeros(1, 2), {"w": (torch.zeros(2), torch.ones(2))})
    assert Cost() == Cost(0, 0, 0.0)
