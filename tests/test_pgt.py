import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from _helpers import estimate, exact_grad, flat_grad, small_net
from physgrad import PGT, PhysicalLayer, RandomReservoir
from physgrad.errors import ConfigError, MeasurementError, NonFiniteGradientError, RangeError
from physgrad.models import parameter_bounds


def cosine(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


@pytest.mark.parametrize("scope", ["global", "local"])
def test_many_pairs_converge_to_the_exact_gradient(scope):
    model, x, y = small_net()
    g = exact_grad(model, x, y)
    est = estimate(PGT(4000, 1e-4, scope=scope, seed=1), model, x, y)
    assert cosine(est, g) > 0.97
    assert float((est - g).norm() / g.norm()) < 0.25


@pytest.mark.parametrize("distribution", ["integer", "rademacher", "gaussian"])
def test_error_shrinks_like_one_over_sqrt_k(distribution):
    model, x, y = small_net()
    g = exact_grad(model, x, y)

    def rms_error(k):
        errs = [float((estimate(PGT(k, 1e-4, distribution=distribution, seed=s), model, x, y) - g).norm()) for s in range(12)]
        return math.sqrt(sum(e * e for e in errs) / len(errs))

    ratio = rms_error(16) / rms_error(256)  # theory: sqrt(256 / 16) = 4
    assert 2.8 < ratio < 5.7


@pytest.mark.parametrize("distribution, r, dropout", [("integer", 1, 0.0), ("integer", 3, 0.5), ("rademacher", 1, 0.25), ("gaussian", 1, 0.0)])
def test_normalisation_is_the_second_moment_of_the_perturbation(distribution, r, dropout):
    m = PGT(distribution=distribution, r=r, dropout=dropout)
    p = m.sample((400_000,))
    assert float(p.pow(2).mean()) == pytest.approx(m.second_moment, rel=0.02)
    assert abs(float(p.mean())) < 0.01
    if distribution == "integer":
        assert torch.equal(p, p.round()) and p.abs().max() <= r


def test_spsa_and_es_are_settings_of_pgt():
    spsa, es = PGT.spsa(4), PGT.es(4)
    assert spsa.distribution == "rademacher" and spsa.name == "spsa"
    assert es.distribution == "gaussian" and es.name == "es"
    assert set(spsa.sample((1000,)).unique().tolist()) == {-1.0, 1.0}


def test_ask_tell_gives_the_same_gradient_as_backward():
    model, x, y = small_net()
    via_backward = estimate(PGT(8, 1e-3, seed=7), model, x, y)
    method = PGT(8, 1e-3, seed=7)
    theta = {n: p.detach() for n, p in model.named_parameters()}
    probes = method.ask(theta, bounds=parameter_bounds(model))
    with torch.no_grad():
        losses = torch.stack(
            [F.cross_entropy(functional_call(model, {n: v[i] for n, v in probes.params.items()}, (x,)), y) for i in range(probes.count)]
        )
    est = method.tell(probes, losses)
    via_tell = torch.cat([est.grads[n].reshape(-1) for n in theta])
    assert torch.allclose(via_tell, via_backward, atol=1e-10)
    assert est.cost.queries == 16


def test_probes_stay_in_range_at_the_bounds():
    dev = RandomReservoir(4, 6, guard="refuse")  # any out-of-range probe would raise
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), PhysicalLayer(dev), torch.nn.Linear(6, 2))
    with torch.no_grad():
        model[1].params["gain"].fill_(4.0)  # on the upper bound
        model[1].params["bias"].fill_(-2.0)  # on the lower bound
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    for scope in ("global", "local"):
        model.zero_grad()
        PGT(16, 0.05, r=2, scope=scope).backward(model, F.cross_entropy, x, y)
        assert torch.isfinite(model[1].params["gain"].grad).all()
    with pytest.raises(RangeError, match="exceeds half the safe range"):
        PGT(4, 1.5, r=2).backward(model, F.cross_entropy, x, y)


def test_cost_is_two_queries_per_pair_plus_one():
    model, x, y = small_net()
    for scope in ("global", "local"):
        m = PGT(5, 1e-3, scope=scope)
        m.backward(model, F.cross_entropy, x, y)
        assert m.last_cost.queries == 11 and m.last_cost.samples == 11 * len(y)
    assert m.total_cost.queries == 11


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_pairs": 0}, "num_pairs"), ({"distribution": "cauchy"}, "distribution"), ({"dropout": 1.0}, "dropout"),
     ({"delta": -1.0}, "delta"), ({"r": 0}, "r must"), ({"scope": "galactic"}, "scope")],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PGT(**kwargs)


def test_a_nan_estimate_is_never_applied():
    model, x, y = small_net()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    calls = {"n": 0}

    def nan_loss(out, target):
        calls["n"] += 1
        return F.cross_entropy(out, target) * float("nan")

    with pytest.raises((NonFiniteGradientError, MeasurementError), match="non-finite"):
        PGT(4, 1e-3).backward(model, nan_loss, x, y)
    assert calls["n"] > 0
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())


def test_a_nan_measurement_stops_the_local_estimate_and_keeps_grads():
    model, x, y = small_net()
    dev = model.reservoir.system
    real = dev.response

    def broken(params, inputs):
        out = real(params, inputs)
        if out.shape[0] > 1:  # the perturbed probes
            out = out.clone()
            out[1, 0, 0] = float("nan")
        return out

    dev.response = broken
    with pytest.raises(MeasurementError, match="non-finite"):
        PGT(4, 1e-3, scope="local").backward(model, F.cross_entropy, x, y)
    assert all(p.grad is None for p in model.parameters())


def test_looped_and_vectorised_evaluation_agree():
    model, x, y = small_net()
    for scope in ("global", "local"):
        a = estimate(PGT(6, 1e-3, scope=scope, seed=3), model, x, y)
        b = estimate(PGT(6, 1e-3, scope=scope, seed=3, vectorize=False), model, x, y)
        assert torch.allclose(a, b, atol=1e-10)


def test_chunked_probes_are_the_same_estimator():
    model, x, y = small_net()
    g = exact_grad(model, x, y)
    m = PGT(4000, 1e-4, seed=2, max_probes=700)
    m.backward(model, F.cross_entropy, x, y)
    assert cosine(flat_grad(model), g) > 0.97
    assert m.last_cost.queries == 8001


def test_constructor_defaults_are_the_shipped_defaults_by_scope():
    """PGT(), PGT.spsa(), PGT.es() and FiniteDifference() take K and δ from DEFAULTS by their scope."""
    from physgrad.methods.defaults import DEFAULTS
    from physgrad.methods.perturbation.finite_difference import FiniteDifference

    for make in (PGT, PGT.spsa, PGT.es):
        for scope in ("global", "local"):
            m = make(scope=scope) if make is not PGT or scope == "local" else make()
            assert m.scope == scope
            assert (m.num_pairs, m.delta) == (DEFAULTS[scope]["num_pairs"], DEFAULTS[scope]["delta"])
    assert PGT(16).num_pairs == 16 and PGT(delta=1e-4).delta == 1e-4
    assert FiniteDifference().delta == FiniteDifference(scope="local").delta == DEFAULTS["global"]["delta"]
    # the default K is what a step costs: 2K pairs + the loss at θ (global)
    model, x, y = small_net()
    m = PGT()
    m.backward(model, F.cross_entropy, x, y)
    assert m.last_cost.queries == 2 * DEFAULTS["global"]["num_pairs"] + 1
