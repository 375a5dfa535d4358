"""The ask/tell interface every gradient method implements (DESIGN.md, "The one idea").

::

    probes   = method.ask(theta, inputs)           # which settings (and inputs) to apply
    answers  = system.measure(probes.params, ...)  # the only contact with the device
    estimate = method.tell(probes, answers)        # gradient estimate + its cost

and the everyday form, the same code underneath::

    loss = method.backward(model, loss_fn, x, y)   # fills p.grad for every trainable p
    optimizer.step()

:meth:`GradientMethod.backward` guarantees that a non-finite estimate never reaches ``p.grad``:
the gradients are restored to what they were and :class:`NonFiniteGradientError` is raised.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from ..cost import Cost
from ..errors import ConfigError, NonFiniteGradientError
from ..models.physical_layer import systems_of

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SCOPES = ("global", "local")


@dataclass
class Probes:
    """What to apply to the device: ``2K`` settings (the K "+" probes, then the K "−" probes).

    ``params[name]`` is ``[2K, *shape]``; ``inputs`` (local scope only) is ``[2K, B, *input_shape]``.
    The remaining fields are the method's own record of the directions, read back by ``tell``.
    """

    params: dict[str, torch.Tensor]
    inputs: torch.Tensor | None
    directions: torch.Tensor
    input_directions: torch.Tensor | None
    step: float
    normaliser: float
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return next(iter(self.params.values())).shape[0] if self.params else self.inputs.shape[0]


@dataclass
class Estimate:
    """A gradient estimate: per-parameter gradients, the input gradient (local scope), its cost."""

    grads: dict[str, torch.Tensor]
    input_grad: torch.Tensor | None
    cost: Cost

    def __add__(self, other: "Estimate") -> "Estimate":
        grads = {n: self.grads[n] + other.grads[n] for n in self.grads}
        if self.input_grad is None:
            input_grad = other.input_grad
        elif other.input_grad is None:
            input_grad = self.input_grad
        else:
            input_grad = self.input_grad + other.input_grad
        return Estimate(grads, input_grad, self.cost + other.cost)


class GradientMethod(abc.ABC):
    """Base of every method: scope, cost bookkeeping, the NaN barrier, reproducible randomness."""

    name = "method"

    def __init__(self, scope: str = "global", seed: int = 0) -> None:
        if scope not in SCOPES:
            raise ConfigError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.scope = scope
        self.generator = torch.Generator().manual_seed(seed)
        self.total_cost = Cost()
        self.last_cost = Cost()

    def backward(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Estimate d loss_fn(model(x), y) / d p for every trainable ``p`` and add it to ``p.grad``.

        Returns the loss at the current parameters (detached). The cost of this call is in
        ``self.last_cost``; the running total in ``self.total_cost``.
        """
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        saved = {n: (None if p.grad is None else p.grad.clone()) for n, p in trainable}
        systems = systems_of(model)
        before = sum((s.cost for s in systems), Cost())
        try:
            loss = self._backward(model, loss_fn, x, y)
            bad = [n for n, p in trainable if p.grad is not None and not torch.isfinite(p.grad).all()]
            if bad:
                raise NonFiniteGradientError(f"{self.name}: non-finite gradient estimate for {bad}; not applied")
        except BaseException:
            for n, p in trainable:
                p.grad = saved[n]
            raise
        finally:
            self.last_cost = sum((s.cost for s in systems), Cost()) - before
            self.total_cost = self.total_cost + self.last_cost
        return loss.detach()

    @abc.abstractmethod
    def _backward(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fill ``p.grad`` and return the loss."""

    # ------------------------------------------------------------------ reproducibility
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "total_cost": self.total_cost.as_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.total_cost = Cost(**state["total_cost"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scope={self.scope!r})"


def flatten_with_bounds(
    theta: Mapping[str, torch.Tensor],
    bounds: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, tuple[int, ...]]]:
    """``theta`` as one flat vector with per-element ``low``/``high`` (±inf where unbounded) and the shapes."""
    shapes = {n: tuple(t.shape) for n, t in theta.items()}
    dtype = next(iter(theta.values())).dtype if theta else (dtype or torch.float32)
    flat = torch.cat([t.reshape(-1) for t in theta.values()]) if theta else torch.zeros(0, dtype=dtype)
    low = torch.full_like(flat, -math.inf)
    high = torch.full_like(flat, math.inf)
    offset = 0
    for name, t in theta.items():
        if bounds and name in bounds:
            lo, hi = bounds[name]
            low[offset : offset + t.numel()] = lo.to(dtype).reshape(-1)
            high[offset : offset + t.numel()] = hi.to(dtype).reshape(-1)
        offset += t.numel()
    return flat, low, high, shapes


def unflatten(rows: torch.Tensor, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Split ``[K, D]`` rows back into ``{name: [K, *shape]}`` (the inverse of the flattening above)."""
    out, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        out[name] = rows[:, offset : offset + size].reshape(rows.shape[0], *shape)
        offset += size
    return out


def accumulate_grads(model: nn.Module, grads: dict[str, torch.Tensor]) -> None:
    """Add ``grads`` (keyed like ``named_parameters``) to ``p.grad``, as ``loss.backward()`` would."""
    params = dict(model.named_parameters())
    for name, g in grads.items():
        p = params[name]
        g = g.to(p.dtype).reshape(p.shape)
        p.grad = g.clone() if p.grad is None else p.grad + g
