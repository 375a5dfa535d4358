"""Backpropagation through a differentiable simulator: the oracle every estimate is judged by.

Physical layers switch to their simulator's ``simulate`` (noiseless, differentiable) and autograd
does the rest. On hardware this is impossible — that is the point of the other methods — so it
refuses a device that is not a differentiable simulator. Cost: one query per physical layer per
batch (the forward pass; the backward pass is free in simulation).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.physical_layer import gradient_path
from .base import GradientMethod, LossFn


class Backprop(GradientMethod):
    name = "backprop"

    def __init__(self, seed: int = 0) -> None:
        super().__init__("global", seed)

    def _backward(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with gradient_path(model, "simulate"):
            loss = loss_fn(model(x), y)
            loss.backward()
        return loss

    def __repr__(self) -> str:
        return "Backprop()"
