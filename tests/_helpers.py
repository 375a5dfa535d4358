"""Shared helpers of the core tests: a tiny float64 hybrid net and its exact gradient."""

import torch


def small_net(dtype=torch.float64, noise=None, inputs=6, size=12, features=5, classes=3):
    """A tiny ReservoirNet (digital → reservoir → digital) in float64 for estimator tests."""
    from physgrad import RandomReservoir, ReservoirNet

    kwargs = {} if noise is None else {"noise": noise}
    model = ReservoirNet(features, RandomReservoir(inputs, size, seed=3, **kwargs), classes, seed=0).to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, features, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (16,), generator=g)
    return model, x, y


def flat_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def estimate(method, model, x, y):
    """The flat gradient ``method.backward`` fills for cross-entropy at ``(x, y)`` (``p.grad`` left cleared)."""
    import torch.nn.functional as F

    model.zero_grad()
    method.backward(model, F.cross_entropy, x, y)
    g = flat_grad(model).clone()
    model.zero_grad()
    return g


def exact_grad(model, x, y):
    from physgrad import Backprop

    return estimate(Backprop(), model, x, y)


def rel(a, b):
    """Relative error ``‖a − b‖ / ‖b‖``."""
    return float((a - b).norm() / b.norm())


def run_benchmark_main(module, tmp_path, *extra: str) -> dict:
    """Run a benchmark's ``main()`` in-process on its ``--quick`` path; check the JSON it wrote equals what it
    returned and that it drew a non-empty plot; return the figures."""
    import json

    import pytest

    out = tmp_path / "figures.json"
    figures = module.main(["--quick", "--threads", "1", "--out", str(out), "--plot", str(tmp_path / "plot.png"), *extra])
    written = json.loads(out.read_text())
    assert written == pytest.approx(figures)
    assert (tmp_path / "plot.png").stat().st_size > 0
    return written


def assert_energy_model_learns_digits(model, update, epochs=4, n=640, batch=32):
    """Train an ``EnergyModel`` on the first ``n`` digits with ``update(x, y)`` per batch (fixed order).

    Asserts the test loss fell below 0.7× its start and the test accuracy beats chance (0.1) by a
    clear margin (> 0.6).
    """
    from physgrad.data import load_dataset

    data = load_dataset("digits")
    x, y = data.x_train[:n], data.y_train[:n]
    with torch.no_grad():
        before = float(model.loss(model(data.x_test), data.y_test))
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            update(x[idx], y[idx])
    with torch.no_grad():
        out = model(data.x_test)
    assert float(model.loss(out, data.y_test)) < 0.7 * before
    assert float((out.argmax(1) == data.y_test).float().mean()) > 0.6
