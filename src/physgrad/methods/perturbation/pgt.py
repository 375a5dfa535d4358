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

Variance reductions (settings; the defaults are the paper's form; theory in docs/methods/pgt.md,
"Variance reductions"). Each keeps ``E[ĝ] = ∇L`` (up to the same O(δ²)):

* ``orthogonal=True`` — the ``K`` directions of a step are orthogonal (Haar-random orthonormal rows,
  scaled to ``E[P²]``): ``E‖ĝ − g‖² = (D/K − 1)‖g‖²`` instead of ``(D + κ − 2)/K · ‖g‖²``.
* ``tensor_scale`` — per-tensor perturbation scales ``S_t`` (a mapping, or ``"auto"``:
  ``S_t ∝ G_t^{−1/4}`` from a running estimate ``G_t`` of each tensor's mean squared gradient,
  made from products of successive estimates), with the estimate divided by ``S_t²``.
* ``low_rank=r`` — every 2-D weight tensor is perturbed by ``(1/√r) Σ_j a_j b_jᵀ`` (Gaussian
  ``a_j, b_j``): covariance ``I``, ``(m + n)·r`` random numbers instead of ``m·n``.
* ``reuse=m`` — reuse of past directions (momentum on the estimate): ``m`` of the ``K`` pairs
  measure along an orthonormal basis ``U`` of the running average of past estimates and the
  ``m − 1`` most recent estimates; the other
  ``K − m`` random directions are projected onto the complement of ``U``, so
  ``ĝ = UUᵀg + (I − UUᵀ)ĝ_random`` and the error is that of the part of ``g`` the past did not
  predict.

Cost: ``2K`` device queries per gradient (+1 for the loss at θ itself in the global scope, +1
for the forward pass in the local scope).
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping

import torch

from ...errors import ConfigError
from ..base import Estimate
from ..defaults import scope_defaults
from .engine import Directions, PerturbationMethod

DISTRIBUTIONS = ("integer", "rademacher", "gaussian")


class PGT(PerturbationMethod):
    """Random antithetic perturbations of every parameter (see module docstring).

    Parameters
    ----------
    num_pairs:
        ``K``, the number of ± pairs averaged per gradient; ``None`` (default): the scope's
        default, ``DEFAULTS[scope]["num_pairs"]`` (:mod:`physgrad.methods.defaults`: 4 global, 2 local).
    delta:
        Perturbation scale δ; ``None`` (default): ``DEFAULTS[scope]["delta"]`` (1e-2).
    r:
        Integer range of ``P`` for ``distribution="integer"``.
    dropout:
        Probability that an entry of ``P`` is zeroed (any distribution).
    distribution:
        ``"integer"`` (PGT), ``"rademacher"`` (SPSA) or ``"gaussian"`` (ES).
    orthogonal:
        Orthogonal directions within a step (Gaussian rows orthonormalised, scaled to ``E[P²]``).
    tensor_scale:
        ``None`` (the paper), ``"auto"`` or ``{parameter name: scale}``: per-tensor perturbation scales.
    low_rank:
        ``0`` (full) or the rank ``r`` of the perturbation of each 2-D weight tensor.
    reuse:
        ``0`` or the number ``m < K`` of pairs spent on the subspace of past estimates.
    reuse_decay, scale_decay:
        Decay of the running averages behind ``reuse`` and ``tensor_scale="auto"``.
    scope, max_probes, vectorize, seed, carrier:
        See :class:`~physgrad.methods.perturbation.engine.PerturbationMethod`.
    """

    name = "pgt"

    def __init__(
        self,
        num_pairs: int | None = None,
        delta: float | None = None,
        *,
        r: int = 1,
        dropout: float = 0.0,
        distribution: str = "integer",
        orthogonal: bool = False,
        tensor_scale: str | Mapping[str, float] | None = None,
        low_rank: int = 0,
        reuse: int = 0,
        reuse_decay: float = 0.9,
        scale_decay: float = 0.9,
        scope: str = "global",
        max_probes: int = 256,
        vectorize: bool = True,
        seed: int = 0,
        carrier=None,
    ) -> None:
        num_pairs, delta = scope_defaults(scope, num_pairs=num_pairs, delta=delta)
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
        if tensor_scale is not None and tensor_scale != "auto":
            if not isinstance(tensor_scale, Mapping):
                raise ConfigError(f"tensor_scale must be None, 'auto' or a mapping of names to scales, got {tensor_scale!r}")
            bad = {n: v for n, v in tensor_scale.items() if not (float(v) > 0 and math.isfinite(float(v)))}
            if bad:
                raise ConfigError(f"tensor_scale values must be finite and > 0, got {bad}")
        if low_rank < 0 or int(low_rank) != low_rank:
            raise ConfigError(f"low_rank must be an integer >= 0, got {low_rank!r}")
        if reuse < 0 or int(reuse) != reuse or (reuse and reuse >= num_pairs):
            raise ConfigError(f"reuse must be an integer in [0, num_pairs), got {reuse!r} with num_pairs={num_pairs}")
        if reuse and reuse > max_probes:
            raise ConfigError(f"reuse ({reuse}) must fit in one chunk of max_probes ({max_probes})")
        if (orthogonal or low_rank) and dropout:
            raise ConfigError("orthogonal and low_rank directions do not combine with dropout")
        if orthogonal and low_rank:
            raise ConfigError("choose orthogonal or low_rank directions, not both")
        if low_rank and reuse:
            raise ConfigError("low_rank directions do not combine with reuse (the projection would lose the low rank)")
        for name, decay in (("reuse_decay", reuse_decay), ("scale_decay", scale_decay)):
            if not 0.0 <= decay < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {decay!r}")
        self.orthogonal = bool(orthogonal)
        self.tensor_scale = tensor_scale if tensor_scale is None or tensor_scale == "auto" else dict(tensor_scale)
        self.low_rank = int(low_rank)
        self.reuse = int(reuse)
        self.reuse_decay = float(reuse_decay)
        self.scale_decay = float(scale_decay)
        self._layout: dict[str, tuple[int, ...]] = {}
        self._memory: dict[tuple, torch.Tensor] = {}      # running average of past estimates, per layout
        self._recent: dict[tuple, list] = {}              # the reuse − 1 most recent estimates, per layout
        self._scale_stats: dict[str, list] = {}           # per tensor: [previous estimate, G_t running average]
        self._step_scale: torch.Tensor | None = None      # the per-coordinate scale of the step in progress

    @property
    def paper_form(self) -> bool:
        """True when no variance-reduction setting is on (the estimator of the paper)."""
        return not (self.orthogonal or self.tensor_scale is not None or self.low_rank or self.reuse)

    @classmethod
    def spsa(cls, num_pairs: int | None = None, delta: float | None = None, **kwargs) -> "PGT":
        """Simultaneous-perturbation stochastic approximation: Rademacher ±1 directions."""
        method = cls(num_pairs, delta, distribution="rademacher", **kwargs)
        method.name = "spsa"
        return method

    @classmethod
    def es(cls, num_pairs: int | None = None, delta: float | None = None, **kwargs) -> "PGT":
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
        layout = self._layout if sum(math.prod(v) for v in self._layout.values()) == dim else {}
        scale = self._coordinate_scale(layout, dim)
        self._step_scale = scale
        basis = self._reuse_basis(layout, dim)
        m_used = 0 if basis is None else basis.shape[0]
        self._random_rows = self.num_pairs - m_used  # the normaliser's count (read after the first chunk)
        left, first = self.num_pairs, True
        while left:
            k = min(left, self.max_probes)
            left -= k
            m = basis.shape[0] if (first and basis is not None) else 0
            rows = self._draw(k - m, dim, layout)
            if basis is not None:
                rows = rows - (rows @ basis.T) @ basis  # random rows in the complement of the reused subspace
            if m:
                a = math.sqrt(self._random_rows * self.second_moment)
                rows = torch.cat([a * basis, rows])
            if scale is not None:
                rows = rows * scale
            inputs = None
            if input_shape is not None:
                inputs = self._draw_inputs(k - m, input_shape)
                if m:
                    inputs = torch.cat([torch.zeros(m, *input_shape), inputs])
            first = False
            yield rows, inputs

    def normaliser(self, dim: int, input_shape: tuple[int, ...] | None) -> float:
        # with reuse, the rows along past directions are scaled so that this one constant serves them too
        return 1.0 / (getattr(self, "_random_rows", self.num_pairs) * self.second_moment)

    # ------------------------------------------------------------------ variance-reduction settings
    def _draw(self, k: int, dim: int, layout: Mapping[str, tuple[int, ...]]) -> torch.Tensor:
        """``k`` random rows over ``dim`` coordinates with ``E[P Pᵀ] = E[P²]·I``."""
        if k <= 0:
            return torch.zeros(0, dim)
        if self.orthogonal:
            return math.sqrt(self.second_moment) * _orthogonal_rows(k, dim, self.generator)
        if self.low_rank and layout:
            parts = []
            for shape in layout.values():
                n = math.prod(shape)
                if len(shape) == 2 and min(shape) > self.low_rank:
                    r = self.low_rank
                    a = torch.randn(k, shape[0], r, generator=self.generator)
                    b = torch.randn(k, shape[1], r, generator=self.generator)
                    block = torch.einsum("kir,kjr->kij", a, b).reshape(k, n) / math.sqrt(r)
                    parts.append(math.sqrt(self.second_moment) * block)
                else:
                    parts.append(self.sample((k, n)))
            return torch.cat(parts, 1)
        return self.sample((k, dim))

    def _draw_inputs(self, k: int, input_shape: tuple[int, ...]) -> torch.Tensor:
        if k <= 0:
            return torch.zeros(0, *input_shape)
        if self.orthogonal:  # orthogonal across the K directions of each sample
            b, n = input_shape[0], math.prod(input_shape[1:])
            rows = torch.stack([_orthogonal_rows(k, n, self.generator) for _ in range(b)], 1)
            return math.sqrt(self.second_moment) * rows.reshape(k, *input_shape)
        return self.sample((k, *input_shape))

    def _coordinate_scale(self, layout: Mapping[str, tuple[int, ...]], dim: int) -> torch.Tensor | None:
        """Per-coordinate perturbation scale ``S`` (``None``: all ones), normalised to mean ``S² = 1``."""
        if self.tensor_scale is None or not layout:
            return None
        if self.tensor_scale == "auto":
            g = {n: self._scale_stats[n][1] for n in layout if n in self._scale_stats and self._scale_stats[n][1] is not None}
            if len(g) < len(layout):
                return None
            # floor at 5 % of the coordinate-weighted mean: a tensor whose estimate is pure noise (a few
            # elements) gets a bounded scale instead of an extreme one
            total = sum(math.prod(layout[n]) for n in g)
            mean = max(sum(v * math.prod(layout[n]) for n, v in g.items()) / total, 1e-30)
            per = {n: max(v, 0.05 * mean) ** -0.25 for n, v in g.items()}
        else:
            per = {n: float(self.tensor_scale.get(n, 1.0)) for n in layout}
        scale = torch.cat([torch.full((math.prod(shape),), per[n]) for n, shape in layout.items()])
        return scale / scale.pow(2).mean().sqrt()

    def _reuse_basis(self, layout: Mapping[str, tuple[int, ...]], dim: int) -> torch.Tensor | None:
        """Orthonormal rows ``U`` [m, dim] spanning the running average of past estimates (None if none yet)."""
        if not self.reuse:
            return None
        key = self._key(layout, dim)
        memory = self._memory.get(key)
        if memory is None or not torch.isfinite(memory).all() or memory.norm() == 0:
            return None
        vectors = torch.stack([memory] + list(self._recent.get(key, []))[: self.reuse - 1])
        q, r = torch.linalg.qr(vectors.T.double())
        keep = torch.diagonal(r).abs() > 1e-9 * float(torch.diagonal(r).abs().max())  # drop dependent vectors
        return q.T.float()[keep]

    @staticmethod
    def _key(layout: Mapping[str, tuple[int, ...]], dim: int) -> tuple:
        return tuple(layout.items()) if layout else (dim,)

    def tell(self, probes, answers, cotangent=None) -> Estimate:
        """The engine's read-out, then the per-tensor rescaling ``ĝ_t / S_t²`` and the running averages."""
        est = super().tell(probes, answers, cotangent)
        scale = self._step_scale
        if scale is not None and scale.numel() == sum(math.prod(v) for v in probes.shapes.values()):
            offset, grads = 0, {}
            for name, shape in probes.shapes.items():
                n = math.prod(shape)
                s2 = scale[offset : offset + n].reshape(shape).to(est.grads[name].dtype) ** 2
                grads[name] = est.grads[name] / s2
                offset += n
            est = Estimate(grads, est.input_grad, est.cost)
        self._remember(probes.shapes, est)
        return est

    def _remember(self, shapes: Mapping[str, tuple[int, ...]], est: Estimate) -> None:
        if not est.grads or not all(torch.isfinite(g).all() for g in est.grads.values()):
            return
        if self.reuse:
            flat = torch.cat([est.grads[n].reshape(-1).float() for n in shapes])
            key = self._key(dict(shapes), flat.numel())
            old = self._memory.get(key)
            self._memory[key] = flat if old is None else self.reuse_decay * old + (1 - self.reuse_decay) * flat
            if self.reuse > 1:
                self._recent[key] = ([flat.clone()] + list(self._recent.get(key, [])))[: self.reuse - 1]
        if self.tensor_scale == "auto":
            for name, g in est.grads.items():
                g = g.reshape(-1).float()
                prev, avg = self._scale_stats.get(name, (None, None))
                if prev is not None and prev.numel() == g.numel():
                    cross = float(g @ prev) / g.numel()  # E[ĝ_t·ĝ_{t−1}]/n = ‖g_t‖²/n when the noise is independent
                    avg = cross if avg is None else self.scale_decay * avg + (1 - self.scale_decay) * cross
                    avg = max(avg, 0.0) if avg is not None else None
                self._scale_stats[name] = [g.clone(), avg]

    # ------------------------------------------------------------------ the layout of the step
    def _backward(self, model, loss_fn, x, y):
        if self.scope == "global":
            self._layout = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
        return super()._backward(model, loss_fn, x, y)

    def vjp(self, system, params, inputs, outputs, cotangent, need_input_grad: bool = True):
        self._layout = {n: tuple(p.shape) for n, p in params.items()}
        return super().vjp(system, params, inputs, outputs, cotangent, need_input_grad)

    def ask(self, theta, inputs=None, targets=None, **options):
        """The engine's ``ask``; the parameter layout is kept for per-tensor scales and low-rank draws."""
        self._layout = {n: tuple(t.shape) for n, t in theta.items()}
        return super().ask(theta, inputs, targets, **options)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["memory"] = {k: v.clone() for k, v in self._memory.items()}
        state["recent"] = {k: [t.clone() for t in v] for k, v in self._recent.items()}
        state["scale_stats"] = {k: [None if v[0] is None else v[0].clone(), v[1]] for k, v in self._scale_stats.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._memory = {k: v.clone() for k, v in state.get("memory", {}).items()}
        self._recent = {k: [t.clone() for t in v] for k, v in state.get("recent", {}).items()}
        self._scale_stats = {k: list(v) for k, v in state.get("scale_stats", {}).items()}

    def __repr__(self) -> str:
        extra = ""
        if not self.paper_form:
            extra = (f", orthogonal={self.orthogonal}, tensor_scale={self.tensor_scale!r}, low_rank={self.low_rank}, "
                     f"reuse={self.reuse}")
        return (
            f"PGT(num_pairs={self.num_pairs}, delta={self.delta}, r={self.r}, dropout={self.dropout}, "
            f"distribution={self.distribution!r}, scope={self.scope!r}{extra})"
        )


def _orthogonal_rows(k: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` rows in ``ℝⁿ`` with ``E[p pᵀ] = I``: Haar-random orthonormal rows scaled by ``√n``, in
    independent blocks of ``n`` when ``k > n`` (orthogonal within a block)."""
    blocks, left = [], k
    while left:
        m = min(left, n)
        g = torch.randn(n, m, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar measure (sign-corrected QR)
        blocks.append((q.T * math.sqrt(n)).float())
        left -= m
    return torch.cat(blocks)
