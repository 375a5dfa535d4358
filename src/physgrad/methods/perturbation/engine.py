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
from typing import Iterator, Mapping

import torch
from torch import nn
from torch.func import functional_call, vmap

from ...cost import Cost
from ...errors import ConfigError, MeasurementError, RangeError, ShapeError
from ...models.physical_layer import gradient_path, parameter_bounds
from ...systems.base import PhysicalSystem
from ..base import Estimate, GradientMethod, LossFn, Probes, accumulate_grads, flatten_with_bounds, unflatten

Bounds = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
Directions = tuple[torch.Tensor, torch.Tensor | None]  # ([k, D], [k, B, *input_shape] or None)


class PerturbationMethod(GradientMethod):
    """Base of PGT / SPSA / ES / finite differences.

    Parameters
    ----------
    scope:
        ``"global"`` (perturb every trainable parameter, whole-network losses) or ``"local"``
        (estimated vector–Jacobian product per physical layer, autograd elsewhere).
    delta:
        Perturbation scale δ (in parameter units; inputs of a device in its input units).
    max_probes:
        At most this many probe pairs per device call (a memory bound; the estimator is the same, its
        random draws are split across calls).
    vectorize:
        Evaluate all probes of a chunk in one batched call (default) or one by one.
    """

    def __init__(
        self,
        scope: str = "global",
        *,
        delta: float = 1e-3,
        max_probes: int = 256,
        vectorize: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(scope, seed)
        if not (delta > 0 and math.isfinite(delta)):
            raise ConfigError(f"delta must be a finite number > 0, got {delta!r}")
        if max_probes < 1:
            raise ConfigError(f"max_probes must be >= 1, got {max_probes}")
        self.delta = float(delta)
        self.max_probes = int(max_probes)
        self.vectorize = bool(vectorize)

    # ------------------------------------------------------------------ what subclasses say
    @abc.abstractmethod
    def direction_chunks(self, dim: int, input_shape: tuple[int, ...] | None) -> Iterator[Directions]:
        """Yield ``(P [k, dim], P_in [k, *input_shape] or None)`` chunks of directions."""

    @abc.abstractmethod
    def normaliser(self, dim: int, input_shape: tuple[int, ...] | None) -> float:
        """The constant ``c`` of ``ĝ = c Σ_k s_k P_k``."""

    # ------------------------------------------------------------------ ask / tell
    def ask(
        self,
        theta: Mapping[str, torch.Tensor],
        inputs: torch.Tensor | None = None,
        bounds: Bounds | None = None,
        input_bounds: tuple[float, float] | None = None,
    ) -> Probes:
        """All probes for one gradient at ``theta`` (and, for a vector–Jacobian product, ``inputs``).

        Apply ``probes.params`` (and ``probes.inputs``) to the device, then pass what it
        answered to :meth:`tell`.
        """
        dim = sum(t.numel() for t in theta.values())
        in_shape = None if inputs is None else tuple(inputs.shape)
        chunks = list(self.direction_chunks(dim, in_shape))
        directions = torch.cat([c[0] for c in chunks])
        input_dirs = None if inputs is None else torch.cat([c[1] for c in chunks])
        return self._probes(theta, directions, inputs, input_dirs, bounds, input_bounds, self.normaliser(dim, in_shape))

    def tell(self, probes: Probes, answers: torch.Tensor, cotangent: torch.Tensor | None = None) -> Estimate:
        """Turn the answers to ``probes`` into a gradient estimate.

        ``answers`` is ``[2K]`` losses (no inputs were perturbed) or ``[2K, B, *out]`` device outputs
        with ``cotangent`` ``[B, *out]`` (the vector of the vector–Jacobian product).
        """
        n = probes.count
        answers = torch.as_tensor(answers)
        if answers.shape[0] != n or n % 2:
            raise ShapeError(f"tell expects {n} answers (the + probes then the − probes), got {tuple(answers.shape)}")
        if not torch.isfinite(answers).all():
            raise MeasurementError(f"{self.name}: {int((~torch.isfinite(answers)).sum())} non-finite answer(s); no estimate made")
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
        grads = {n: g[0] for n, g in unflatten(flat.unsqueeze(0), probes.shapes).items()}
        input_grad = None
        if probes.input_directions is not None:
            input_grad = c * torch.einsum("kb,kb...->b...", per_sample, probes.input_directions.to(per_sample.dtype))
        return Estimate(grads, input_grad, Cost(n, n * batch))

    # ------------------------------------------------------------------ backward: global scope
    def _backward(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.scope == "local":
            with gradient_path(model, "estimate", self):
                loss = loss_fn(model(x), y)
                loss.backward()
            return loss
        theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        bounds = parameter_bounds(model)
        dim = sum(t.numel() for t in theta.values())
        with torch.no_grad():
            loss = loss_fn(model(x), y)
            total = None
            for directions, _ in self.direction_chunks(dim, None):
                probes = self._probes(theta, directions, None, None, bounds, None, self.normaliser(dim, None))
                est = self.tell(probes, self._losses(model, probes.params, loss_fn, x, y))
                total = est if total is None else total + est
        accumulate_grads(model, total.grads)
        return loss

    def _losses(self, model: nn.Module, settings: dict[str, torch.Tensor], loss_fn: LossFn, x, y) -> torch.Tensor:
        def one(params):
            return loss_fn(functional_call(model, params, (x,)), y)

        if self.vectorize:
            return vmap(one, randomness="same")(settings)
        m = next(iter(settings.values())).shape[0]
        return torch.stack([one({n: v[i] for n, v in settings.items()}) for i in range(m)])

    # ------------------------------------------------------------------ backward: local scope
    def vjp(
        self,
        system: PhysicalSystem,
        params: dict[str, torch.Tensor],
        inputs: torch.Tensor,
        outputs: torch.Tensor,
        cotangent: torch.Tensor,
        need_input_grad: bool = True,
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Estimated ``(vᵀ ∂y/∂x, vᵀ ∂y/∂θ)`` of one device at ``(inputs, params)``, ``v = cotangent``."""
        theta = {n: p.detach() for n, p in params.items()}
        dim = sum(t.numel() for t in theta.values())
        in_shape = tuple(inputs.shape) if need_input_grad else None
        if dim == 0 and in_shape is None:
            return None, {}
        bounds = system.parameter_bounds(inputs.dtype)
        total = None
        for directions, input_dirs in self.direction_chunks(dim, in_shape):
            probes = self._probes(
                theta, directions, inputs if need_input_grad else None, input_dirs, bounds, system.input_range,
                self.normaliser(dim, in_shape),
            )
            probe_inputs = probes.inputs if probes.inputs is not None else inputs
            answers = self._measure(system, probes.params, probe_inputs)
            est = self.tell(probes, answers, cotangent)
            total = est if total is None else total + est
        return total.input_grad, total.grads

    def _measure(self, system: PhysicalSystem, settings: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        if self.vectorize or not settings:
            return system.measure(settings, inputs)
        m = next(iter(settings.values())).shape[0]
        batched_inputs = inputs.dim() > len(system.input_shape) + 1
        return torch.cat(
            [system.measure({n: v[i : i + 1] for n, v in settings.items()}, inputs[i : i + 1] if batched_inputs else inputs) for i in range(m)]
        )

    # ------------------------------------------------------------------ probe construction
    def _probes(
        self,
        theta: Mapping[str, torch.Tensor],
        directions: torch.Tensor,
        inputs: torch.Tensor | None,
        input_dirs: torch.Tensor | None,
        bounds: Bounds | None,
        input_bounds: tuple[float, float] | None,
        normaliser: float,
    ) -> Probes:
        flat, low, high, shapes = flatten_with_bounds(theta, bounds, None if inputs is None else inputs.dtype)
        directions = directions.to(flat.dtype)
        plus, minus = _stencil(flat, directions, self.delta, low, high, "parameter")
        params = unflatten(torch.cat([plus, minus]), shapes)
        probe_inputs = None
        if inputs is not None and input_dirs is not None:
            lo, hi = input_bounds if input_bounds is not None else (-math.inf, math.inf)
            k = input_dirs.shape[0]
            x = inputs.unsqueeze(0).expand(k, *inputs.shape).reshape(k, -1)
            d = input_dirs.to(inputs.dtype).reshape(k, -1)
            xp, xm = _stencil(x, d, self.delta, torch.full_like(x[0], lo), torch.full_like(x[0], hi), "input")
            probe_inputs = torch.cat([xp, xm]).reshape(2 * k, *inputs.shape)
        return Probes(params, probe_inputs, directions, input_dirs, self.delta, normaliser, shapes)


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
