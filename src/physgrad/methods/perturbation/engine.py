"""The machinery shared by every forward-only method: antithetic probes and their read-out.

A forward-only method chooses directions ``P_k`` (rows of a ``[K, D]`` matrix over the flattened
parameters, and in the local scope also per-sample input directions), measures at ``θ ± δP_k``
and combines the symmetric differences::

    s_k = (L(θ + δP_k) − L(θ − δP_k)) / (2δ)            (a directional derivative, O(δ²) error)
    ĝ   = c · Σ_k s_k P_k

PGT/SPSA/ES use random ``P`` and ``c = 1/(K·E[P²])``; central finite differences use the unit
vectors and ``c = 1``. Subclasses only say which directions and which ``c``.

Scopes (DESIGN.md, "local variant"):

``global``
    ``D`` covers every trainable parameter of the model; each probe is a whole-network loss.
    All probes are evaluated by one ``torch.func.vmap`` over ``functional_call`` (the device
    receives them in one batched ``measure``).
``local``
    autograd handles the digital layers exactly; each physical layer's backward estimates the
    vector–Jacobian product ``vᵀJ`` by perturbing only that layer's inputs (independently per
    sample) and its control parameters, with ``s_{k,b} = v_b · (y⁺_{k,b} − y⁻_{k,b}) / (2δ)``.

Safe ranges: a probe pair is centred at ``clamp(θ, low + δ|P|, high − δ|P|)`` so that both
``θ ± δP`` lie inside the device's safe range (the stencil is shifted inward at a bound, never
clipped asymmetrically); when ``δ|P|`` exceeds half a range the method refuses.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from ...carriers.probes import Probes, split_points
from ...cost import Cost
from ...errors import ConfigError, RangeError, ShapeError, number_in
from ..base import Bounds, Estimate, GradientMethod, NetworkLoss, flat_bounds, require_finite, scaled_cost, unflatten
from ..defaults import scope_defaults

Directions = tuple[torch.Tensor, torch.Tensor | None]  # ([k, D], [k, B, *input_shape] or None)


@dataclass
class PerturbationProbes(Probes):
    """What to apply to the device: ``2K`` settings (the K "+" probes, then the K "−" probes).

    ``params[name]`` is ``[2K, *shape]``; ``inputs`` is ``None`` (global scope: each setting is
    answered by a loss), the shared batch ``[B, *input_shape]`` (``per_probe_inputs=False``) or
    ``[2K, B, *input_shape]`` (perturbed inputs of a vector–Jacobian product). The remaining fields
    are the method's own record of the directions, read back by ``tell``. ``answer(system)`` is
    ``system.measure(params, inputs)``; ``shard`` keeps each ± pair in one part; ``join`` restores
    the order asked (all "+" then all "−").
    """

    params: dict[str, torch.Tensor]
    inputs: torch.Tensor | None
    directions: torch.Tensor
    input_directions: torch.Tensor | None
    step: float
    normaliser: float
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    per_probe_inputs: bool = True
    per_query: Cost | None = None  # what one query costs on the device asked for (None: not declared)
    one_by_one: bool = False  # answer setting by setting (``vectorize=False``) instead of in one batched call

    @property
    def count(self) -> int:
        return int(self.directions.shape[0]) * 2

    @property
    def pairs(self) -> int:
        return int(self.directions.shape[0])

    def answer(self, system: Any) -> torch.Tensor:
        if self.inputs is None and not isinstance(system, NetworkLoss):
            raise ShapeError(
                "these probes carry no inputs (global scope): answer each setting with your network's loss, "
                "or ask with inputs= for a device's outputs"
            )
        if not self.one_by_one:
            return system.measure(self.params, self.inputs)
        per_probe = self.inputs is not None and self.per_probe_inputs
        return torch.cat([
            system.measure({n: v[i : i + 1] for n, v in self.params.items()},
                           self.inputs[i : i + 1] if per_probe else self.inputs)
            for i in range(self.count)
        ])

    def _pairs(self, value: torch.Tensor, a: int, b: int) -> torch.Tensor:
        k = self.pairs
        return torch.cat([value[a:b], value[k + a : k + b]])

    def shard(self, n: int) -> list["PerturbationProbes"]:
        spans = split_points(self.pairs, n)
        if len(spans) == 1:
            return [self]
        return [
            PerturbationProbes(
                {name: self._pairs(v, a, b) for name, v in self.params.items()},
                self._pairs(self.inputs, a, b) if self.inputs is not None and self.per_probe_inputs else self.inputs,
                self.directions[a:b],
                None if self.input_directions is None else self.input_directions[a:b],
                self.step, self.normaliser, self.shapes, self.per_probe_inputs, self.per_query, self.one_by_one,
            )
            for a, b in spans
        ]

    def join(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        parts = [torch.as_tensor(p) for p in parts]
        halves = [p.shape[0] // 2 for p in parts]
        plus = [p[:h] for p, h in zip(parts, halves)]
        minus = [p[h:] for p, h in zip(parts, halves)]
        return torch.cat(plus + minus)


class PerturbationMethod(GradientMethod):
    """Base of PGT / SPSA / ES / finite differences.

    Parameters
    ----------
    scope:
        ``"global"`` (perturb every trainable parameter, whole-network losses) or ``"local"``
        (estimated vector–Jacobian product per physical layer, autograd elsewhere).
    delta:
        Perturbation scale δ (in parameter units; inputs of a device in its input units); ``None``:
        the scope's default, ``DEFAULTS[scope]["delta"]`` (:mod:`physgrad.methods.defaults`).
    max_probes:
        At most this many probe pairs per device call (a memory bound; the estimator is the same:
        the probes are sharded, the answers joined).
    vectorize:
        Evaluate all probes of a call in one batched call (default) or one by one.
    carrier:
        What carries probes to a device (default :class:`~physgrad.carriers.InProcess`).
    """

    def __init__(
        self,
        scope: str = "global",
        *,
        delta: float | None = None,
        max_probes: int = 256,
        vectorize: bool = True,
        seed: int = 0,
        carrier=None,
    ) -> None:
        super().__init__(scope, seed, carrier=carrier)
        if max_probes < 1:
            raise ConfigError(f"max_probes must be >= 1, got {max_probes}")
        if delta is None:  # the scope's default δ (physgrad.methods.defaults)
            delta = scope_defaults(scope, delta=None)[1]
        self.delta = number_in("delta", delta)
        self.max_probes = int(max_probes)
        self.vectorize = bool(vectorize)
        self._bounds = FlatBounds()

    # ------------------------------------------------------------------ what subclasses say
    @abc.abstractmethod
    def direction_chunks(self, dim: int, input_shape: tuple[int, ...] | None) -> Iterator[Directions]:
        """Yield ``(P [k, dim], P_in [k, *input_shape] or None)`` chunks of directions."""

    @abc.abstractmethod
    def normaliser(self, dim: int, input_shape: tuple[int, ...] | None) -> float:
        """The constant ``c`` of ``ĝ = c Σ_k s_k P_k``."""

    # ------------------------------------------------------------------ ask / tell
    def ask(self, theta: Mapping[str, torch.Tensor], inputs: torch.Tensor | None = None, targets=None, *,
            bounds: Bounds | None = None, input_bounds: tuple[float, float] | None = None, system: Any = None,
            input_grad: bool | None = None) -> PerturbationProbes:
        """All probes for one gradient at ``theta`` (and, for a vector–Jacobian product, ``inputs``).

        ``inputs`` given: the probes are a device's outputs (answer with ``system.measure``); their
        inputs are perturbed too unless ``input_grad=False``. ``system`` (optional) is read for its
        declared cost per query only. Pure: nothing is measured.
        """
        if isinstance(targets, Mapping):
            raise TypeError(
                f"{type(self).__name__}.ask(theta, inputs, bounds, ...): bounds is keyword-only since 0.2; "
                "write ask(theta, inputs, bounds=..., input_bounds=...)"
            )
        dim = sum(t.numel() for t in theta.values())
        perturb_inputs = inputs is not None and (input_grad is None or bool(input_grad))
        in_shape = tuple(inputs.shape) if perturb_inputs else None
        chunks = list(self.direction_chunks(dim, in_shape))
        directions = torch.cat([c[0] for c in chunks])
        input_dirs = torch.cat([c[1] for c in chunks]) if perturb_inputs else None
        shapes = {n: tuple(t.shape) for n, t in theta.items()}
        dtype = next(iter(theta.values())).dtype if theta else (torch.float32 if inputs is None else inputs.dtype)
        flat = torch.cat([t.reshape(-1) for t in theta.values()]) if theta else torch.zeros(0, dtype=dtype)
        directions = directions.to(flat.dtype)
        low, high, cols = self._bounds.get(shapes, bounds, flat.dtype)
        plus, minus = flat + self.delta * directions, flat - self.delta * directions
        if cols is not None:  # shift the stencil inward only where a parameter is bounded
            plus[:, cols], minus[:, cols] = _stencil(flat[cols], directions[:, cols], self.delta, low, high, "parameter")
        params = unflatten(torch.cat([plus, minus]), shapes)
        probe_inputs = inputs
        if perturb_inputs:
            lo, hi = input_bounds if input_bounds is not None else (-math.inf, math.inf)
            k = input_dirs.shape[0]
            x = inputs.unsqueeze(0).expand(k, *inputs.shape).reshape(k, -1)
            d = input_dirs.to(inputs.dtype).reshape(k, -1)
            xp, xm = _stencil(x, d, self.delta, torch.full_like(x[0], lo), torch.full_like(x[0], hi), "input")
            probe_inputs = torch.cat([xp, xm]).reshape(2 * k, *inputs.shape)
        per_query = None
        if system is not None and inputs is not None:
            per_query = Cost(1, int(inputs.shape[0]), float(getattr(system, "seconds_per_query", 0.0) or 0.0))
        return PerturbationProbes(
            params, probe_inputs, directions, input_dirs, self.delta, self.normaliser(dim, in_shape), shapes,
            perturb_inputs, per_query, not self.vectorize,
        )

    def parts(self, probes: PerturbationProbes) -> int:
        return -(-probes.pairs // self.max_probes)

    def answer_network(self, network, probes: PerturbationProbes, theta: Mapping[str, torch.Tensor]):
        """The losses at the ``2K`` settings and at θ itself in one batched evaluation (one device call
        per layer instead of two) when the probes go in one part; otherwise as the base class does."""
        if self.parts(probes) != 1 or not self.vectorize:
            return super().answer_network(network, probes, theta)
        rows = {n: torch.cat([v, theta[n].unsqueeze(0).to(v.dtype)]) for n, v in probes.params.items()}
        losses = network.measure(rows)
        return losses[:-1], losses[-1]

    def tell(self, probes: PerturbationProbes, answers: torch.Tensor, cotangent: torch.Tensor | None = None) -> Estimate:
        """Turn the answers to ``probes`` into a gradient estimate.

        ``answers`` is ``[2K]`` losses (no inputs given) or ``[2K, B, *out]`` device outputs with
        ``cotangent`` ``[B, *out]`` (the vector of the vector–Jacobian product).
        """
        n = probes.count
        answers = torch.as_tensor(answers)
        if answers.shape[0] != n or n % 2:
            raise ShapeError(f"tell expects {n} answers (the + probes then the − probes), got {tuple(answers.shape)}")
        require_finite(self.name, "answers", answers)
        k = n // 2
        diff = (answers[:k] - answers[k:]) / (2 * probes.step)
        if cotangent is None:
            if diff.dim() != 1:
                raise ShapeError("answers with a batch need a cotangent (the vector of the vector–Jacobian product)")
            per_sample, batch = diff.unsqueeze(1), 1
        else:
            if tuple(cotangent.shape) != tuple(diff.shape[1:]):
                raise ShapeError(f"cotangent shape {tuple(cotangent.shape)} does not match answers {tuple(answers.shape)}")
            per_sample = (diff * cotangent.to(diff.dtype)).flatten(2).sum(-1)  # [k, B]
            batch = per_sample.shape[1]
        c = probes.normaliser
        flat = c * (per_sample.sum(1) @ probes.directions.to(per_sample.dtype))
        grads = {name: g[0] for name, g in unflatten(flat.unsqueeze(0), probes.shapes).items()}
        input_grad = None
        if probes.input_directions is not None:
            input_grad = c * torch.einsum("kb,kb...->b...", per_sample, probes.input_directions.to(per_sample.dtype))
        cost = scaled_cost(n, probes.per_query) if probes.per_query is not None else Cost(n, n * batch)
        return Estimate(grads, input_grad, cost)


class FlatBounds:
    """The flattened safe ranges of a parameter layout, built once and reused (a small cache).

    ``get(shapes, bounds, dtype)`` returns ``(low, high, cols)``: the bounds of the bounded columns
    of the flattened parameters and their indices (``cols`` is ``None`` when nothing is bounded).
    The cache holds the bound tensors it was built from, so a key (their ``id``) is never reused.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.entries: dict[tuple, tuple] = {}

    def get(self, shapes: Mapping[str, tuple[int, ...]], bounds: Bounds | None, dtype: torch.dtype):
        named = [(n, bounds[n]) for n in shapes if bounds and n in bounds]
        key = (tuple(shapes.items()), dtype, tuple((n, id(lo), id(hi)) for n, (lo, hi) in named))
        hit = self.entries.get(key)
        if hit is None:
            low, high = flat_bounds(shapes, bounds, dtype)
            bounded = torch.isfinite(low) | torch.isfinite(high)
            cols = bounded.nonzero().squeeze(1) if bool(bounded.any()) else None
            if cols is not None and cols.numel() == low.numel():
                cols = slice(None)
            picked = (low, high) if cols is None else (low[cols], high[cols])
            if len(self.entries) >= self.size:
                self.entries.clear()
            hit = self.entries[key] = (*picked, cols, named)
        return hit[0], hit[1], hit[2]


def _stencil(center: torch.Tensor, directions: torch.Tensor, delta: float, low, high, what: str):
    """``center ± δP`` for each row of ``P``, the centre shifted inward so both stay in range."""
    half = delta * directions.abs()
    lo, hi = low + half, high - half
    if (lo > hi).any():
        raise RangeError(
            f"perturbation δ·|P| = {float(half.max()):.4g} exceeds half the safe range of a {what}; "
            "choose a smaller delta"
        )
    c = torch.maximum(torch.minimum(center, hi), lo)
    # the final clamp only absorbs floating-point rounding (an ulp past a bound), never a real excursion
    plus = torch.maximum(torch.minimum(c + delta * directions, high), low)
    minus = torch.maximum(torch.minimum(c - delta * directions, high), low)
    return plus, minus
