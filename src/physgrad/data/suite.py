"""A validation suite of small classification tasks, offline, none of them a task a benchmark reports.

Two disjoint sets of six tasks each — tabular, image and sequence, with different input sizes and
class counts — built from scikit-learn's embedded and generated sets and from synthetic sequences:

``TUNING`` (physgrad's defaults are chosen on these, on a validation split of their *training* part)
    ``moons`` (2 features, 2 classes, noise 0.25), ``circles`` (2, 2), ``iris`` (4, 3),
    ``blobs20`` (``make_classification``: 20 features, 5 classes), ``digits04`` (8×8 digits 0–4:
    64 features, 5 classes), ``majority`` (marked-token majority, 8 tokens × 2 features, 2 classes).

``HELD_OUT`` (the reported figures; never used to choose anything)
    ``wine`` (13, 3), ``cancer`` (breast cancer, 30, 2), ``quantiles`` (Gaussian quantiles, 6, 3),
    ``blobs12`` (``make_classification``: 12 features, 4 classes, another seed), ``digits59``
    (digits 5–9 average-pooled to 4×4: 16 features, 5 classes), ``frequency`` (noisy sinusoids of
    random phase, 24 steps, 3 frequencies).

Not in either set: the full ``digits`` and Fashion-MNIST (what ``benchmarks/pgt_training`` reports).
Every task is standardised with the *training* part's mean and standard deviation and split
stratified with a fixed seed; ``task(name)`` returns a :class:`~physgrad.data.datasets.Dataset`.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError
from .datasets import Dataset
from .sequences import marked_tokens

TUNING = ("moons", "circles", "iris", "blobs20", "digits04", "majority")
HELD_OUT = ("wine", "cancer", "quantiles", "blobs12", "digits59", "frequency")
KINDS = {
    "moons": "tabular", "circles": "tabular", "iris": "tabular", "blobs20": "tabular", "digits04": "image",
    "majority": "sequence", "wine": "tabular", "cancer": "tabular", "quantiles": "tabular", "blobs12": "tabular",
    "digits59": "image", "frequency": "sequence",
}
TEST_FRACTION = 0.3


def _split(name: str, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], seed: int = 0) -> Dataset:
    from sklearn.model_selection import train_test_split

    x = x.reshape(len(x), -1).astype(np.float64)
    y = np.asarray(y)
    classes = np.unique(y)
    y = np.searchsorted(classes, y)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y)
    mean, std = xtr.mean(0), xtr.std(0)
    std[std < 1e-8] = 1.0
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    f = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    l = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return Dataset(name, f(xtr), l(ytr), f(xte), l(yte), len(classes), shape)


def _moons():
    from sklearn.datasets import make_moons

    x, y = make_moons(800, noise=0.25, random_state=0)
    return x, y, (1, 2)


def _circles():
    from sklearn.datasets import make_circles

    x, y = make_circles(800, noise=0.1, factor=0.5, random_state=0)
    return x, y, (1, 2)


def _iris():
    from sklearn.datasets import load_iris

    d = load_iris()
    return d.data, d.target, (1, 4)


def _blobs(features: int, informative: int, classes: int, seed: int, n: int = 1000):
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n, n_features=features, n_informative=informative, n_redundant=2, n_classes=classes,
        n_clusters_per_class=2, class_sep=1.2, flip_y=0.0, random_state=seed,
    )
    return x, y, (1, features)


def _digits(classes: tuple[int, ...], pool: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.isin(d.target, classes)
    x = d.data[keep].reshape(-1, 8, 8)
    if pool > 1:
        x = x.reshape(-1, 8 // pool, pool, 8 // pool, pool).mean((2, 4))
    side = 8 // pool
    return x.reshape(len(x), -1), d.target[keep], (side, side)


def _majority():
    d = marked_tokens(700, 300, length=8, marked=3, task="majority", seed=0)
    x = torch.cat([d.x_train, d.x_test]).numpy()
    y = torch.cat([d.y_train, d.y_test]).numpy()
    return x, y, (8, 2)


def _frequency(n: int = 900, length: int = 24, seed: int = 0):
    """Noisy sinusoids ``sin(2π f t / T + φ) + 0.5·N(0, 1)``, ``f ∈ {2, 3, 5}`` cycles, random phase φ."""
    rng = np.random.default_rng(seed)
    freqs = np.array([2, 3, 5])
    y = np.arange(n) % len(freqs)
    phase = rng.uniform(0, 2 * math.pi, n)
    t = np.arange(length)
    x = np.sin(2 * math.pi * freqs[y, None] * t[None] / length + phase[:, None]) + 0.5 * rng.standard_normal((n, length))
    return x, y, (length, 1)


def _wine():
    from sklearn.datasets import load_wine

    d = load_wine()
    return d.data, d.target, (1, 13)


def _cancer():
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return d.data, d.target, (1, 30)


def _quantiles():
    from sklearn.datasets import make_gaussian_quantiles

    x, y = make_gaussian_quantiles(n_samples=900, n_features=6, n_classes=3, random_state=3)
    return x, y, (1, 6)


BUILDERS: dict[str, Callable[[], tuple]] = {
    "moons": _moons,
    "circles": _circles,
    "iris": _iris,
    "blobs20": lambda: _blobs(20, 8, 5, seed=1),
    "digits04": lambda: _digits((0, 1, 2, 3, 4), pool=1),
    "majority": _majority,
    "wine": _wine,
    "cancer": _cancer,
    "quantiles": _quantiles,
    "blobs12": lambda: _blobs(12, 6, 4, seed=7),
    "digits59": lambda: _digits((5, 6, 7, 8, 9), pool=2),
    "frequency": _frequency,
}


def task(name: str) -> Dataset:
    """One task of the suite by name (see the module docstring), split 70/30 stratified, standardised."""
    if name not in BUILDERS:
        raise ConfigError(f"unknown suite task {name!r}; choose one of {sorted(BUILDERS)}")
    x, y, shape = BUILDERS[name]()
    return _split(name, np.asarray(x), np.asarray(y), shape)


def tasks(which: str = "held_out") -> list[Dataset]:
    """``"tuning"``, ``"held_out"`` or ``"all"``: the tasks of that set, in order."""
    names = {"tuning": TUNING, "held_out": HELD_OUT, "all": TUNING + HELD_OUT}.get(which)
    if names is None:
        raise ConfigError(f"which must be 'tuning', 'held_out' or 'all', got {which!r}")
    return [task(n) for n in names]


__all__ = ["HELD_OUT", "KINDS", "TUNING", "task", "tasks"]
