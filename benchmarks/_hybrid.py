"""The hybrid network and data the PGT benchmarks share (issue 2, "Benchmarks").

One place builds the PGT paper's dense network with a reservoir layer —
``Linear(features → reservoir inputs) → RandomReservoir(reservoir inputs, width) → Linear(width → classes)``
— so the fidelity, training and vectorisation benchmarks measure the same model, and one place
carves a validation split out of the *training* data (hyper-parameters are chosen on it, never on
the test set).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from physgrad.data.datasets import Dataset
from physgrad.methods.base import GradientMethod
from physgrad.models import ReservoirNet
from physgrad.systems import RandomReservoir

RESERVOIR_INPUTS = 32
RESERVOIR_WIDTH = 256


def hybrid_net(
    in_features: int,
    num_classes: int = 10,
    *,
    reservoir_inputs: int = RESERVOIR_INPUTS,
    width: int = RESERVOIR_WIDTH,
    seed: int = 0,
) -> ReservoirNet:
    """Digital encoder → ``RandomReservoir(reservoir_inputs, width)`` → digital read-out, seeded."""
    return ReservoirNet(in_features, RandomReservoir(reservoir_inputs, width, seed=seed), num_classes, seed=seed)


def num_parameters(model: torch.nn.Module) -> int:
    """Trainable parameter count ``D`` (what the global scope perturbs)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flat_gradient(model: torch.nn.Module, method: GradientMethod, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One gradient (estimate) of the cross-entropy at ``(x, y)`` by ``method``, flattened over all parameters.

    The model's ``.grad`` are reset first, so the result is this one estimate alone.
    """
    model.zero_grad(set_to_none=True)
    method.backward(model, F.cross_entropy, x, y)
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def validation_split(data: Dataset, fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A Dataset whose "test" part is a seeded ``fraction`` of the training data (for sweeps)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.y_train), generator=g)
    n_val = int(round(fraction * len(idx)))
    val, train = idx[:n_val], idx[n_val:]
    return Dataset(
        f"{data.name}-validation",
        data.x_train[train],
        data.y_train[train],
        data.x_train[val],
        data.y_train[val],
        data.num_classes,
        data.image_shape,
    )


def interleaved_times(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, tuple[float, float]]:
    """``{name: (min, median)}`` wall seconds of each ``fn()`` over ``repeats`` rounds.

    The functions run in turn within each round, so a burst of load from other processes on a
    shared machine hits all of them alike; the minimum is the figure it disturbs least.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}
