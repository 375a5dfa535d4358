"""Sequence tasks: images read as rows, long-range token tasks, and reservoir benchmarks.

Classification sets come back as :class:`~physgrad.data.datasets.Dataset` objects whose ``x`` is
``[N, T, d]`` (``T`` tokens of ``d`` features) and whose ``image_shape`` is ``(T, d)``:

* :func:`row_sequences` — digits (8 rows of 8 pixels) or (Fashion-)MNIST (28 rows of 28) read one
  row per token ("sequential MNIST" read by rows; Le, Jaitly, Hinton, arXiv 1504.00941, read by
  pixels).
* :func:`marked_tokens` — ``T`` random ±1 tokens, ``m`` of them marked at random positions; the
  label is the parity (XOR) or the majority of the marked values. Any pair of positions may
  matter, so a model must relate distant tokens (the "adding problem" pattern of Hochreiter &
  Schmidhuber 1997, in classification form).

Reservoir benchmarks (time series, one long sequence):

* :func:`narma10` — the 10th-order nonlinear auto-regressive moving average task (Atiya & Parlos,
  IEEE TNN 11, 697 (2000)), the standard delay-reservoir benchmark (Appeltant et al. 2011)::

      y(t+1) = 0.3 y(t) + 0.05 y(t) Σ_{i=0}^{9} y(t−i) + 1.5 u(t−9) u(t) + 0.1,   u ~ U[0, 0.5]

  scored by :func:`nrmse` ``= √(⟨(ŷ − y)²⟩ / Var y)``.
* :func:`memory_capacity` — Jaeger's short-term memory capacity (GMD Report 152, 2002):
  ``MC = Σ_k r²(u(t−k), ŷ_k(t))`` for linear read-outs ŷ_k trained to recall the input ``k`` steps
  back, ``u ~ U[−1, 1]`` i.i.d.

Linear read-outs are ridge regressions (:func:`ridge_fit`) in float64 with a bias column.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import ConfigError, ShapeError
from .datasets import Dataset, load_dataset

TASKS = ("parity", "majority")


def row_sequences(name: str = "digits", root: str | os.PathLike | None = None, *, download: bool = True) -> Dataset:
    """``name`` (``digits``, ``fashion-mnist``, ``mnist``) with each image as ``H`` tokens of ``W`` pixels."""
    data = load_dataset(name, root, download=download)
    return as_rows(data)


def as_rows(data: Dataset) -> Dataset:
    """Reshape a flat image dataset ``[N, H·W]`` to row tokens ``[N, H, W]``."""
    h, w = data.image_shape
    if data.x_train.shape[1:] != (h * w,):
        raise ShapeError(f"as_rows expects flat images [N, {h * w}], got {tuple(data.x_train.shape)}")
    return Dataset(
        f"{data.name}-rows", data.x_train.reshape(-1, h, w), data.y_train, data.x_test.reshape(-1, h, w), data.y_test,
        data.num_classes, (h, w),
    )


def marked_tokens(
    train: int = 2000, test: int = 500, *, length: int = 16, marked: int = 3, task: str = "parity", seed: int = 0
) -> Dataset:
    """Long-range token task: features ``[value ∈ {−1, +1}, marker ∈ {0, 1}]`` per token.

    Exactly ``marked`` tokens carry marker 1; the label is the parity of the number of marked
    ``+1`` values (``task="parity"``) or whether most marked values are ``+1`` (``"majority"``,
    needs an odd ``marked``). Two classes, balanced in expectation.
    """
    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    if not 1 <= marked <= length:
        raise ConfigError(f"marked must be in [1, length={length}], got {marked}")
    if task == "majority" and marked % 2 == 0:
        raise ConfigError(f"majority needs an odd number of marked tokens, got {marked}")
    g = torch.Generator().manual_seed(seed)
    n = train + test
    values = torch.randint(0, 2, (n, length), generator=g).float() * 2 - 1
    positions = torch.rand(n, length, generator=g).argsort(dim=1)[:, :marked]
    markers = torch.zeros(n, length).scatter_(1, positions, 1.0)
    ones = ((values > 0) & (markers > 0)).sum(1)
    labels = (ones % 2) if task == "parity" else (2 * ones > marked).long()
    x = torch.stack([values, markers], dim=-1)
    return Dataset(f"marked-{task}", x[:train], labels[:train].long(), x[train:], labels[train:].long(), 2, (length, 2))


def narma10(length: int, seed: int = 0, *, order: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ``u`` and target ``y`` (float64, ``[length]``) of the NARMA-``order`` task (module docstring).

    The recursion occasionally diverges for unlucky inputs; that raises :class:`ConfigError`
    (choose another seed) instead of returning inf.
    """
    if length <= order:
        raise ConfigError(f"NARMA{order} needs length > {order}, got {length}")
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.0, 0.5, length)
    y = np.zeros(length)
    for t in range(order - 1, length - 1):
        y[t + 1] = 0.3 * y[t] + 0.05 * y[t] * y[t - order + 1 : t + 1].sum() + 1.5 * u[t - order + 1] * u[t] + 0.1
    if not np.isfinite(y).all() or np.abs(y).max() > 10:
        raise ConfigError(f"NARMA{order} diverged for seed {seed}; use another seed")
    return torch.from_numpy(u), torch.from_numpy(y)


def ridge_fit(features: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """Weights ``W`` of ``targets ≈ [features, 1] W`` minimising ``‖·‖² + ridge·‖W‖²`` (float64)."""
    x = _with_bias(features)
    y = targets.double().reshape(len(x), -1)
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, x.T @ y)


def ridge_predict(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return _with_bias(features) @ weights


def _with_bias(features: torch.Tensor) -> torch.Tensor:
    f = features.double()
    return torch.cat([f, torch.ones(len(f), 1, dtype=torch.float64)], dim=1)


def nrmse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Normalised root-mean-square error ``√(⟨(ŷ − y)²⟩ / Var y)`` (1 = predicting the mean)."""
    prediction, target = prediction.double().reshape(-1), target.double().reshape(-1)
    if prediction.shape != target.shape:
        raise ShapeError(f"nrmse: prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    return float(torch.sqrt(((prediction - target) ** 2).mean() / target.var()))


def memory_inputs(length: int, seed: int = 0) -> torch.Tensor:
    """I.i.d. ``U[−1, 1]`` input (float64) for the memory-capacity task."""
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1.0, 1.0, length))


def memory_capacity(
    states: torch.Tensor, u: torch.Tensor, *, max_delay: int, washout: int, train: int, ridge: float = 1e-6
) -> tuple[float, torch.Tensor]:
    """Short-term memory capacity of reservoir ``states`` ``[T, N]`` driven by ``u`` ``[T]``.

    Read-outs are fit on steps ``[washout, washout + train)`` and scored on the rest; returns the
    total ``MC`` and the per-delay ``r²`` (``[max_delay]``, delays 1..max_delay).
    """
    t = states.shape[0]
    if u.shape != (t,):
        raise ShapeError(f"memory_capacity: u must be [{t}] like the states, got {tuple(u.shape)}")
    if washout < max_delay or washout + train >= t:
        raise ConfigError(f"need max_delay <= washout and washout + train < T={t}; got {max_delay}, {washout}, {train}")
    delays = torch.arange(1, max_delay + 1)
    targets = torch.stack([u.roll(int(k)) for k in delays], dim=1)  # [T, D]; wrapped rows lie in the washout
    fit, score = slice(washout, washout + train), slice(washout + train, t)
    w = ridge_fit(states[fit], targets[fit], ridge)
    pred = ridge_predict(states[score], w)
    y = targets[score].double()
    pc, yc = pred - pred.mean(0), y - y.mean(0)
    r2 = (pc * yc).sum(0) ** 2 / ((pc * pc).sum(0) * (yc * yc).sum(0)).clamp_min(1e-300)
    return float(r2.sum()), r2


__all__ = [
    "TASKS", "as_rows", "marked_tokens", "memory_capacity", "memory_inputs", "narma10", "nrmse", "ridge_fit",
    "ridge_predict", "row_sequences",
]
