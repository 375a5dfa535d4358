"""Backpropagation through a differentiable simulator: the oracle every estimate is judged by.

Physical layers switch to their simulator's ``simulate`` (noiseless, differentiable) and autograd
does the rest. On hardware this is impossible — that is the point of the other methods — so it
refuses a device that is not a differentiable simulator. Cost: one query per physical layer per
batch (the forward pass; the backward pass is free in simulation).

How it fits the ask → carrier → tell contract: its probes are a :class:`~physgrad.carriers.Simulation`
request (``system.simulate(params, inputs)``), answered by the differentiable simulator through the
method's carrier; ``tell`` turns the answer and a cotangent into the exact vector–Jacobian product
by autograd. What does *not* fit, plainly: the answer is a tensor *with autograd history*, so only a
carrier that answers in this process (:class:`~physgrad.carriers.InProcess`) can carry it — a device
server, a worker pool or a lab instrument has no simulator to differentiate, and ``tell`` refuses an
answer without history. In the global scope ``backward`` is plain autograd through the whole
network (the physical layers ask their simulators through the carrier).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..carriers import Simulation
from ..cost import Cost
from ..errors import ConfigError, ShapeError
from ..models.physical_layer import gradient_path
from .base import Estimate, GradientMethod, LossFn, check_ask_options, require_finite, scaled_cost


class Backprop(GradientMethod):
    """Exact gradients through ``system.simulate`` (see the module docstring)."""

    name = "backprop"
    kind = "oracle"

    def __init__(self, seed: int = 0, *, scope: str = "global", carrier=None) -> None:
        super().__init__(scope, seed, carrier=carrier)

    def ask(self, theta: Mapping[str, torch.Tensor], inputs: torch.Tensor | None = None, targets=None, *,
            system: Any = None, input_grad: bool | None = None, **unused: Any) -> Simulation:
        """One simulation at ``theta`` on ``inputs`` (leaves that ``tell`` differentiates by).

        ``bounds``/``input_bounds`` are accepted and unused: the simulator needs no stencil.
        """
        check_ask_options(self, unused)
        if inputs is None:
            raise ShapeError("Backprop.ask needs the inputs the simulator is run on")
        params = {n: t.detach().unsqueeze(0).requires_grad_(True) for n, t in theta.items()}
        x = inputs.detach().clone().requires_grad_(input_grad is None or bool(input_grad))
        return Simulation(params, x, seconds_per_query=float(getattr(system, "seconds_per_query", 0.0) or 0.0))

    def tell(self, probes: Simulation, answers: torch.Tensor, cotangent: torch.Tensor | None = None) -> Estimate:
        """``(vᵀ ∂y/∂θ, vᵀ ∂y/∂x)`` by autograd through the simulator's answer ``y`` (``v = cotangent``)."""
        if not isinstance(answers, torch.Tensor) or answers.grad_fn is None:
            raise ConfigError(
                "Backprop.tell needs the simulator's answer with its autograd history: carry Backprop's probes "
                "in process (the default InProcess carrier); a remote device cannot be differentiated"
            )
        require_finite(self.name, "simulator's answer", answers.detach())
        v = torch.ones_like(answers) if cotangent is None else cotangent.to(answers.dtype).reshape(answers.shape)
        leaves = list(probes.params.values()) + ([probes.inputs] if probes.inputs.requires_grad else [])
        grads = torch.autograd.grad(answers, leaves, v, allow_unused=True)
        out = {}
        for (name, p), g in zip(probes.params.items(), grads):
            out[name] = (torch.zeros_like(p) if g is None else g)[0]
        input_grad = grads[-1] if probes.inputs.requires_grad else None
        if probes.inputs.requires_grad and input_grad is None:
            input_grad = torch.zeros_like(probes.inputs)
        batch = int(probes.inputs.shape[0 if probes.shared_inputs else 1])
        per_query = Cost(1, batch, probes.seconds_per_query)
        return Estimate(out, input_grad, scaled_cost(probes.count, per_query))

    def _backward(self, model, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.scope == "local":
            return super()._backward(model, loss_fn, x, y)
        with gradient_path(model, "simulate", None, self.carrier):
            loss = loss_fn(model(x), y)
            loss.backward()
        return loss

    def __repr__(self) -> str:
        return "Backprop()" if self.scope == "global" else f"Backprop(scope={self.scope!r})"
