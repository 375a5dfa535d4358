"""Perturbative Gradient Training (PGT), with SPSA and Gaussian ES as settings.

Abbott, Elo, Bozhko, "Perturbative Gradient Training", arXiv 2506.04523 (2025): perturb *all*
parameters of a network that contains a black-box reservoir by a random matrix ``P`` with integer
entries uniform in ``[-r, r]``, entries dropped (set to 0) with probability ``dropout``; measure
the loss at ``θ ± δP`` (two forward passes) and step along ``P`` in proportion to the difference.

Normalisation (our choice, stated because the paper's text is not available to us): with entries
i.i.d., zero-mean, ``E[P Pᵀ] = E[P²]·I``, so

    ĝ = (1/K) Σ_k (L(θ+δP_k) − L(θ−δP_k)) / (2δ) · P_k / E[P²]

has ``E[ĝ] = ∇L`` up to the O(δ²) curvature of ``L`` along ``P`` (the antithetic pair cancels
every even-order term): an unbiased estimate of the gradient of the loss smoothed by the
perturbation distribution. For integers uniform on ``{-r..r}`` with dropout ``p``,
``E[P²] = (1 − p)·r(r + 1)/3``.

Settings instead of separate code:

* ``distribution="integer"`` — the paper (default ``r = 1``: ternary {-1, 0, 1}).
* ``distribution="rademacher"`` — SPSA (Spall 1992): ±1, ``E[P²] = 1``; :meth:`PGT.spsa`.
* ``distribution="gaussian"`` — antithetic evolution strategies (Salimans et al. 2017): N(0, 1);
  :meth:`PGT.es`.

Cost: ``2K`` device queries per gradient (+1 for the loss at θ itself in the global scope, +1
for the forward pass in the local scope).
"""

from __future__ import annotations

from typing import Iterator

import torch

from ...errors import ConfigError
from .engine import Directions, PerturbationMethod

DISTRIBUTIONS = ("integer", "rademacher", "gaussian")


class PGT(PerturbationMethod):
    """Random antithetic perturbations of every parameter (see module docstring).

    Parameters
    ----------
    num_pairs:
        ``K``, the number of ± pairs averaged per gradient.
    delta:
        Perturbation scale δ.
    r:
        Integer range of ``P`` for ``distribution="integer"``.
    dropout:
        Probability that an entry of ``P`` is zeroed (any distribution).
    distribution:
        ``"integer"`` (PGT), ``"rademacher"`` (SPSA) or ``"gaussian"`` (ES).
    scope, max_probes, vectorize, seed, carrier:
        See :class:`~physgrad.methods.perturbation.engine.PerturbationMethod`.
    """

    name = "pgt"

    def __init__(
        self,
        num_pairs: int = 32,
        delta: float = 1e-3,
        *,
        r: int = 1,
        dropout: float = 0.0,
        distribution: str = "integer",
        scope: str = "global",
        max_probes: int = 256,
        vectorize: bool = True,
        seed: int = 0,
        carrier=None,
    ) -> None:
        super().__init__(scope, delta=delta, max_probes=max_probes, vectorize=vectorize, seed=seed, carrier=carrier)
        if num_pairs < 1:
            raise ConfigError(f"num_pairs must be >= 1, got {num_pairs}")
        if distribution not in DISTRIBUTIONS:
            raise ConfigError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        if distribution == "integer" and (int(r) != r or r < 1):
            raise ConfigError(f"r must be an integer >= 1, got {r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
        self.num_pairs = int(num_pairs)
        self.r = int(r)
        self.dropout = float(dropout)
        self.distribution = distribution

    @classmethod
    def spsa(cls, num_pairs: int = 32, delta: float = 1e-3, **kwargs) -> "PGT":
        """Simultaneous-perturbation stochastic approximation: Rademacher ±1 directions."""
        method = cls(num_pairs, delta, distribution="rademacher", **kwargs)
        method.name = "spsa"
        return method

    @classmethod
    def es(cls, num_pairs: int = 32, delta: float = 1e-3, **kwargs) -> "PGT":
        """Antithetic Gaussian evolution strategies (a smoothed-gradient estimator)."""
        method = cls(num_pairs, delta, distribution="gaussian", **kwargs)
        method.name = "es"
        return method

    @property
    def second_moment(self) -> float:
        """``E[P²]`` of one entry of the perturbation matrix."""
        if self.distribution == "integer":
            base = self.r * (self.r + 1) / 3.0
        else:
            base = 1.0
        return (1.0 - self.dropout) * base

    def sample(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Draw perturbation entries of the configured distribution."""
        g = self.generator
        if self.distribution == "integer":
            p = torch.randint(-self.r, self.r + 1, shape, generator=g).float()
        elif self.distribution == "rademacher":
            p = torch.randint(0, 2, shape, generator=g).float() * 2 - 1
        else:
            p = torch.randn(shape, generator=g)
        if self.dropout:
            p = p * (torch.rand(shape, generator=g) >= self.dropout)
        return p

    def direction_chunks(self, dim: int, input_shape: tuple[int, ...] | None) -> Iterator[Directions]:
        left = self.num_pairs
        while left:
            k = min(left, self.max_probes)
            left -= k
            yield self.sample((k, dim)), None if input_shape is None else self.sample((k, *input_shape))

    def normaliser(self, dim: int, input_shape: tuple[int, ...] | None) -> float:
        return 1.0 / (self.num_pairs * self.second_moment)

    def __repr__(self) -> str:
        return (
            f"PGT(num_pairs={self.num_pairs}, delta={self.delta}, r={self.r}, dropout={self.dropout}, "
            f"distribution={self.distribution!r}, scope={self.scope!r})"
        )
