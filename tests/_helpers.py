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


def exact_grad(model, x, y):
    from physgrad import Backprop
    import torch.nn.functional as F

    model.zero_grad()
    Backprop().backward(model, F.cross_entropy, x, y)
    g = flat_grad(model).clone()
    model.zero_grad()
    return g
