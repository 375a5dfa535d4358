"""Learned twins, PAT and twin-guided perturbation (issue 16, part 1).

Estimators are judged against the exact gradient (autograd through the differentiable simulator)
by relative error of the mean of many estimates, on every parameter group.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers import estimate, exact_grad, flat_grad, rel, small_net
from physgrad import RandomReservoir
from physgrad.cost import Cost
from physgrad.errors import ConfigError, MeasurementError, ShapeError
from physgrad.methods.twin import PAT, Twin, TwinGuidedPGT
from physgrad.models import ReservoirNet
from physgrad.training import Trainer


def estimated_part(model, g):
    """The coordinates a local method estimates (encoder and device; the read-out is exact autograd)."""
    parts, offset = [], 0
    for name, p in model.named_parameters():
        if not name.startswith("readout"):
            parts.append(g[offset : offset + p.numel()])
        offset += p.numel()
    return torch.cat(parts)


def fitted(system, queries=48, seed=0, inputs=None, **options):
    """A twin fitted on dedicated samples of ``system`` around its default setting."""
    twin = Twin(system, seed=seed, hidden=(64, 64), max_steps=800, max_epochs=200, patience=20, **options)
    g = torch.Generator().manual_seed(seed)
    x = inputs if inputs is not None else torch.randn(16, *system.input_shape, generator=g, dtype=torch.float64)
    twin.sample(system, queries, system.initial_parameters(torch.float64), x)
    twin.fit()
    return twin


class PerfectTwin(Twin):
    """A test-only twin that *is* the simulator (to check PAT's plumbing, not to learn anything)."""

    def __init__(self, system, **kw):
        super().__init__(system, **kw)
        self.system = system
        self.fits = 1

    def _predict_flat(self, theta, x):
        params = self._unflatten(theta, dtype=theta.dtype)
        k = theta.shape[0]
        return torch.stack([self.system.response({n: v[i : i + 1] for n, v in params.items()}, x[i : i + 1].unsqueeze(0))[0, 0]
                            for i in range(k)]).reshape(k, -1)


def layer_inputs(model, x):
    with torch.no_grad():
        return model.encoder(x)


# ------------------------------------------------------------------------------------ the twin
def test_twin_error_falls_with_more_data():
    system = RandomReservoir(6, 12, seed=3)
    few = fitted(system, queries=2)
    many = fitted(system, queries=64)
    assert many.heldout_error < 0.5 * few.heldout_error
    assert many.heldout_error < 0.15
    assert many.history[-1]["heldout_error"] == many.heldout_error
    assert many.sampled_queries == 64 and many.rows == 64 * 16


def test_twin_never_reads_the_simulator():
    system = RandomReservoir(6, 12, seed=3)
    twin = Twin(system)
    assert not any(torch.is_tensor(v) and v.data_ptr() == system._w_in.data_ptr() for v in vars(twin).values())
    before = system.queries
    twin.predict(system.initial_parameters(), torch.zeros(2, 6))
    assert system.queries == before  # predicting costs no query


def test_refit_rule_growth_and_drift():
    system = RandomReservoir(6, 12, seed=3)
    twin = fitted(system, queries=8, refit_growth=10.0, min_new_rows=16)
    assert not twin.needs_fit()
    # a jump to a setting far from the data: the drift monitor asks for a refit
    far = {"gain": torch.tensor([3.5]), "bias": torch.full((12,), 1.8)}
    x = torch.randn(16, 6)
    out = system.measure(far, x)[0]
    twin.observe(far, x, out, forward=True)
    assert twin.drift_error > twin.refit_tolerance * twin.heldout_error
    assert twin.needs_fit()
    twin.fit()
    assert twin.fits == 2 and not twin.needs_fit()


def test_twin_bad_input_is_refused():
    system = RandomReservoir(6, 12, seed=3)
    twin = Twin(system)
    with pytest.raises(ConfigError, match="no data"):
        twin.fit()
    with pytest.raises(ShapeError):
        twin.observe(system.initial_parameters(), torch.zeros(4, 6), torch.zeros(3, 12))
    with pytest.raises(ConfigError):
        Twin(system, holdout=1.5)
    with pytest.raises(ConfigError, match="not been fitted"):
        model, x, y = small_net()
        estimate(PAT(twin=Twin(model.reservoir.system), learn=False), model, x, y)


# ------------------------------------------------------------------------------------ PAT
def test_pat_with_a_perfect_twin_is_the_exact_gradient():
    model, x, y = small_net()
    g = exact_grad(model, x, y)
    est = estimate(PAT(twin=PerfectTwin(model.reservoir.system), learn=False), model, x, y)
    assert rel(est, g) < 1e-5


# ------------------------------------------------------------------------------------ wrong twin
@pytest.fixture(scope="module")
def wrong_twin_setup():
    torch.manual_seed(0)
    model, x, y = small_net()
    other = RandomReservoir(6, 12, seed=44)  # another device of the same kind
    wrong = fitted(other, queries=48, seed=1, inputs=layer_inputs(model, x))
    return model, x, y, wrong


def test_control_variate_is_unbiased_with_a_wrong_twin_and_pat_is_not(wrong_twin_setup):
    model, x, y, wrong = wrong_twin_setup
    g = exact_grad(model, x, y)
    ge = estimated_part(model, g)
    pat = estimated_part(model, estimate(PAT(twin=wrong, learn=False), model, x, y))
    assert rel(pat, ge) > 0.3  # PAT inherits the twin's error: biased
    method = TwinGuidedPGT(8, 1e-4, coef=1.0, twin=wrong, learn=False, seed=2)
    n = 300
    mean = sum(estimate(method, model, x, y) for _ in range(n)) / n
    assert rel(estimated_part(model, mean), ge) < 0.15
    assert rel(mean, g) < 0.1


@pytest.mark.parametrize("options", [dict(alpha=0.5, control_variate=False), dict(correction_prob=0.5), dict(coef="auto", alpha=0.7)])
def test_guided_and_randomised_corrections_stay_unbiased(wrong_twin_setup, options):
    model, x, y, wrong = wrong_twin_setup
    g = exact_grad(model, x, y)
    ge = estimated_part(model, g)
    method = TwinGuidedPGT(8, 1e-4, twin=wrong, learn=False, seed=3, **options)
    n = 400
    mean = sum(estimate(method, model, x, y) for _ in range(n)) / n
    assert rel(estimated_part(model, mean), ge) < 0.25, options


def test_a_good_twin_cuts_the_variance_and_auto_coefficients_follow_the_twin(wrong_twin_setup):
    model, x, y, wrong = wrong_twin_setup
    g = estimated_part(model, exact_grad(model, x, y))
    perfect = PerfectTwin(model.reservoir.system)

    def rms(method, n=40):
        return math.sqrt(sum(rel(estimated_part(model, estimate(method, model, x, y)), g) ** 2 for _ in range(n)) / n)

    good = TwinGuidedPGT(4, 1e-4, twin=perfect, learn=False, seed=1)
    plain = TwinGuidedPGT(4, 1e-4, control_variate=False, twin=perfect, learn=False, seed=1)
    assert rms(good) < 0.05 * rms(plain)
    assert min(good.last_coef) > 0.9
    bad = TwinGuidedPGT(4, 1e-4, twin=wrong, learn=False, seed=1)
    rms(bad)
    assert min(bad.last_coef) < 0.5


# ------------------------------------------------------------------------------------ cost
@pytest.mark.parametrize("make, per_step", [(lambda: PAT(warmup_queries=10, twin_options={"hidden": (16,)}), 1),
                                            (lambda: TwinGuidedPGT(3, 1e-3, warmup_queries=10, twin_options={"hidden": (16,)}), 7)])
def test_cost_counts_every_query_including_twin_data(make, per_step):
    model, x, y = small_net()
    system = model.reservoir.system
    method = make()
    before = system.queries
    estimate(method, model, x, y)
    assert method.last_cost.queries == system.queries - before == per_step + 10
    assert method.twin_queries == 10
    before = system.queries
    estimate(method, model, x, y)
    assert method.last_cost.queries == system.queries - before == per_step + method.twin_queries - 10
    assert method.total_cost.queries == system.queries


def test_trainer_runs_and_counts(tmp_path):
    torch.manual_seed(0)
    model = ReservoirNet(5, RandomReservoir(6, 12, seed=3), 3, seed=0)
    from physgrad.data.datasets import Dataset

    g = torch.Generator().manual_seed(0)
    xs = torch.randn(64, 5, generator=g)
    ys = (xs[:, 0] > 0).long() + (xs[:, 1] > 0.5).long()
    data = Dataset("toy", xs[:48], ys[:48], xs[48:], ys[48:], 3, None)
    method = PAT(warmup_queries=4, refit_queries=2, twin_options={"hidden": (32,), "min_new_rows": 32})
    trainer = Trainer(model, method, torch.optim.Adam(model.parameters(), 1e-2), batch_size=16, progress=False)
    records = trainer.fit(data, 2)
    assert records[-1]["queries"] == method.total_cost.queries
    assert method.total_cost.queries == 6 + method.twin_queries  # 6 forward passes + twin data
    assert math.isfinite(records[-1]["loss"])


def test_a_nan_measurement_is_a_measurement_error_and_grads_are_kept():
    from physgrad.systems.noise import MeasurementNoise  # noqa: F401

    model, x, y = small_net()
    method = TwinGuidedPGT(2, 1e-3, twin=PerfectTwin(model.reservoir.system), learn=False)
    system = model.reservoir.system
    real = system.response
    calls = {"n": 0}

    def flaky(params, inputs):
        calls["n"] += 1
        out = real(params, inputs)
        return out * float("nan") if calls["n"] > 1 else out

    system.response = flaky
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(MeasurementError):
        method.backward(model, F.cross_entropy, x, y)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())


def test_state_dict_round_trip_resumes_exactly():
    model, x, y = small_net()
    a = TwinGuidedPGT(2, 1e-3, warmup_queries=4, seed=1, twin_options={"hidden": (16,)})
    estimate(a, model, x, y)
    state = a.state_dict()
    b = TwinGuidedPGT(2, 1e-3, warmup_queries=4, seed=9, twin_options={"hidden": (16,)})
    b.load_state_dict(state)
    ea, eb = estimate(a, model, x, y), estimate(b, model, x, y)
    assert torch.allclose(ea, eb, atol=1e-6)


# ------------------------------------------------------------------------------------ ask / tell (issue 10)
TINY = {"hidden": (16,), "min_new_rows": 24}
MAKERS = {
    "pat": lambda c=None: PAT(warmup_queries=6, refit_queries=3, twin_options=TINY, seed=1, carrier=c),
    "twin_cv": lambda c=None: TwinGuidedPGT(2, 1e-3, correction_prob=0.5, warmup_queries=6, refit_queries=3,
                                            twin_options=TINY, seed=2, carrier=c),
    "twin_guided": lambda c=None: TwinGuidedPGT(2, 1e-3, alpha=0.5, control_variate=False, warmup_queries=6,
                                                refit_queries=3, twin_options=TINY, seed=3, carrier=c),
}


def layer_point(model, x, y):
    """The reservoir's measured point in the net: setting, inputs, the measured output, the cotangent."""
    system = model.reservoir.system
    params = {n: p.detach() for n, p in model.reservoir.device_parameters().items()}
    h = layer_inputs(model, x)
    out = system.measure({n: p.unsqueeze(0) for n, p in params.items()}, h)[0].requires_grad_(True)
    (v,) = torch.autograd.grad(F.cross_entropy(model.readout(out), y), out)
    return system, params, h, out.detach(), v


def by_hand(method, system, params, h, v, carrier, outputs=None, cotangent=None):
    """The lab loop: ask (pure) → the carrier → tell, returning the estimate and what the device counted."""
    probes = method.ask(params, h, system=system, bounds=system.parameter_bounds(h.dtype), input_bounds=system.input_range,
                        outputs=outputs, cotangent=cotangent)
    before = system.cost
    estimate = method.tell(probes, carrier(system, probes), v)
    return probes, estimate, system.cost - before


@pytest.mark.parametrize("name", list(MAKERS))
def test_ask_tell_by_hand_equals_the_layer_vjp_and_a_sharding_carrier_changes_nothing(name):
    """Three runs of five steps (refits included): the layer's vjp (forward measured by the layer), ask/tell by
    hand with the forward pass among the probes, and the same through ``InProcess(max_parts=2)``."""
    from physgrad.carriers import InProcess

    runs = []
    for carrier in ("vjp", InProcess(), InProcess(max_parts=2)):
        model, x, y = small_net()
        model.reservoir.system.seconds_per_query = 0.25
        method = MAKERS[name]()
        steps = []
        for step in range(5):
            xb, yb = x[step : step + 12], y[step : step + 12]
            system, params, h, out, v = layer_point(model, xb, yb)
            if carrier == "vjp":
                before = system.cost
                gx, grads = method.vjp(system, params, h, out, v)
                counted = system.cost - before
            else:
                guide = v if name == "twin_guided" else None  # the layer's vjp knows the cotangent at ask
                probes, est, counted = by_hand(method, system, params, h, v, carrier, cotangent=guide)
                assert est.cost == counted and counted.queries == probes.count  # exactly what the device counted
                assert probes.count >= 1 and probes.plan.outputs is None  # the forward pass is one of the probes
                gx, grads = est.input_grad, est.grads
                counted = counted - Cost(1, h.shape[0], 0.25)  # less the forward query (the layer measured it)
            steps.append((gx, grads, counted))
            with torch.no_grad():  # move the setting, as training does
                for p in model.reservoir.device_parameters().values():
                    p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(step), dtype=p.dtype))
                model.reservoir.clamp_()
        runs.append((steps, method.twin_queries))
    (ref, tq0), *others = runs
    assert tq0 > 6  # a refit took dedicated samples
    for steps, tq in others:
        assert tq == tq0
        for (gx0, g0, c0), (gx1, g1, c1) in zip(ref, steps):
            assert c0.queries == c1.queries
            assert torch.allclose(gx0, gx1, rtol=1e-6, atol=1e-9)
            assert all(torch.allclose(g0[n], g1[n], rtol=1e-6, atol=1e-9) for n in g0)


def test_pat_is_the_twin_refitted_on_the_step_s_data_at_the_measured_point():
    """PAT's estimate, written out by hand: the twin observes the forward pass, takes its warm-up samples, is
    fitted, and its VJP at the measured point is the estimate (the algorithm before ask/tell, for a fixed seed)."""
    model, x, y = small_net()
    system, params, h, out, v = layer_point(model, x, y)
    method = PAT(warmup_queries=6, twin_options=TINY, seed=1)
    probes, est, counted = by_hand(method, system, params, h, v, method.carrier, outputs=out)
    assert probes.count == 6 and est.cost == counted

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(1)))
    other = small_net()[0].reservoir.system  # an identical device answers the reference's samples
    twin = Twin(other, seed=seed, **TINY)
    twin.observe(params, h, out, forward=True)
    twin.sample(other, 6, params, h)
    twin.fit()
    gx, grads = twin.vjp(params, h, v)
    assert torch.allclose(est.input_grad, gx.to(h.dtype), rtol=1e-6, atol=1e-10)
    assert all(torch.allclose(est.grads[n], grads[n].to(est.grads[n].dtype), rtol=1e-6, atol=1e-10) for n in grads)


def test_ask_is_pure_even_on_a_refit_step(monkeypatch):
    model, x, y = small_net()
    system, params, h, out, v = layer_point(model, x, y)
    method = MAKERS["twin_cv"]()
    for what in ("measure", "simulate", "response"):
        monkeypatch.setattr(system, what, lambda *a, **k: (_ for _ in ()).throw(AssertionError("ask touched the device")))
    before = system.cost
    probes = method.ask(params, h, system=system)
    assert system.cost == before and probes.plan.fit and probes.plan.sample_rows == 6
    twin = method.twins[system.identity]
    assert twin.rows == 0 and twin.fits == 0  # nothing observed, nothing fitted before tell


@pytest.mark.parametrize("n", [1, 2, 3, 5, 40])
def test_twin_probes_shard_on_unit_boundaries_and_join_in_order(n):
    model, x, y = small_net()
    system, params, h, out, v = layer_point(model, x, y)
    method = TwinGuidedPGT(4, 1e-3, warmup_queries=3, twin_options=TINY, seed=0)
    probes = method.ask(params, h, system=system)
    assert probes.units == (1, 1, 1, 1, 2, 2, 2, 2) and probes.count == 12  # forward, 3 samples, 4 ± pairs
    parts = probes.shard(n)
    assert 1 <= len(parts) <= n and sum(p.count for p in parts) == probes.count
    first = [0]
    for p in parts:
        first.append(first[-1] + p.count)
    pair_starts = {4, 6, 8, 10}
    assert all(b in pair_starts or b <= 4 or b == 12 for b in first)  # no part boundary inside a ± pair
    whole = probes.answer(system)
    assert torch.allclose(probes.join([p.answer(system) for p in parts]), whole, rtol=1e-12, atol=1e-12)
    plus, minus = probes.params["gain"][4::2], probes.params["gain"][5::2]
    assert torch.allclose(plus - minus, 2e-3 * probes.plan.extra["pt"][:, :1], atol=1e-12)  # rows: +, − of each pair


def test_tell_refuses_shards_missing_cotangents_and_wrong_answers():
    model, x, y = small_net()
    system, params, h, out, v = layer_point(model, x, y)
    method = MAKERS["twin_cv"]()
    probes = method.ask(params, h, system=system)
    answers = probes.answer(system)
    with pytest.raises(ConfigError, match="not a shard"):
        method.tell(probes.shard(2)[0], answers, v)
    with pytest.raises(ShapeError, match="cotangent"):
        method.tell(probes, answers)
    with pytest.raises(ShapeError, match="expects answers of shape"):
        method.tell(probes, answers[1:], v)
    with pytest.raises(MeasurementError, match="non-finite"):
        method.tell(probes, answers * float("nan"), v)
    with pytest.raises(ConfigError, match="system="):
        method.ask(params, h)


def test_registered_twin_methods_train_from_the_registry():
    from physgrad.methods.registry import make_method, method_entry

    for name in ("pat", "twin_cv", "twin_guided"):
        entry = method_entry(name)
        assert entry.kind == "static" and entry.default_device == "reservoir" and entry.default_dataset == "digits"
        method = make_method(name, seed=1, twin_options=TINY)
        assert method.name == name
        model, x, y = small_net()
        before = model.reservoir.system.cost
        method.backward(model, F.cross_entropy, x, y)
        assert method.last_cost == model.reservoir.system.cost - before and method.twin_queries == 32


def test_quick_benchmark_writes_its_contract(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "twin.json"
    cmd = [sys.executable, "-m", "benchmarks.twin", "--quick", "--threads", "1", "--out", str(out), "--plot", str(tmp_path / "p.png")]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|" in done.stdout
    figures = json.loads(out.read_text())
    assert isinstance(figures["ratio_twin_to_backprop"], float) and figures["ratio_twin_to_backprop"] > 0
    for key in ("guided_wrong_twin_cosine", "pat_wrong_twin_cosine"):
        assert -1.0 <= figures[key] <= 1.0, key
    assert figures["pat_queries_total"] > figures["pat_twin_queries"] > 0  # twin data is in the cost
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_quick_benchmark_trains_on_fashion_mnist_files(tmp_path):
    """``--dataset fashion-mnist`` reads the IDX files through load_dataset (here: small fake ones given by
    $PHYSGRAD_DATA, so the test needs no download) and widens only the encoder to 784 inputs."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from physgrad.data.datasets import IDX_FILES

    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (40, 28, 28)), rng.integers(0, 10, 40), rng.integers(0, 256, (20, 28, 28)),
              rng.integers(0, 10, 20)]
    for stem, a in zip(IDX_FILES, arrays):
        header = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
        (folder / stem).write_bytes(header + a.astype(np.uint8).tobytes())
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "fashion.json"
    cmd = [sys.executable, "-m", "benchmarks.twin", "--quick", "--threads", "1", "--dataset", "fashion-mnist",
           "--parts", "training", "--methods", "backprop,pat", "--epochs", "1", "--out", str(out),
           "--plot", str(tmp_path / "f.png")]
    env = dict(os.environ, PHYSGRAD_DATA=str(tmp_path / "data"))
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["dataset"] == "fashion-mnist" and figures["input_features"] == 784
    assert (figures["train_samples"], figures["test_samples"]) == (40, 20)
    assert figures["pat_queries_total"] > figures["pat_twin_queries"] > 0
    assert figures["backprop_queries_total"] == 2  # one query per step: 40 images in batches of 32


def test_quick_benchmark_trains_a_synthetic_dnpu_on_the_sphere_task(tmp_path):
    """``--network dnpu``: hge_sphere's task on the synthetic DNPU; the twin's data is counted in the cost."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "dnpu.json"
    cmd = [sys.executable, "-m", "benchmarks.twin", "--quick", "--threads", "1", "--network", "dnpu", "--parts", "training",
           "--methods", "backprop,twin_cv", "--epochs", "1", "--out", str(out), "--plot", str(tmp_path / "d.png")]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert (figures["network"], figures["dataset"], figures["input_features"]) == ("dnpu", "sphere", 3)
    assert figures["dnpu_device"] == "synthetic-0"
    assert (figures["train_samples"], figures["test_samples"]) == (64, 256)
    assert figures["backprop_queries_total"] == 2  # 64 points in batches of 32: one query per step
    assert figures["twin_cv_queries_total"] > figures["twin_cv_twin_queries"] >= 32  # the 32 warm-up queries count


def test_pgt_variance_benchmark_runs(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "v.json"
    cmd = [sys.executable, "-m", "benchmarks.pgt_variance", "--quick", "--threads", "1", "--repeats", "1", "--warmup", "1",
           "--pairs", "16", "--out", str(out), "--plot", str(tmp_path / "v.png")]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    for setting in ("paper", "orthogonal", "tensor_scale_auto", "low_rank_1", "reuse_1", "all"):
        assert -1.0 <= figures[f"dense_{setting}_cosine"] <= 1.0
